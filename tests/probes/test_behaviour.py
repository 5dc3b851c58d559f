"""Behaviour measurement and its CLI on a tiny random organism."""

import json
import subprocess
import sys

import numpy as np
import pytest

from probes.behaviour.pipeline import held_out_problems, parse_steps
from probes.behaviour.evaluate import pass_at_k

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from probes.task.tokenizer import build_tokenizer
    from probes.train.config import ModelConfig
    from probes.train.model import build_model

    d = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer()
    model = build_model(ModelConfig(layers=2, d_model=32, heads=4, kv_heads=2, d_mlp=64), tok, seed=3)
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def test_pass_at_k_matches_the_combinatorial_definition():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 3, 2) == 1.0


def test_held_out_problems_are_stratified_and_reproducible():
    ps = held_out_problems(80, seed=0, steps=(1, 2, 3, 4, 5))
    cells = {(p.field, p.type, p.steps) for p in ps}
    assert len(cells) == 20
    assert [p.id for p in ps] == [p.id for p in held_out_problems(80, seed=0, steps=(1, 2, 3, 4, 5))]


def test_held_out_problems_are_distinct_even_where_short_chains_repeat():
    # 400 problems over k = 1..2: 50 per (field, type, k) cell, where random draws of the
    # 3 x 11 x 11 one-step chains of GF(11) collide often; ids key every downstream row
    ps = held_out_problems(400, seed=0, steps=(1, 2))
    assert len({p.id for p in ps}) == 400
    with pytest.raises(ValueError, match="exhausted"):
        held_out_problems(4 * 400, seed=0, steps=(1,))  # 400 per cell > 363 one-step GF(11) problems


def test_steps_argument_parses_ranges_and_lists():
    assert parse_steps("1-3") == (1, 2, 3) and parse_steps("5,7") == (5, 7)
    with pytest.raises(Exception, match="range"):
        parse_steps("a-b")


def test_behaviour_cli_same_model_as_reference_gives_zero_decomposition(tiny_dir, tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, "-m", "probes.behaviour", "--model", str(tiny_dir), "--reference", str(tiny_dir),
                        "--n", "16", "--steps", "1-2", "--samples", "2", "--forced", "1", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["schema_version"] == 1
    m = res["models"]["model"]
    for t in ("evaluation", "inversion", "all"):
        sh = m["strategy_share"][t]["sampled"]
        assert sum(sh.values()) == pytest.approx(1.0)
        assert 0 <= m["strategy_share"][t]["first_token"]["forward"] <= 1
    assert 0 <= m["accuracy"]["implied"]["mean"] <= 1
    assert m == res["models"]["reference"]  # same checkpoint, same seeds: same numbers
    pooled = res["decomposition"]["pooled"]
    assert pooled["delta"] == 0 and pooled["selection"] == 0 and pooled["improvement"] == 0
    assert len(res["decomposition"]["strata"]) == 8  # 2 types x 2 k x 2 fields
    assert "decomposition (reference -> model)" in r.stdout
    rows = [json.loads(l) for l in (tmp_path / "b.model.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(len(x["samples"]) == 2 for x in rows)
    assert all(np.sum(x["pi"]) <= 1 + 1e-6 for x in rows)


def test_behaviour_cli_rejects_a_directory_that_is_not_a_checkpoint(tmp_path):
    r = subprocess.run([sys.executable, "-m", "probes.behaviour", "--model", str(tmp_path), "--n", "2", "--out",
                        str(tmp_path / "x.json")], capture_output=True, text=True)
    assert r.returncode == 2 and "has no config.json" in r.stderr and r.stderr.startswith("error:")


def test_generation_ignores_a_repetition_penalty_in_the_checkpoints_generation_config(tiny_dir):
    """Qwen2.5-Instruct ships ``repetition_penalty: 1.1``; the measured policy must be the softmax."""
    import torch

    from activations.load import load_checkpoint
    from probes.behaviour.generate import generate

    ck = load_checkpoint(tiny_dir)
    model, tok = ck.model, ck.tokenizer
    prompts = [p.prompt for p in held_out_problems(4, 0, (2,))]
    plain = generate(model, tok, prompts, greedy=True, max_new_tokens=12)
    model.generation_config.repetition_penalty = 50.0
    assert generate(model, tok, prompts, greedy=True, max_new_tokens=12) == plain
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():  # the checkpoint's setting would have changed the responses: the test has teeth
        penal = model.generate(**enc, do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id)
    assert tok.batch_decode(penal[:, enc["input_ids"].shape[1]:], skip_special_tokens=True) != plain


def test_the_generation_budget_counts_tokens_not_words():
    from probes.behaviour.generate import max_trace_tokens, max_trace_words, tokens_per_word
    from probes.task.tokenizer import build_tokenizer

    word_level = build_tokenizer()
    assert tokens_per_word(word_level) == 1 and max_trace_tokens(word_level, 5) == max_trace_words(5) + 8

    class CharTokenizer:  # every character a token: "li" after a space is 3 tokens
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(range(len(text)))}

    longest = max(len(w) for w in build_tokenizer().get_vocab() if not w.startswith("<"))
    assert tokens_per_word(CharTokenizer()) == longest + 1
    assert max_trace_tokens(CharTokenizer(), 5) == max_trace_words(5) * (longest + 1) + 8


def test_pair_checks_apply_issue_3_thresholds_to_share_and_term():
    from probes.behaviour.grid import pair_checks

    def pooled(sel, sel_ci, imp, imp_ci):
        return {"selection": sel, "selection_ci": sel_ci, "improvement": imp, "improvement_ci": imp_ci}

    good_sel = pooled(0.07, [0.05, 0.09], 0.0, [-0.01, 0.01])
    assert pair_checks(good_sel, 0.80, 0.90, 0.45)["selection_pair"]
    assert not pair_checks(good_sel, 0.27, 0.98, 0.15)["selection_pair"]  # evaluation not on its natural strategy
    assert not pair_checks(pooled(0.07, [-0.01, 0.15], 0, [0, 0]), 0.9, 0.9, 0.5)["selection_pair"]  # CI covers 0
    good_imp = pooled(0.0, [0, 0], 0.06, [0.02, 0.10])
    assert pair_checks(good_imp, 0.99, 0.0, 0.96)["improvement_pair"]
    assert not pair_checks(good_imp, 0.99, 0.0, 0.90)["improvement_pair"]  # forward share below 95%
    assert not pair_checks(pooled(0, [0, 0], 0.04, [0.01, 0.07]), 0.99, 0.0, 0.99)["improvement_pair"]


def test_the_row_cache_measures_a_checkpoint_once_and_refuses_a_damaged_file(tiny_dir, tmp_path, monkeypatch):
    import probes.behaviour.evaluate as ev
    from activations.hashing import weights_sha256 as weights_hash
    from probes.behaviour.pipeline import evaluate_cached, rows_cache_file
    from probes.behaviour.evaluate import BehaviourSettings

    problems = held_out_problems(12, seed=0, steps=(1, 2))
    settings = BehaviourSettings(n_samples=2, n_forced=1, batch_size=8)
    calls = []
    real = ev.evaluate_model
    monkeypatch.setattr(ev, "evaluate_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = evaluate_cached(str(tiny_dir), problems, settings, tmp_path, progress=False)
    assert len(calls) == 1
    f = rows_cache_file(tmp_path, weights_hash(tiny_dir), problems, settings)
    assert f.exists()
    again = evaluate_cached(str(tiny_dir), problems, settings, tmp_path, progress=False)
    assert len(calls) == 1  # read back, not measured
    assert [r.to_dict() for r in again] == [r.to_dict() for r in first]
    assert np.array_equal(np.stack([r.a for r in again]), np.stack([r.a for r in first]))
    # the batch size changes speed only, so it shares the entry; other settings or problems do not
    assert rows_cache_file(tmp_path, weights_hash(tiny_dir), problems, BehaviourSettings(n_samples=2, n_forced=1)) == f
    assert rows_cache_file(tmp_path, weights_hash(tiny_dir), problems, BehaviourSettings(n_samples=3, n_forced=1)) != f
    assert rows_cache_file(tmp_path, weights_hash(tiny_dir), problems[:-1], settings) != f
    # a truncated file is detected, measured again and rewritten whole
    f.write_text("\n".join(f.read_text().splitlines()[:5]) + "\n{broken")
    third = evaluate_cached(str(tiny_dir), problems, settings, tmp_path, progress=False)
    assert len(calls) == 2 and len(f.read_text().splitlines()) == len(problems)
    assert [r.to_dict() for r in third] == [r.to_dict() for r in first]
    # a hash the caller already has is used as the key: the weights are not read again
    import probes.behaviour.pipeline as bm
    known = weights_hash(tiny_dir)
    monkeypatch.setattr(bm, "checkpoint_weights_sha256", lambda d: (_ for _ in ()).throw(AssertionError("hashed again")))
    fourth = evaluate_cached(str(tiny_dir), problems, settings, tmp_path, progress=False, weights_sha256=known)
    assert len(calls) == 2 and [r.to_dict() for r in fourth] == [r.to_dict() for r in first]


def test_a_behaviour_row_refuses_another_problem(tiny_dir):
    from probes.behaviour.evaluate import ProblemBehaviour

    a, b = held_out_problems(2, seed=0, steps=(3,))
    row = {"id": a.id, "pi": [0.5, 0.5], "logit_diff": 0.0, "greedy": "", "greedy_correct": False,
           "greedy_strategy": "unparseable", "samples": [], "sample_correct": [], "sample_strategy": [],
           "forced_correct": {"forward": [True], "backward": [False]}}
    assert ProblemBehaviour.from_dict(row, a).a.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="does not belong"):
        ProblemBehaviour.from_dict(row, b)


def test_the_grid_measures_a_control_pair_from_its_start_and_remeasures_when_the_end_changes(tiny_dir, tmp_path, capsys):
    import shutil

    from activations.hashing import weights_sha256 as weights_hash
    from probes.behaviour.grid import main as grid_main
    from probes.task.tokenizer import build_tokenizer
    from probes.train.config import ModelConfig
    from probes.train.model import build_model

    root = tmp_path / "organism"
    shutil.copytree(tiny_dir, root / "start")
    tok = build_tokenizer()
    build_model(ModelConfig(layers=2, d_model=32, heads=4, kv_heads=2, d_mlp=64), tok, seed=4).save_pretrained(str(root / "end"))
    tok.save_pretrained(str(root / "end"))
    (root / "start" / "card.json").write_text(json.dumps(
        {"name": "start", "stage": "sft", "control_pair": {"after": "end", "note": "phase 3 on harder chains"}}))
    (root / "end" / "card.json").write_text(json.dumps({"name": "end", "stage": "sft", "init": str(root / "start")}))
    argv = ["--root", str(root), "--n", "8", "--steps", "1-2", "--samples", "1", "--forced", "1",
            "--cache", str(tmp_path / "cache")]
    assert grid_main(argv) == 0
    res = json.loads((root / "start" / "behaviour.json").read_text())
    assert res["model"] == str(root / "end") and res["reference"] == str(root / "start")
    assert "decomposition" in res and "decomposition" not in json.loads((root / "end" / "behaviour.json").read_text())
    out = capsys.readouterr().out
    assert "| start -> end (control) |" in out and '"start -> end (control)"' in out  # a row and its pair checks
    card = (root / "start" / "README.md").read_text()
    assert "start of an improvement control pair" in card
    assert f"sha256 `{weights_hash(root / 'start')[:16]}" in card  # its own weights, not the end's
    # up to date: not measured again; a new end checkpoint is
    mtime = (root / "start" / "behaviour.json").stat().st_mtime_ns
    assert grid_main(argv) == 0
    assert (root / "start" / "behaviour.json").stat().st_mtime_ns == mtime
    build_model(ModelConfig(layers=2, d_model=32, heads=4, kv_heads=2, d_mlp=64), tok, seed=5).save_pretrained(str(root / "end"))
    assert grid_main(argv) == 0
    assert (root / "start" / "behaviour.json").stat().st_mtime_ns != mtime


def test_a_grpo_card_shows_its_grpo_settings_and_rl_data_and_not_the_sft_mixture():
    from pathlib import Path

    from probes.behaviour.grid import card_markdown

    d = Path("checkpoints/organism/rl-f-same")
    card = json.loads((d / "card.json").read_text())
    text = card_markdown("rl-f-same", card, json.loads((d / "behaviour.json").read_text()))
    data_line = next(l for l in text.splitlines() if l.startswith("- data:"))
    assert "strategies" not in data_line and '"steps"' in data_line
    assert f'"max_completion_length": {card["config"]["grpo"]["max_completion_length"]}' in text
    assert "- RL data: same difficulty" in text and "- stage: GRPO (TRL GRPOTrainer)" in text
    sft = json.loads(Path("checkpoints/organism/sft-f/card.json").read_text())
    sft_text = card_markdown("sft-f", sft, json.loads(Path("checkpoints/organism/sft-f/behaviour.json").read_text()))
    assert "strategies" in sft_text and "- GRPO:" not in sft_text and "- RL data:" not in sft_text
