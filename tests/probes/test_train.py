"""Smoke SFT and GRPO through TRL on a tiny organism, the reward against the verifier, resume."""

import json
import sys
from pathlib import Path

import pytest

from probes.task import Problem, make_trace, sample_problems
from probes.train.config import load_config
from probes.train.reward import completion_reward, make_reward_func

pytestmark = pytest.mark.integration

TINY = {"layers": 2, "d_model": 32, "heads": 4, "kv_heads": 2, "d_mlp": 64, "max_positions": 256}


def _write(path, text):
    path.write_text(text)
    return path


def test_reward_is_one_exactly_when_the_verifier_says_correct():
    for p in sample_problems(30, seed=5, steps=(1, 2, 5)):
        for s in ("forward", "backward"):
            t = make_trace(p, s)
            assert completion_reward(p, t) == 1.0
            wrong = t.rsplit(" ", 1)[0] + " " + p.F.sym(p.answer + 1)
            assert completion_reward(p, wrong) == 0.0
            assert completion_reward(p, "F x") == 0.0


def test_answer_reward_ignores_wrong_steps_but_correct_reward_does_not():
    p = Problem(13, "evaluation", (("add", 2), ("mul", 3), ("add", 1)), 5)
    words = make_trace(p, "forward").split()
    i = words.index("=", 5) + 1  # the first step's result
    words[i] = p.F.sym(p.F.val(words[i]) + 1)
    t = " ".join(words)
    assert completion_reward(p, t, "correct") == 0.0
    # the later steps and the answer are left as they were: right answer, wrong step
    assert completion_reward(p, t, "answer") == 1.0


def test_reward_func_scores_a_batch_and_logs_forward_share():
    probs = sample_problems(4, seed=1, steps=(3,))
    comps = [make_trace(probs[0], "forward"), make_trace(probs[1], "backward"), "garbage", make_trace(probs[0], "forward")]
    logged = {}
    f = make_reward_func()
    r = f(prompts=[p.prompt for p in probs], completions=comps,
          problem=[json.dumps(p.to_dict()) for p in probs], log_metric=lambda k, v: logged.__setitem__(k, v))
    assert r == [1.0, 1.0, 0.0, 0.0]
    assert logged["forward_share"] == 0.5
    # per type: each completion counts under the type of the problem it was sampled for
    for t in ("evaluation", "inversion"):
        idx = [i for i, p in enumerate(probs) if p.type == t]
        assert idx, "the batch must hold both types"
        assert logged[f"forward_share/{t}"] == sum(comps[i].startswith("F ") for i in idx) / len(idx)
    # each type to its natural strategy: the pooled share (0.5) cannot see it, the per-type shares do
    natural = [make_trace(p, "forward" if p.type == "evaluation" else "backward") for p in probs]
    f(prompts=[p.prompt for p in probs], completions=natural, problem=[json.dumps(p.to_dict()) for p in probs],
      log_metric=lambda k, v: logged.__setitem__(k, v))
    assert (logged["forward_share"], logged["forward_share/evaluation"], logged["forward_share/inversion"]) == (0.5, 1.0, 0.0)


def test_config_errors_name_the_bad_field(tmp_path):
    from pydantic import ValidationError

    f = _write(tmp_path / "c.yaml", "name: x\nstage: sft\nout: o\noptim: {lr: -1}\n")
    with pytest.raises(ValidationError, match="lr"):
        load_config(f)
    f = _write(tmp_path / "c.yaml", "name: x\nstage: grpo\nout: o\n")
    with pytest.raises(ValidationError, match="init"):
        load_config(f)
    f = _write(tmp_path / "c.yaml", "name: x\nstage: sft\nout: o\ndata: {fields: [17]}\n")
    with pytest.raises(ValidationError, match="17"):
        load_config(f)


def test_shipped_configs_all_validate():
    import glob

    from probes.runconfig import RunConfig

    train = sorted(glob.glob("configs/*/*.yaml"))  # training recipes, one folder per model
    assert {"configs/organism/sft-fb.yaml", "configs/organism/rl-fb-hard.yaml", "configs/organism/grid.yaml",
            "configs/qwen2.5-1.5b-instruct/sft-fb.yaml"} <= set(train)
    for f in train:
        load_config(f)
    from probes.train.runner import stages_listed_before_their_init

    for grid in [f for f in train if f.endswith("/grid.yaml")]:  # one after another, each stage finds its init
        cfg = load_config(grid)
        stages = [(Path(grid).parent / s, load_config(Path(grid).parent / s)) for s in cfg.stages]
        assert stages_listed_before_their_init(stages) == [], grid
    runs = sorted(glob.glob("configs/*.yaml"))  # run configs of python -m probes.run
    for f in runs:
        RunConfig.from_yaml(f)


@pytest.mark.slow
def test_smoke_sft_then_grpo_train_save_and_resume(tmp_path):
    import torch
    from safetensors.torch import load_file

    from probes.train.__main__ import main

    sft = _write(tmp_path / "sft.yaml", f"""
name: t-sft
stage: sft
out: {tmp_path / 'sft'}
model: {json.dumps(TINY)}
data: {{n: 96, steps: {{1: 1, 2: 1}}}}
optim: {{lr: 3.0e-3, batch_size: 16, max_steps: 6, save_steps: 3, logging_steps: 3}}
""")
    assert main(["sft", "--config", str(sft)]) == 0
    card = json.loads((tmp_path / "sft" / "card.json").read_text())
    assert card["global_step"] == 6 and card["stage"] == "sft"
    w = load_file(str(tmp_path / "sft" / "model.safetensors"))
    assert all(t.dtype == torch.float16 for t in w.values())
    first_loss = [h["loss"] for h in card["log_history"] if "loss" in h]
    assert first_loss and all(l == l for l in first_loss)  # logged and not NaN
    # finished stages are skipped: the card is not rewritten
    mtime = (tmp_path / "sft" / "card.json").stat().st_mtime
    assert main(["sft", "--config", str(sft)]) == 0
    assert (tmp_path / "sft" / "card.json").stat().st_mtime == mtime

    grpo = _write(tmp_path / "grpo.yaml", f"""
name: t-grpo
stage: grpo
init: {tmp_path / 'sft'}
out: {tmp_path / 'grpo'}
data: {{n: 16, steps: {{1: 1}}}}
optim: {{lr: 1.0e-4, max_steps: 2, save_steps: 1, logging_steps: 1, scheduler: constant, keep_every: 1}}
grpo: {{num_generations: 2, prompts_per_step: 2, max_completion_length: 16}}
""")
    # a budget shorter than the longest correct trace (forward inversion at k = 1: 32 words + end) is refused
    with pytest.raises(ValueError, match="max_completion_length to at least 33"):
        main(["grpo", "--config", str(grpo)])
    assert not (tmp_path / "grpo" / "_work").exists()
    grpo.write_text(grpo.read_text().replace("max_completion_length: 16", "max_completion_length: 33"))
    assert main(["grpo", "--config", str(grpo)]) == 0
    card = json.loads((tmp_path / "grpo" / "card.json").read_text())
    assert card["global_step"] == 2 and card["algorithm"].startswith("GRPO")
    assert any("reward" in h for h in card["log_history"])
    # keep_every: a model-only snapshot per step, in the final checkpoint's format; the last is the final model
    snaps = sorted(p.name for p in (tmp_path / "grpo" / "snapshots").iterdir())
    assert snaps == ["step-1", "step-2"]
    meta = json.loads((tmp_path / "grpo" / "snapshots" / "step-1" / "snapshot.json").read_text())
    assert meta["step"] == 1 and meta["saved_dtype"] == "float16"
    s1 = load_file(str(tmp_path / "grpo" / "snapshots" / "step-1" / "model.safetensors"))
    s2 = load_file(str(tmp_path / "grpo" / "snapshots" / "step-2" / "model.safetensors"))
    final = load_file(str(tmp_path / "grpo" / "model.safetensors"))
    assert s2.keys() == final.keys() and all(torch.equal(s2[k], final[k]) for k in final)
    assert s1.keys() == final.keys()
    assert (tmp_path / "grpo" / "snapshots" / "step-1" / "tokenizer.json").exists()
    # resume: a rerun with more steps continues from checkpoint-2, not from scratch
    assert (tmp_path / "grpo" / "_work" / "checkpoint-2").is_dir()
    grpo.write_text(grpo.read_text().replace("max_steps: 2", "max_steps: 3"))
    assert main(["grpo", "--config", str(grpo), "--force"]) == 0
    card = json.loads((tmp_path / "grpo" / "card.json").read_text())
    assert card["global_step"] == 3
    assert sorted(p.name for p in (tmp_path / "grpo" / "snapshots").iterdir()) == ["step-1", "step-2", "step-3"]
    steps_logged = [h["step"] for h in card["log_history"] if "reward" in h]
    assert steps_logged.count(3) == 1 and 1 in steps_logged

    # the trajectory of these snapshots (issue 21): end to end on the tiny model, the start itself as
    # step 0 (every term exactly 0), and an unloadable snapshot reported and skipped
    import shutil

    from probes.runconfig import QUICK
    from probes.trajectory import main as trajectory

    snaps = tmp_path / "grpo" / "snapshots"
    shutil.copytree(tmp_path / "sft", snaps / "step-0", ignore=shutil.ignore_patterns("_work"))
    (snaps / "step-9").mkdir()
    (snaps / "step-9" / "config.json").write_text("{")
    quick = tmp_path / "quick.yaml"
    quick.write_text(json.dumps({**{k: v for k, v in QUICK.items() if k != "forced"}, "probe_targets": ["strategy"]}))
    assert trajectory(["--start", str(tmp_path / "sft"), "--snapshots", str(snaps), "--out", str(tmp_path / "traj"),
                       "--config", str(quick), "--n-boot", "50"]) == 0
    traj = json.loads((tmp_path / "traj" / "trajectory.json").read_text())
    assert [r["step"] for r in traj["steps"]] == [0, 1, 2, 3, 9]
    assert all(traj["steps"][0][t] == {"value": 0.0, "ci": [0.0, 0.0]} for t in ("delta", "selection", "improvement"))
    assert "config.json" in traj["steps"][-1]["skipped"] and all("skipped" not in r for r in traj["steps"][:-1])


def test_cli_rejects_a_stage_mismatch(tmp_path):
    from probes.train.__main__ import main

    f = _write(tmp_path / "c.yaml", "name: x\nstage: sft\nout: o\n")
    with pytest.raises(SystemExit):
        main(["grpo", "--config", str(f)])


@pytest.mark.parametrize("k", [1, 5, 8])
def test_completion_budget_is_the_longest_correct_trace_plus_the_end_token(k):
    from probes.task.tokenizer import build_tokenizer
    from probes.train.config import DataConfig
    from probes.train.data import completion_budget, grpo_rows

    rows = grpo_rows(DataConfig(n=40, steps={k: 1.0}, seed=3))
    # the long strategy's trace (backward for evaluation, forward for inversion) is 24 + 8k words
    assert completion_budget(rows, build_tokenizer()) == 24 + 8 * k + 1
    # a mixture's budget is set by its longest chain
    mixed = grpo_rows(DataConfig(n=40, steps={1: 1.0, k: 1.0}, seed=3))
    assert completion_budget(mixed, build_tokenizer()) == 24 + 8 * k + 1


def _stage_cfg(tmp_path, name, init=None, threads=1):
    text = f"name: {name}\nstage: sft\nout: {tmp_path / name}\noptim: {{threads: {threads}}}\n"
    if init:
        text += f"init: {tmp_path / init}\n"
    path = _write(tmp_path / f"{name}.yaml", text)
    return path, load_config(path)


def test_the_parallel_grid_waits_for_each_stage_it_starts_from_and_fills_its_thread_slots(tmp_path, capsys):
    from probes.train.runner import run_grid_parallel

    # two lines: a1 -> a2 -> {a3, a4} and b1 -> b2, b2 with 2 threads; each fake stage logs its start and end
    stages = [_stage_cfg(tmp_path, "b1"), _stage_cfg(tmp_path, "b2", "b1", threads=2),
              _stage_cfg(tmp_path, "a1"), _stage_cfg(tmp_path, "a2", "a1"),
              _stage_cfg(tmp_path, "a3", "a2"), _stage_cfg(tmp_path, "a4", "a2")]
    events = tmp_path / "events"

    def fake(path, cfg, force):
        code = (f"import time; f = open({str(events)!r}, 'a'); f.write('start {cfg.name} %f\\n' % time.time()); f.flush(); "
                f"time.sleep(0.3); f.write('end {cfg.name} %f\\n' % time.time()); raise SystemExit(0)")
        return [sys.executable, "-c", code]

    assert run_grid_parallel(stages, 2, tmp_path / "logs", poll_s=0.05, command=fake) == 0
    ev = [line.split() for line in events.read_text().splitlines()]
    t = {(kind, name): float(x) for kind, name, x in ev}
    for child, parent in (("a2", "a1"), ("a3", "a2"), ("a4", "a2"), ("b2", "b1")):
        assert t[("start", child)] >= t[("end", parent)]
    # never more than 2 threads at once (b2 counts 2)
    cost = {"b2": 2}
    for kind, name, x in ev:
        if kind == "start":
            busy = sum(cost.get(n, 1) for n in {n for _, n, _ in ev}
                       if t[("start", n)] <= float(x) < t[("end", n)])
            assert busy <= 2, (name, busy)
    # the longer line starts first: a1 heads a chain of 3 stages, b1 of 2 (the scheduler's own
    # order; the children's clocks race)
    out = capsys.readouterr().out
    assert out.index("started a1") < out.index("started b1")
    assert (tmp_path / "logs" / "a3.log").exists()


def test_a_failed_grid_stage_stops_its_dependents_only(tmp_path, capsys):
    from probes.train.runner import run_grid_parallel

    stages = [_stage_cfg(tmp_path, "a1"), _stage_cfg(tmp_path, "a2", "a1"), _stage_cfg(tmp_path, "b1")]
    ran = tmp_path / "ran"

    def fake(path, cfg, force):
        code = f"open({str(ran)!r}, 'a').write('{cfg.name}\\n'); raise SystemExit({int(cfg.name == 'a1')})"
        return [sys.executable, "-c", code]

    assert run_grid_parallel(stages, 2, tmp_path / "logs", poll_s=0.05, command=fake) == 1
    assert sorted(ran.read_text().split()) == ["a1", "b1"]
    out = capsys.readouterr().out
    assert "a1 FAILED (exit 1" in out and "a2 not started: a1 failed" in out and "['a1', 'a2']" in out
    with pytest.raises(ValueError, match="more threads than --jobs 1"):
        run_grid_parallel([_stage_cfg(tmp_path, "c", threads=2)], 1, tmp_path / "logs", command=fake)


def test_grid_command_errors_name_the_bad_stage(tmp_path, capsys):
    from probes.train.__main__ import main

    grid = _write(tmp_path / "g.yaml", "stages:\n  - nope.yaml\n")
    with pytest.raises(SystemExit) as e:
        main(["grid", "--config", str(grid)])
    assert e.value.code == 2 and "lists nope.yaml, which is not a file" in capsys.readouterr().err
    _write(tmp_path / "a.yaml", f"name: a\nstage: sft\nout: {tmp_path / 'a'}\ninit: {tmp_path / 'a'}\n")
    grid = _write(tmp_path / "g.yaml", "stages:\n  - a.yaml\n")
    with pytest.raises(SystemExit) as e:
        main(["grid", "--config", str(grid), "--jobs", "2"])
    assert e.value.code == 2 and "starts from its own output: a" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["grid", "--config", str(grid), "--jobs", "0"])
    assert e.value.code == 2 and "--jobs must be at least 1" in capsys.readouterr().err
    # one after another in the listed order, a stage listed above the stage it starts from would find no model
    _write(tmp_path / "b1.yaml", f"name: b1\nstage: sft\nout: {tmp_path / 'b1'}\n")
    _write(tmp_path / "b2.yaml", f"name: b2\nstage: sft\nout: {tmp_path / 'b2'}\ninit: {tmp_path / 'b1'}\n")
    grid = _write(tmp_path / "g.yaml", "stages:\n  - b2.yaml\n  - b1.yaml\n")
    with pytest.raises(SystemExit) as e:
        main(["grid", "--config", str(grid)])
    assert e.value.code == 2 and "lists b2 before b1, the stage it starts from" in capsys.readouterr().err


def test_a_missing_intermediate_stage_is_trained_only_when_a_later_stage_needs_it(tmp_path, capsys):
    from probes.train.__main__ import main
    from probes.train.runner import stages_not_needed

    def finish(name):  # what is_finished looks for
        (tmp_path / name).mkdir()
        (tmp_path / name / "card.json").write_text("{}")
        (tmp_path / name / "model.safetensors").write_bytes(b"")

    # a1 -> a2 -> a3, all made from a1 finished (a shipped clone without its gitignored first phase);
    # b1 -> b2 with b2 missing; c1 -> {c2 finished, c3 missing}; d1 missing and nothing after it
    stages = [_stage_cfg(tmp_path, "a1"), _stage_cfg(tmp_path, "a2", "a1"), _stage_cfg(tmp_path, "a3", "a2"),
              _stage_cfg(tmp_path, "b1"), _stage_cfg(tmp_path, "b2", "b1"),
              _stage_cfg(tmp_path, "c1"), _stage_cfg(tmp_path, "c2", "c1"), _stage_cfg(tmp_path, "c3", "c1"),
              _stage_cfg(tmp_path, "d1")]
    for name in ("a2", "a3", "c2"):
        finish(name)
    assert stages_not_needed(stages) == ["a1"]
    finish("b2")
    assert stages_not_needed(stages) == ["a1", "b1"]
    # through the CLI: the missing a1 and the finished a2 and a3 are all skipped up front; nothing trains
    grid = _write(tmp_path / "g.yaml", "stages:\n  - a1.yaml\n  - a2.yaml\n  - a3.yaml\n")
    assert main(["grid", "--config", str(grid)]) == 0
    out = capsys.readouterr().out
    assert "skipping a1: its output is missing, but every stage made from it is finished" in out
    assert f"skipping a2: finished ({tmp_path / 'a2'}/card.json present" in out
    assert not (tmp_path / "a1").exists()
