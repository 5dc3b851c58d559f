"""The main job's real-scale options: ``--device-map``, ``--remote``, ``expect_dims``, ``chat``,
``--quick`` at 1.5B parameters, and the Qwen2.5-1.5B-Instruct run config. Nothing here makes
1.5B weights: the real shape is a ``config.json`` only, models are the ``tiny`` synth shape."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probes import checks, stages
from probes import run as run_cli
from probes.runfolder import RunFolder
from probes.runconfig import QUICK, QUICK_AT_SCALE, RunConfig

pytestmark = pytest.mark.acceptance

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from probes.synth import make_synth

    d = tmp_path_factory.mktemp("tiny") / "m"
    make_synth("tiny", 0, d)
    return d


def _env_without_ndif(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("NDIF_API_KEY", "NDIF_HOST", "NNSIGHT_CONFIG")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)  # no user nnsight config with a key
    env.update(extra)
    return env


def test_remote_without_a_key_fails_at_once_with_a_one_line_error(tmp_path):
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "probes.run", "--remote", "--quick", "--pre-rl", "Qwen/x",
                        "--post-rl", "Qwen/y", "--out", str(tmp_path / "run")], cwd=REPO, capture_output=True,
                       text=True, env=_env_without_ndif(tmp_path), timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: --remote: remote execution on NDIF needs an API key and none is set")
    assert "NDIF_API_KEY" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    assert time.perf_counter() - t < 60


def test_remote_with_a_key_but_no_service_says_it_cannot_be_reached(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    monkeypatch.setenv("NDIF_HOST", "http://127.0.0.1:9")
    with pytest.raises(SystemExit):
        checks.check_scope(RunConfig(remote=True))
    err = capsys.readouterr().err
    assert err.startswith("error: --remote: remote execution on NDIF: the service at http://127.0.0.1:9 cannot be reached")


def test_device_map_reaches_the_config_and_every_stage_load(tiny, tmp_path, monkeypatch):
    from activations import load

    seen = {}

    def fake_pipeline(cfg, stages, force, prefix=""):
        seen["cfg"], seen["options"] = cfg, load._OPTIONS.get()
        return RunFolder(cfg.folder)

    monkeypatch.setattr(run_cli, "run_pipeline", fake_pipeline)
    assert run_cli.main(["--pre-rl", str(tiny), "--post-rl", str(tiny), "--device-map", "auto",
                         "--out", str(tmp_path / "run")]) == 0
    assert seen["cfg"].device_map == "auto"
    assert seen["options"].device_map == "auto" and seen["options"].dtype == "float32"
    assert load._OPTIONS.get().device_map is None  # reset after the run


def test_an_unknown_device_map_is_refused_by_the_cli_and_the_config():
    r = subprocess.run([sys.executable, "-m", "probes.run", "--device-map", "everywhere"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--device-map" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(ValueError, match="unknown device map 'everywhere'"):
        RunConfig(device_map="everywhere")


def test_chat_true_with_a_tokenizer_without_a_template_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit):
        checks.check_scope(RunConfig(chat=True))  # the organism: trained on plain prompts, no template
    err = capsys.readouterr().err
    assert err.startswith("error: chat: true but the tokenizer of --pre-rl") and "set chat: false" in err
    assert len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def chat_run(tiny, tmp_path_factory):
    from probes.synth import make_twin

    d = tmp_path_factory.mktemp("chat")
    make_twin(tiny, 1, d / "post", scale=0.05)
    out = d / "run"
    r = subprocess.run([sys.executable, "-m", "probes.run", "--quick", "--chat", "--pre-rl", str(tiny),
                        "--post-rl", str(d / "post"), "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_chat_runs_every_stage_on_the_prompt_inside_the_template(tiny, chat_run):
    import json

    import numpy as np
    import torch

    from activations.batch import render_prompt
    from activations.load import load_checkpoint
    from activations.store import ActivationStore

    res = json.loads((chat_run / "results.json").read_text())
    assert res["verdict"]["label"] in ("selection", "improvement", "both", "neither")
    ck = load_checkpoint(tiny)
    tok = ck.tokenizer
    row = json.loads((chat_run / "behaviour" / "behaviour.reference.jsonl").read_text().splitlines()[0])
    rendered = render_prompt(tok, row["prompt"], chat=True)
    assert rendered.endswith("<|im_start|> assistant ")
    with torch.no_grad():
        ids = tok(rendered, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = ck.model(ids, output_hidden_states=True)
        plain = ck.model(tok(row["prompt"], return_tensors="pt", add_special_tokens=False)["input_ids"]).logits[0, -1]
    f, b = tok.convert_tokens_to_ids(["F", "B"])
    logits = out.logits[0, -1]
    # behaviour measured the first token after the template's generation prompt, not after the bare prompt
    assert row["logit_diff"] == pytest.approx(float(logits[f] - logits[b]), abs=1e-4)
    assert abs(row["logit_diff"] - float(plain[f] - plain[b])) > 1e-3
    # the cache stored the residual stream at the template's last token ("assistant")
    store = ActivationStore(chat_run / "store" / "pre")
    assert store.manifest.get("chat") is True
    rows = {store.labels[r]: r for r in store.rows_of(row["id"])}
    got = store["blocks.0.hook_resid_post"][[rows["prompt_end"]]].float().reshape(-1).numpy()
    np.testing.assert_allclose(got, out.hidden_states[1][0, -1].numpy(), rtol=1e-4, atol=1e-4)
    # and the prompt slots at the task prompt's words inside the template (word 1: the type word)
    enc = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
    type_end = rendered.index(row["prompt"]) + len(row["prompt"].split()[0]) + 1 + len(row["prompt"].split()[1])
    tpos = next(i for i, (a, e) in enumerate(enc["offset_mapping"]) if a < type_end <= e)
    got = store["blocks.0.hook_resid_post"][[rows["word:1"]]].float().reshape(-1).numpy()
    np.testing.assert_allclose(got, out.hidden_states[1][0, tpos].numpy(), rtol=1e-4, atol=1e-4)
    assert (chat_run / "patching" / "patching.json").exists()


def test_expect_dims_names_the_checkpoint_and_the_dimension_that_differs(tiny, capsys):
    checks.check_dims(RunConfig(pre_rl=str(tiny), post_rl=str(tiny), expect_dims={"n_layers": 2, "d_model": 64}))
    with pytest.raises(SystemExit):
        checks.check_dims(RunConfig(pre_rl=str(tiny), post_rl=str(tiny), expect_dims={"n_layers": 28}))
    assert f"error: --pre-rl {tiny} has n_layers 2, the config expects 28" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown dimension"):
        RunConfig(expect_dims={"layers": 28})


def test_quick_trims_patching_at_1_5b_parameters_only(tiny, tmp_path, capsys):
    from probes.synth import qwen2_5_1_5b_config

    big = tmp_path / "qwen-shape"
    qwen2_5_1_5b_config(0, 2, 3).save_pretrained(big)  # the config alone: no weights
    small = RunConfig(**{**QUICK, "pre_rl": str(tiny), "post_rl": str(tiny)})
    assert checks.quick_at_scale(small) == small
    trimmed = checks.quick_at_scale(small.model_copy(update={"pre_rl": str(big)}))
    assert trimmed.patching == {**QUICK["patching"], **QUICK_AT_SCALE["patching"]}
    assert trimmed.patching["counterfactual_n"] == 0 and trimmed.patching["hooks"] == ["hook_resid_post"]
    assert "--quick at 1.54B parameters" in capsys.readouterr().err


def test_the_qwen_run_config_states_the_real_shape_and_valid_patching():
    from probes.patching.config import PatchingConfig

    cfg = RunConfig.from_yaml(REPO / "configs" / "qwen2.5-1.5b-instruct.yaml")
    assert cfg.expect_dims == {"n_layers": 28, "d_model": 1536, "n_heads": 12, "n_kv_heads": 2, "d_head": 128,
                               "d_mlp": 8960, "d_vocab": 151936}
    assert (cfg.dtype, cfg.device, cfg.chat, cfg.probe_hook, cfg.probe_position) == (
        "bfloat16", "cuda", True, "hook_resid_post", "prompt_end")
    PatchingConfig(pre=cfg.pre_rl, post=cfg.post_rl, out="x", dtype=cfg.dtype, **cfg.patching)


def test_a_run_with_chat_does_not_reuse_stages_of_a_plain_run():
    plain, chat = stages.stage_hashes(RunConfig()), stages.stage_hashes(RunConfig(chat=True))
    assert all(plain[s] != chat[s] for s in ("behaviour", "cache", "probes", "patching", "verdict"))
    assert stages.stage_hashes(RunConfig(chat=False)) == plain
