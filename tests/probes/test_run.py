"""The main job end to end on tiny random checkpoints (``--quick``)."""

import json
import math
import subprocess
import sys

import pytest


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
    assert res["schema_version"] == 1
    assert res["verdict"]["label"] == "neither"
    p = res["decomposition"]["pooled"]
    for k in ("delta", "selection", "improvement", "interaction"):
        assert p[k] == 0.0
        assert p[k + "_ci"] == [0.0, 0.0]
    _no_nan(res)
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
