"""End to end: two tiny random Qwen2 models, their activation stores (``activations.cache``),
behaviour-like labels, and ``probe_report`` / ``python -m probes.fit`` writing ``probes.json``
and figures, with transfer and the steering dose-response."""

import hashlib
import json
import subprocess
import sys

import pytest
import torch

from probes.probing.report import probe_report
from probes.task.problems import MAP_POSITIONS
from probes.task.traces import NATURAL_STRATEGY

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n"


def _save_tiny(path, seed):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from probes.task.tokenizer import build_tokenizer

    tok = build_tokenizer()
    cfg = Qwen2Config(vocab_size=37, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _strategies(problems, flip_share, salt):
    """The natural strategy of each problem's type, flipped for a hashed share of the chains."""
    out = []
    for p in problems:
        h = int(hashlib.sha1(f"{salt}|{p.chain_id}".encode()).hexdigest()[:8], 16) / 2**32
        s = NATURAL_STRATEGY[p.type]
        out.append(("backward" if s == "forward" else "forward") if h < flip_share else s)
    return out


@pytest.fixture(scope="module")
def organism_pair(tmp_path_factory, make_twins, make_behaviour_rows):
    from activations.backends import make_backend
    from activations.cache import CacheRecord, cache_activations
    from activations.load import load_checkpoint

    root = tmp_path_factory.mktemp("pair")
    problems = make_twins(60, seed=21, steps=(1, 2))
    problems = list({p.id: p for p in problems}.values())
    records = [CacheRecord(key=p.id, id=p.id, prompt=p.prompt) for p in problems]
    out = {"problems": problems}
    for name, seed, flip in (("pre", 0, 0.1), ("post", 1, 0.25)):
        ckpt_dir = _save_tiny(root / f"{name}-ckpt", seed)
        backend = make_backend("nnsight", load_checkpoint(ckpt_dir))
        cache_activations(backend, records, "blocks.*.hook_resid_post", f"prompt_end {MAP_POSITIONS}",
                          root / f"{name}-store", batch_size=64, progress=False)
        rows = make_behaviour_rows(problems, _strategies(problems, flip, name), seed=seed)
        labels = root / f"{name}.jsonl"
        labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[name] = (root / f"{name}-store", labels, ckpt_dir)
    return out


def test_probe_report_writes_every_part_of_probes_json_and_its_figures(organism_pair, tmp_path):
    from probes.probing.sweep import ProbeConfig
    from probes.task.problems import PROMPT_SLOTS

    (sp, lp, cp), (sq, lq, cq) = organism_pair["pre"], organism_pair["post"]
    cfg = ProbeConfig(Cs=(1e-2, 1.0), n_splits=3, n_boot=100)
    res = probe_report(sp, sq, lp, lq, tmp_path / "out", models=(cp, cq), targets=("strategy", "type", "propensity"),
                       config=cfg, steer_alphas=(-2.0, 0.0, 2.0), steer_n=12, steer_max_new_tokens=6,
                       progress=False)
    on_disk = json.loads((tmp_path / "out" / "probes.json").read_text())
    assert on_disk == res and res["schema_version"] == 2
    for model in ("pre", "post"):
        s = res["models"][model]["strategy"]
        assert s["status"] == "ok" and [r["layer"] for r in s["per_layer"]] == [0, 1]
        for r in s["per_layer"]:
            lo, hi = r["logistic"]["test"]["balanced_accuracy"]["ci"]
            assert lo <= r["logistic"]["test"]["balanced_accuracy"]["value"] <= hi
            assert {"control", "selectivity", "shuffled", "within_type", "diffmeans"} <= set(r)
        assert set(s["baselines"]) == {"majority", "type", "surface"}
        # the labels follow the problem type 75-90% of the time, so the type baseline reads them
        assert s["baselines"]["type"]["accuracy"]["value"] > 0.6
        assert res["models"][model]["propensity"]["kind"] == "continuous"
    assert res["models"]["pre"]["strategy"]["n_test"] == res["models"]["post"]["strategy"]["n_test"]
    tr = res["transfer"]["strategy"]
    assert tr["status"] == "ok" and len(tr["per_layer"]) == 2
    for r in tr["per_layer"]:
        assert -1 <= r["cosine_logistic"] <= 1 and "accuracy" in r["pre_to_post"]
    for model in ("pre", "post"):
        st = res["steering"][model]
        assert st["status"] == "ok" and st["alphas"] == [-2.0, 0.0, 2.0] and st["delta_p_forward"][1] == 0.0
        assert st["layer"] == res["models"][model]["strategy"]["best_layer"]
        assert all(0 <= p["mean"] <= 1 for p in st["p_forward"])
        assert st["dpf_per_dose"]["ci"][0] <= st["dpf_per_dose"]["mean"] <= st["dpf_per_dose"]["ci"][1]
        # the headline: the within-type propensity at every prompt slot x layer, with its verdict in words
        pm = res["propensity"][model]
        assert pm["status"] == "ok" and pm["positions"][-1] == "prompt_end" and pm["layers"] == [0, 1]
        # every slot of the task's prompts is cached; the last word is prompt_end itself and is not repeated
        assert pm["positions"][:-1] == [f"word:{i}" for _, i in PROMPT_SLOTS if i != -1]
        assert len(pm["map"]["r2"]) == len(pm["positions"]) and all(len(r) == 2 for r in pm["map"]["r2"])
        assert pm["headline"]["statement"].startswith(("informative", "not informative"))
        assert set(pm["baselines"]) == {"type", "type x field", "type x chain length", "prompt tokens", "all surface"}
    assert res["figures"][:3] == ["figures/propensity_within_type.png", "figures/propensity_map.png",
                                  "figures/steering_dose_response.png"]
    assert "strategy_transfer.png" in " ".join(res["figures"]) and "steering_pre.png" in " ".join(res["figures"])
    for f in res["figures"]:
        assert (tmp_path / "out" / f).read_bytes()[:8] == PNG


def test_fit_cli_writes_probes_json_and_a_layer_figure(organism_pair, tmp_path, cli_env):
    sp, lp, _ = organism_pair["pre"]
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "probes.fit", "--store", str(sp), "--labels", str(lp), "--target",
                        "strategy", "type", "--out", str(out), "--n-boot", "50", "--splits", "3", "--quiet"],
                       capture_output=True, text=True, env=cli_env)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == f"wrote {out / 'probes.json'}"
    assert any(line.startswith("probes: target=type model=model best_layer=") for line in lines)
    res = json.loads((out / "probes.json").read_text())
    assert res["models"]["model"]["strategy"]["status"] == "ok"
    assert res["steering"]["model"]["status"] == "skipped" and "no model" in res["steering"]["model"]["reason"]
    assert (out / "figures" / "strategy_layers.png").read_bytes()[:8] == PNG


def test_fit_cli_reports_a_missing_store_and_bad_arguments(tmp_path, organism_pair, cli_env):
    _, lp, _ = organism_pair["pre"]
    r = subprocess.run([sys.executable, "-m", "probes.fit", "--store", str(tmp_path / "nope"), "--labels", str(lp),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, env=cli_env)
    assert r.returncode == 1 and "no activation store" in r.stderr
    r = subprocess.run([sys.executable, "-m", "probes.fit", "--store", "x", "--labels", str(lp), "--out", "o",
                        "--test-size", "2"], capture_output=True, text=True, env=cli_env)
    assert r.returncode == 2 and "test_size" in r.stderr


def test_every_hook_of_a_store_is_probed_and_the_label_is_found_where_it_is_planted(tmp_path, make_twins,
                                                                                     make_behaviour_rows):
    from probes.probing.report import run_probes
    from probes.probing.source import ArrayStore
    from probes.probing.sweep import ProbeConfig
    from probes.probing.synthetic import planted_activations
    from probes.probing.targets import labels_from_rows

    problems = make_twins(80, seed=31, steps=(2, 3))
    data = planted_activations(len(problems), 4, 8, [0.0, 0.0, 0.0, 2.5], seed=4)
    strategies = ["forward" if v else "backward" for v in data.y]
    sites = {f"blocks.{layer}.hook_resid_post": data.X[layer] for layer in range(2)}
    sites.update({f"blocks.{layer}.hook_mlp_out": data.X[2 + layer] for layer in range(2)})  # planted: mlp_out of 1
    store = ArrayStore(sites, [p.id for p in problems])
    res = run_probes({"model": store}, {"model": labels_from_rows(make_behaviour_rows(problems, strategies))},
                     tmp_path, targets=("strategy",), hook=["hook_resid_post", "hook_mlp_out"],
                     config=ProbeConfig(Cs=(0.01, 1.0), n_splits=3, n_boot=50), progress=False)
    assert set(res["sites"]) == {"hook_resid_post", "hook_mlp_out"}
    assert res["models"] == res["sites"]["hook_resid_post"]["models"]
    resid = res["sites"]["hook_resid_post"]["models"]["model"]["strategy"]["per_layer"]
    mlp = res["sites"]["hook_mlp_out"]["models"]["model"]["strategy"]
    assert mlp["best_layer"] == 1 and mlp["per_layer"][1]["logistic"]["test"]["balanced_accuracy"]["value"] > 0.85
    assert max(r["logistic"]["test"]["balanced_accuracy"]["value"] for r in resid) < 0.7
    assert "figures/hook_mlp_out_strategy_layers.png" in res["figures"]
    assert (tmp_path / "figures" / "hook_mlp_out_strategy_layers.png").read_bytes()[:8] == PNG
