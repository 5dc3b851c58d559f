"""The main job end to end on tiny random checkpoints (``--quick``)."""

import json
import math
import subprocess
import sys

import pytest

pytestmark = pytest.mark.acceptance


def _tiny(path, seed):
    from probes.task.tokenizer import build_tokenizer
    from probes.train.config import ModelConfig
    from probes.train.model import build_model

    tok = build_tokenizer()
    model = build_model(ModelConfig(layers=2, d_model=32, heads=4, kv_heads=2, d_mlp=64), tok, seed=seed)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def _no_nan(obj, where="results"):
    if isinstance(obj, float):
        assert math.isfinite(obj), where
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _no_nan(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _no_nan(v, f"{where}[{i}]")


@pytest.fixture(scope="module")
def same_model_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    ckpt = _tiny(d / "m", seed=1)
    out = d / "run"
    r = subprocess.run([sys.executable, "-m", "probes.run", "--quick", "--pre-rl", str(ckpt), "--post-rl", str(ckpt),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r, ckpt


@pytest.mark.slow
def test_same_checkpoint_as_pre_and_post_gives_neither_and_zero_terms(same_model_run):
    out, r, _ = same_model_run
    res = json.loads((out / "results.json").read_text())
    assert res["schema_version"] == 3
    assert res["verdict"]["label"] == "neither"
    p = res["decomposition"]["pooled"]
    for k in ("delta", "selection", "improvement", "interaction"):
        assert p[k] == 0.0
        assert p[k + "_ci"] == [0.0, 0.0]
    _no_nan(res)
    v = res["verdict"]
    assert v["regressions"] == [] and v["statement"] == "neither"
    for k in ("selection", "improvement"):  # nothing to recover: undefined, with the reason, not NaN
        assert v[f"{k}_score"] is None and v[f"{k}_score_ci"] is None
        assert "nothing to recover" in v[f"{k}_score_undefined_reason"]
    for k in ("delta", "selection", "improvement"):  # the patching stage's own terms, on its problems
        assert res["patching"]["behaviour_terms"][k]["mean"] == 0.0
        assert res["patching"]["behaviour_terms"][k]["ci"] == [0.0, 0.0]
    assert "verdict: neither" in r.stdout and "report.html" in r.stdout
    for f in ("report.md", "report.html", "manifest.json", "config.yaml", "problems.jsonl",
              "figures/behaviour_strategy.png", "figures/behaviour_decomposition.png"):
        assert (out / f).exists(), f
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "src='figures" not in html


@pytest.mark.slow
def test_rerun_reuses_every_finished_stage(same_model_run):
    out, _, ckpt = same_model_run
    before = {p.name: p.read_text() for p in (out / "stages").glob("*.json")}
    r = subprocess.run([sys.executable, "-m", "probes.run", "--quick", "--pre-rl", str(ckpt), "--post-rl", str(ckpt),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0
    assert r.stderr.count("up to date") == 5
    assert {p.name: p.read_text() for p in (out / "stages").glob("*.json")} == before


def test_a_missing_checkpoint_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "probes.run", "--quick", "--pre-rl", str(tmp_path / "nope"),
                        "--post-rl", str(tmp_path), "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode != 0
    assert "is not a checkpoint directory" in r.stderr and "Traceback" not in r.stderr


def test_a_bad_config_field_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("n_problems: 2\n")
    r = subprocess.run([sys.executable, "-m", "probes.run", "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode != 0 and "n_problems" in r.stderr and "Traceback" not in r.stderr


# --- acceptance 3 (swap), 5 (kill during cache), 4 (grid), bad arguments --------------------------------

import shutil  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SFT, RL = "checkpoints/organism/sft-fb", "checkpoints/organism/rl-fb-hard"
VOLATILE = {"stage_seconds", "timings_s", "out", "finished_at", "seconds"}
"""Keys whose values are wall-clock times or the run folder's own path: not results."""


def _main(*args, timeout=1800):
    return subprocess.run([sys.executable, "-m", "probes.run", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _without_volatile(obj):
    if isinstance(obj, dict):
        return {k: _without_volatile(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_without_volatile(v) for v in obj]
    return obj


@pytest.mark.slow
def test_swapping_pre_and_post_negates_delta_selection_and_improvement_exactly(quick_run, tmp_path):
    r = _main("--quick", "--pre-rl", RL, "--post-rl", SFT, "--stages", "behaviour", "verdict", "--out", tmp_path / "swap")
    assert r.returncode == 0, r.stderr[-3000:]
    fwd = json.loads((quick_run.out / "results.json").read_text())["decomposition"]
    rev = json.loads((tmp_path / "swap" / "results.json").read_text())["decomposition"]
    groups = [("pooled", fwd["pooled"], rev["pooled"])] + [(t, fwd["by_type"][t], rev["by_type"][t]) for t in fwd["by_type"]] \
        + [(s, fwd["strata"][s], rev["strata"][s]) for s in fwd["strata"]]
    for name, a, b in groups:
        for k in ("delta", "selection", "improvement"):
            assert b[k] == -a[k], (name, k)  # exactly, not approximately
            assert b[k + "_ci"] == pytest.approx([-a[k + "_ci"][1], -a[k + "_ci"][0]], abs=1e-12), (name, k)
        for k in ("selection", "improvement", "interaction"):  # the one-sided orderings trade places
            assert b["at_reference"][k] == -a["at_model"][k], (name, k)
    assert fwd["pooled"]["selection"] != 0.0 or fwd["pooled"]["improvement"] != 0.0  # the check is not vacuous


def _chunks(out):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted((out / "store").glob("*/chunks/*"))}


@pytest.mark.slow
def test_killing_the_run_during_cache_then_rerunning_reuses_finished_work_and_gives_the_same_results(quick_run, tmp_path):
    """Acceptance 5. To save a behaviour stage, the run folder starts as the shared run's after its
    behaviour stage (a copy, timestamps kept), as if an earlier attempt had got that far."""
    out = tmp_path / "run"
    later = ("store", "probes", "patching", "figures", "results.json", "report.md", "report.html")
    shutil.copytree(quick_run.out, out, ignore=lambda d, names: [n for n in names if Path(d) == quick_run.out
                                                                 and n in later])
    for stage in ("cache", "probes", "patching", "verdict"):
        (out / "stages" / f"{stage}.json").unlink()
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "probes.run", "--quick", "--out", str(out)], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 1500
    try:
        while proc.poll() is None and time.time() < deadline:
            if any((out / "store").glob("*/chunks/*.json")):  # the cache stage has finished a chunk
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert (out / "stages" / "behaviour.json").exists() and not (out / "stages" / "cache.json").exists()
    marker = (out / "stages" / "behaviour.json").read_bytes()
    responses = (out / "behaviour" / "behaviour.model.jsonl").stat().st_mtime_ns
    finished = {p: v for p, v in _chunks(out).items() if p.suffix == ".json"}
    finished.update({p.with_suffix(".safetensors"): v for p, v in _chunks(out).items()
                     if p.suffix == ".safetensors" and p.with_suffix(".json") in finished})
    assert finished

    r = _main("--quick", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[1/5 behaviour] up to date" in r.stderr and "[2/5 cache] done in" in r.stderr
    assert "[3/5 probes] done in" in r.stderr and "[5/5 verdict] done in" in r.stderr
    assert "finished chunk(s) on disk" in r.stderr
    assert (out / "stages" / "behaviour.json").read_bytes() == marker
    assert (out / "behaviour" / "behaviour.model.jsonl").stat().st_mtime_ns == responses
    after = _chunks(out)
    for p, v in finished.items():  # the chunks finished before the kill were kept, not recomputed
        assert after[p] == v, p
    assert json.loads((out / "stages" / "cache.json").read_text())["outputs"]["pre"]["resumed_chunks"] >= 1
    got = _without_volatile(json.loads((out / "results.json").read_text()))
    want = _without_volatile(json.loads((quick_run.out / "results.json").read_text()))
    assert got == want


def test_grid_discovers_each_rl_checkpoint_with_the_sft_init_its_card_names(tmp_path):
    from probes.grid import Pair, discover_pairs

    def ckpt(name, card=None):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text("{}")
        if card is not None:
            (d / "card.json").write_text(json.dumps(card))

    ckpt("sft-x", {"stage": "sft", "init": None})
    ckpt("rl-x-hard", {"stage": "grpo", "init": "somewhere/else/sft-x"})  # moved: found by name under the root
    ckpt("rl-y-hard", {"stage": "grpo", "init": "checkpoints/organism/sft-y"})  # its init is not there
    ckpt("sft-z", {"stage": "sft", "config": {"init": str(tmp_path / "sft-x")}})  # an SFT phase: not a pair
    ckpt("no-card")
    assert discover_pairs(tmp_path) == [Pair("rl-x-hard", str(tmp_path / "sft-x"), str(tmp_path / "rl-x-hard"))]


def test_grid_finds_the_shipped_pairs():
    from probes.grid import discover_pairs

    pairs = {p.name: Path(p.pre_rl).name for p in discover_pairs(REPO / "checkpoints" / "organism")}
    assert pairs.get("rl-fb-hard") == "sft-fb" and pairs.get("rl-f-hard") == "sft-f"


@pytest.mark.slow
def test_grid_row_holds_the_behavioural_and_the_mechanistic_columns(quick_run):
    from probes.grid import GRID_COLUMNS, Pair, grid_markdown, grid_row

    res = json.loads((quick_run.out / "results.json").read_text())
    row = grid_row(Pair("rl-fb-hard", SFT, RL), res)
    assert row["decomposition"]["selection"]["value"] == res["decomposition"]["pooled"]["selection"]
    assert row["verdict"]["label"] == res["verdict"]["label"]
    assert row["verdict"]["selection_score"]["value"] == res["verdict"]["selection_score"]
    best = res["probes"]["models"]["pre"]["strategy"].get("best_layer")
    assert row["strategy_probe"]["pre"]["layer"] == best
    table = grid_markdown([row]).splitlines()
    assert len(table) == 3 and table[0].count("|") == len(GRID_COLUMNS) + 1
    assert table[2].startswith("| rl-fb-hard | sft-fb |") and f"**{res['verdict']['label']}**" in table[2]


@pytest.mark.slow
def test_grid_runs_every_discovered_pair_into_its_folder_and_writes_the_table(tmp_path):
    root = tmp_path / "organism"
    for pre, post, seed in (("sft-a", "rl-a-hard", 1), ("sft-b", "rl-b-hard", 3)):
        _tiny(root / pre, seed=seed)
        _tiny(root / post, seed=seed + 1)
        (root / pre / "card.json").write_text(json.dumps({"stage": "sft", "init": None}))
        (root / post / "card.json").write_text(json.dumps({"stage": "grpo", "init": str(root / pre)}))
    out = tmp_path / "grid"
    small = _write(tmp_path / "small.yaml", "n_problems: 8\nsteps: [1]\nsamples: 1\nforced: 1\nn_boot: 50\n")
    r = _main("--grid", root, "--config", small, "--stages", "behaviour", "verdict", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    grid = json.loads((out / "grid.json").read_text())
    assert [p["pair"] for p in grid["pairs"]] == ["rl-a-hard", "rl-b-hard"]
    for p in grid["pairs"]:
        assert (out / p["pair"] / "results.json").exists() and (out / p["pair"] / "report.html").exists()
    table = (out / "grid.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| rl-a-hard | sft-a |") and table[3].startswith("| rl-b-hard | sft-b |")
    assert "| rl-a-hard | sft-a |" in r.stdout and "report:" in r.stdout
    html = (out / "report.html").read_text()
    assert "rl-b-hard" in html and html.count("data:image/png;base64,") == 1
    assert (out / "figures" / "grid.png").stat().st_size > 0


@pytest.mark.slow
def test_report_html_embeds_every_figure_of_the_markdown_report_as_a_valid_png(quick_run):
    import base64
    import re
    import struct

    md = (quick_run.out / "report.md").read_text()
    html = (quick_run.out / "report.html").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    blobs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(figures) >= 10 and len(blobs) == len(figures) and "figure missing" not in html
    for f, b in zip(figures, blobs):
        png = base64.b64decode(b)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == (quick_run.out / f).read_bytes(), f
        w, h = struct.unpack(">II", png[16:24])
        assert w > 100 and h > 100, f
    order = [html.index(f"<h2>{s}</h2>") for s in ("Verdict", "Behaviour", "Decomposition", "Probes", "Patching",
                                                    "Methods and sources")]
    assert order == sorted(order)


@pytest.mark.slow
def test_each_stage_reports_its_progress(quick_run):
    for i, stage in enumerate(("behaviour", "cache", "probes", "patching", "verdict"), 1):
        assert quick_run.stderr.count(f"[{i}/5 {stage}]") == 1  # one line per stage
        assert f"[{i}/5 {stage}] done in" in quick_run.stderr
    for bar in ("generating", "caching", "steering", "patching post_into_pre"):  # tqdm bars inside the stages
        assert bar in quick_run.stderr
    assert "stage times: behaviour" in quick_run.stdout


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", [
    "grid-with-pair", "half-pair", "missing-config", "bad-yaml", "unknown-key", "not-a-mapping", "config-is-dir",
    "bad-stage", "unknown-flag", "out-is-file", "empty-grid-root", "bad-patching-key", "bad-steps", "missing-post",
])
def test_every_bad_argument_is_a_one_line_error_without_traceback(case, tmp_path, monkeypatch, capsys):
    args, expect = {
        "grid-with-pair": (["--grid", "--pre-rl", SFT, "--post-rl", RL], "--grid runs every shipped pair"),
        "half-pair": (["--pre-rl", SFT], "--pre-rl and --post-rl go together"),
        "missing-config": (["--config", tmp_path / "nope.yaml"], "no such file"),
        "bad-yaml": (["--config", _write(tmp_path / "c1.yaml", "n_problems: [1,\n")], "not valid YAML"),
        "unknown-key": (["--config", _write(tmp_path / "c2.yaml", "n_problem: 10\n")], "n_problem: unknown field"),
        "not-a-mapping": (["--config", _write(tmp_path / "c3.yaml", "- a\n- b\n")], "expected a YAML mapping"),
        "config-is-dir": (["--config", tmp_path], "not a readable YAML file"),
        "bad-stage": (["--stages", "cachee"], "invalid choice: 'cachee'"),
        "unknown-flag": (["--quik"], "unrecognized arguments: --quik"),
        "out-is-file": (["--quick", "--out", _write(tmp_path / "f", "")], "is a file, not a run folder"),
        "empty-grid-root": (["--grid", tmp_path, "--quick"], "no RL checkpoint"),
        "bad-patching-key": (["--config", _write(tmp_path / "c4.yaml", "patching: {n_problem: 3}\n")],
                             "patching.n_problem"),
        "bad-steps": (["--config", _write(tmp_path / "c5.yaml", "steps: [0, 1]\n")], "field steps"),
        "missing-post": (["--pre-rl", SFT, "--post-rl", tmp_path / "nope"], "is not a checkpoint directory"),
    }[case]
    from probes.run import main

    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_:  # in-process (fast); any other exception would be a traceback
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and expect in err, err


def test_a_pair_of_different_architectures_is_a_one_line_error(tmp_path):
    from probes.task.tokenizer import build_tokenizer
    from probes.train.config import ModelConfig
    from probes.train.model import build_model

    tok = build_tokenizer()
    for name, layers in (("a", 2), ("b", 3)):
        build_model(ModelConfig(layers=layers, d_model=32, heads=4, kv_heads=2, d_mlp=64), tok, seed=0) \
            .save_pretrained(str(tmp_path / name))
        tok.save_pretrained(str(tmp_path / name))
    r = _main("--quick", "--pre-rl", tmp_path / "a", "--post-rl", tmp_path / "b", "--out", tmp_path / "run", timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "differ in config.num_hidden_layers: 2 vs 3" in r.stderr
    assert not (tmp_path / "run" / "stages").exists()  # refused before any stage ran


def test_the_printed_verdict_states_each_term_whether_it_counts_and_every_regression(tmp_path):
    # a recovery near 1 of a behavioural term too small to count must not read as evidence of improvement,
    # and a significant loss is printed whatever the label
    from probes.results import run_verdict, verdict_lines
    from probes.runfolder import RunFolder

    pooled = {"delta": -0.55, "delta_ci": [-0.60, -0.50], "selection": 0.10, "selection_ci": [0.08, 0.12],
              "improvement": -0.65, "improvement_ci": [-0.69, -0.61]}
    rec = {"selection": {"value": 0.9, "ci": [0.85, 0.95], "reason": None},
           "improvement": {"value": 0.3, "ci": [0.1, 0.5], "reason": None}}
    v = run_verdict(pooled, {"selection": {"recovery": rec["selection"]}, "improvement": {"recovery": rec["improvement"]},
                             "rule": {"recovery_threshold": 0.5, "min_effect": 0.02}})
    (tmp_path / "results.json").write_text(json.dumps({"schema_version": 3, "verdict": v}))
    lines = verdict_lines(RunFolder(tmp_path))
    assert lines[0] == "verdict: selection"
    assert lines[1] == "  REGRESSION: accuracy fell: delta -0.550 [-0.600, -0.500]"
    assert lines[2] == "  REGRESSION: execution degraded: improvement -0.650 [-0.690, -0.610]"
    assert lines[3] == "  selection: behavioural +0.100 [+0.080, +0.120], recovery +0.900 [+0.850, +0.950] (counts)"
    assert lines[4].startswith("  improvement: behavioural -0.650 [-0.690, -0.610], recovery +0.300 [+0.100, +0.500] "
                               "(does not count: the recovery +0.300 [+0.100, +0.500] has its CI lower bound")
    assert v["statement"] == ("selection; accuracy fell: delta -0.550 [-0.600, -0.500]; execution degraded: "
                              "improvement -0.650 [-0.690, -0.610]")
    # a behavioural term within the minimum effect: its recovery, a ratio to a tiny term, is not printed as a number
    small = dict(pooled, improvement=0.001, improvement_ci=[-0.01, 0.012])
    v = run_verdict(small, {"selection": {"recovery": rec["selection"]}, "improvement": {"recovery": rec["improvement"]},
                            "rule": {"recovery_threshold": 0.5, "min_effect": 0.02}})
    (tmp_path / "results.json").write_text(json.dumps({"schema_version": 3, "verdict": v}))
    line = [x for x in verdict_lines(RunFolder(tmp_path)) if x.startswith("  improvement:")][0]
    assert line.startswith("  improvement: behavioural +0.001 [-0.010, +0.012], recovery not read (does not count: ")
    assert "+0.300" not in line


def _routing_moved_execution_lost(src, out, steps=40, lr=3e-3):
    """A post-RL stand-in made from ``src`` by training only the first response token, hard: the
    loss is -log p(B) at the end of every prompt (Adam on every weight), which moves the routing
    towards backward and, as collateral damage, wrecks the execution of both strategies."""
    import torch

    from activations.batch import encode_batch
    from activations.load import load_checkpoint
    from probes.behaviour.pipeline import held_out_problems
    from probes.task.traces import STRATEGY_TOKEN

    ck = load_checkpoint(str(src))
    model, tok = ck.model, ck.tokenizer
    batch = encode_batch(tok, [p.prompt for p in held_out_problems(96, 11, (1, 2, 3))])
    target = torch.full((len(batch),), tok.convert_tokens_to_ids(STRATEGY_TOKEN["backward"]))
    at = batch.pad_offset + batch.prompt_end
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    torch.manual_seed(0)
    for _ in range(steps):
        logits = model(**batch.model_inputs()).logits[torch.arange(len(batch)), at]
        loss = torch.nn.functional.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.mark.slow
def test_a_post_model_that_lost_execution_while_its_routing_moved_states_the_regression(tmp_path):
    """Acceptance 4 of issue 17: no label hides a loss."""
    post = _routing_moved_execution_lost(REPO / SFT, tmp_path / "broken")
    cfg = _write(tmp_path / "c.yaml", "n_problems: 48\nsteps: [1, 2, 3]\nsamples: 1\nn_boot: 200\n"
                 "patching: {n_problems: 24, hooks: [hook_resid_post], counterfactual_n: 0, behaviour_n: 0}\n")
    r = _main("--config", cfg, "--pre-rl", SFT, "--post-rl", post, "--stages", "behaviour", "patching", "verdict",
              "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    v = res["verdict"]
    imp = res["decomposition"]["pooled"]["improvement_ci"]
    assert imp[1] < -0.2, imp  # execution collapsed: the pair is what the test says it is
    assert res["behaviour"]["post_rl"]["strategy_share"]["all"]["first_token"]["backward"] > 0.9  # routing moved
    texts = [x["text"] for x in v["regressions"]]
    assert any(t.startswith("execution degraded: improvement -") for t in texts), texts
    assert "REGRESSION: execution degraded: improvement -" in r.stdout
    assert "execution degraded" in v["statement"] and v["statement"].startswith(v["label"])
    assert "execution degraded" in (tmp_path / "run" / "report.md").read_text()


STAGE_NAMES = ("behaviour", "cache", "probes", "patching", "verdict")


@pytest.mark.parametrize("change,reruns", [
    ("weights", STAGE_NAMES), ("config.json", STAGE_NAMES), ("tokenizer.json", STAGE_NAMES),
    ("tokenizer_config.json", STAGE_NAMES), ("chat_template.jinja", STAGE_NAMES),
    ("generation_config.json", ()), ("dtype", STAGE_NAMES), ("device", STAGE_NAMES), ("chat", STAGE_NAMES),
    ("backend", ("cache", "probes", "patching", "verdict")), ("steer_n", ("probes", "verdict")),
    ("patching", ("patching", "verdict")), ("probe_hook", ("cache", "probes", "verdict")),
])
def test_changing_one_input_reruns_exactly_the_stages_that_read_it(change, reruns, tmp_path):
    from probes.stages import stage_hashes
    from probes.runconfig import RunConfig

    pre, post = _tiny(tmp_path / "pre", seed=1), _tiny(tmp_path / "post", seed=2)
    (post / "generation_config.json").write_text("{}")
    cfg = RunConfig(pre_rl=str(pre), post_rl=str(post))
    before = stage_hashes(cfg)
    settings = {"dtype": {"dtype": "bfloat16"}, "device": {"device": "cuda"}, "chat": {"chat": True},
                "backend": {"backend": "bridge"}, "steer_n": {"steer_n": 7}, "patching": {"patching": {"n_boot": 99}},
                "probe_hook": {"probe_hook": "hook_resid_mid"}}
    if change in settings:
        cfg = cfg.model_copy(update=settings[change])
    elif change == "weights":
        f = next(post.glob("*.safetensors"))
        f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 1]))
    else:
        f = post / change
        text = f.read_text() if f.exists() else ""
        f.write_text(text + ("\n" if change.endswith(".json") else "{{ messages }}"))
    after = stage_hashes(cfg)
    assert {s for s in STAGE_NAMES if after[s] != before[s]} == set(reruns)


def test_a_pair_whose_chat_templates_differ_is_refused_before_any_stage(tmp_path):
    from probes.synth import CHAT_TEMPLATE, synth_tokenizer
    from probes.train.config import ModelConfig
    from probes.train.model import build_model

    for name, template in (("a", CHAT_TEMPLATE), ("b", "<|im_start|> system <|im_end|> " + CHAT_TEMPLATE)):
        tok = synth_tokenizer(64)
        tok.chat_template = template
        build_model(ModelConfig(layers=2, d_model=32, heads=4, kv_heads=2, d_mlp=64), tok, seed=0) \
            .save_pretrained(str(tmp_path / name))
        tok.save_pretrained(str(tmp_path / name))
    r = _main("--quick", "--chat", "--pre-rl", tmp_path / "a", "--post-rl", tmp_path / "b", "--out", tmp_path / "run",
              timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "chat_template" in r.stderr and "renders to" in r.stderr
    assert not (tmp_path / "run" / "stages").exists()


@pytest.mark.parametrize("damage,expect", [
    ("truncate-weights", "is truncated: its header describes"),
    ("cut-weights-header", "do not hold its safetensors header"),
    ("corrupt-config", "config.json is corrupt or truncated"),
    ("corrupt-tokenizer", "tokenizer.json is corrupt or truncated"),
    ("corrupt-tokenizer-config", "tokenizer_config.json is corrupt or truncated"),
])
def test_a_truncated_or_corrupt_checkpoint_file_is_one_error_line(damage, expect, tmp_path):
    """Issue 19: before, a truncated weights file ended in a SafetensorError traceback."""
    good, bad = _tiny(tmp_path / "good", seed=1), _tiny(tmp_path / "bad", seed=2)
    if damage == "truncate-weights":
        f = next(bad.glob("*.safetensors"))
        f.write_bytes(f.read_bytes()[:-100])
    elif damage == "cut-weights-header":
        f = next(bad.glob("*.safetensors"))
        f.write_bytes(f.read_bytes()[:20])
    else:
        f = bad / {"corrupt-config": "config.json", "corrupt-tokenizer": "tokenizer.json",
                   "corrupt-tokenizer-config": "tokenizer_config.json"}[damage]
        f.write_text(f.read_text()[: len(f.read_text()) // 2])
    r = _main("--quick", "--pre-rl", good, "--post-rl", bad, "--out", tmp_path / "run", timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: --post-rl: ") and expect in r.stderr and str(bad) in r.stderr
    assert not (tmp_path / "run" / "stages").exists()


def test_a_truncated_checkpoint_is_refused_by_the_loader_too(tmp_path):
    from activations.load import CheckpointError, load_checkpoint

    bad = _tiny(tmp_path / "bad", seed=2)
    f = next(bad.glob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match="is truncated"):
        load_checkpoint(str(bad))


@pytest.mark.slow
def test_a_corrupt_run_folder_file_is_one_error_line(same_model_run, tmp_path):
    out, _, ckpt = same_model_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    f = run / "behaviour" / "behaviour.json"
    f.write_text(f.read_text()[:1000])
    r = _main("--quick", "--pre-rl", ckpt, "--post-rl", ckpt, "--out", run, "--stages", "verdict", "--force")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "behaviour.json is corrupt or truncated" in r.stderr


def test_results_of_schema_2_are_read_with_one_spelling_and_others_refused(tmp_path):
    """results.json schema 3 spells behaviour one way; a schema-2 file (key ``behavior``) is
    upgraded in memory, and an unknown version is refused with its number and the fix."""
    import json

    from probes.runfolder import RESULTS_SCHEMA_VERSION, RunFolderError, read_results

    (tmp_path / "results.json").write_text(json.dumps({"schema_version": 2, "behavior": {"x": 1}, "verdict": {}}))
    res = read_results(tmp_path)
    assert res["behaviour"] == {"x": 1} and "behavior" not in res
    assert res["schema_version"] == RESULTS_SCHEMA_VERSION == 3
    (tmp_path / "results.json").write_text(json.dumps({"schema_version": 1, "behavior": {}}))
    with pytest.raises(RunFolderError, match="schema_version 1.*rerun python -m probes.run"):
        read_results(tmp_path)
