"""``python -m probes.patch`` end to end on two tiny random Qwen2 checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from probes.patch import main

from .conftest import N_LAYERS, save, tiny_qwen2, with_new_mlp

pytestmark = pytest.mark.acceptance

SMALL = ["--n-problems", "4", "--steps", "2", "--counterfactual-n", "3", "--behaviour-n", "2",
         "--max-new-tokens", "5", "--n-boot", "50"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, base_model, tok):
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "pre": save(base_model, tok, root / "pre"),
        "post": save(with_new_mlp(base_model, 1, seed=11), tok, root / "post"),
        "wide": save(tiny_qwen2(tok, hidden_size=32), tok, root / "wide"),
    }


@pytest.fixture(scope="module")
def run(dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["--pre", str(dirs["pre"]), "--post", str(dirs["post"]), "--out", str(out), *SMALL])
    return code, out


def test_cli_writes_patching_json_and_figures(run):
    code, out = run
    assert code == 0
    results = json.loads((out / "patching.json").read_text())  # strict JSON: NaN would not parse back
    assert results["schema_version"] == 2
    assert set(results["routing"]) == {"prompt", "prompt_end"}
    assert set(results["routing"]["prompt"]) == {"post_into_pre", "pre_into_post"}
    assert results["verdict"]["label"] in ("selection", "improvement", "both", "neither")
    assert set(results["counterfactual"]["pre"]) == {"denoising", "noising"}
    assert results["attribution"]["post"]["agreement"]["n_cells"] > 0
    for name in results["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"routing_prompt.png", "execution.png", "counterfactual_pre_denoising.png",
            "counterfactual_post_noising.png", "attribution_pre.png", "behaviour.png"} <= set(results["figures"])


def test_cli_curves_show_the_differing_layer_of_the_pair(run):
    _, out = run
    results = json.loads((out / "patching.json").read_text())
    curve = results["routing"]["prompt"]["post_into_pre"]["curves"]["hook_resid_post"]
    assert [round(c["value"], 5) for c in curve] == [0.0] + [1.0] * (N_LAYERS - 1)
    mlp = results["routing"]["prompt"]["pre_into_post"]["curves"]["hook_mlp_out"]
    assert round(mlp[0]["value"], 5) == 0.0 and round(mlp[1]["value"], 5) == 1.0
    assert results["verdict"]["score_site"] == f"blocks.{N_LAYERS - 1}.hook_resid_post"


def test_cli_on_identical_models_says_neither(dirs, tmp_path, capsys):
    code = main(["--pre", str(dirs["pre"]), "--post", str(dirs["pre"]), "--out", str(tmp_path), *SMALL,
                 "--counterfactual-n", "0", "--behaviour-n", "0"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "verdict=neither selection=undefined improvement=undefined"
    results = json.loads((tmp_path / "patching.json").read_text())
    assert results["counterfactual"] == {} and results["behaviour"] == {}


def test_cli_refuses_a_pair_that_cannot_be_patched(dirs, tmp_path, capsys):
    code = main(["--pre", str(dirs["pre"]), "--post", str(dirs["wide"]), "--out", str(tmp_path), *SMALL])
    assert code == 1
    assert "config.hidden_size" in capsys.readouterr().err


def test_cli_names_a_bad_config_field(dirs, tmp_path, capsys):
    code = main(["--pre", str(dirs["pre"]), "--post", str(dirs["post"]), "--out", str(tmp_path),
                 "--hooks", "hook_resid_middle"])
    assert code == 2
    err = capsys.readouterr().err
    assert "hooks" in err and "hook_resid_post" in err


def test_cli_reads_a_yaml_config(dirs, tmp_path):
    cfg = tmp_path / "patch.yaml"
    cfg.write_text(f"pre: {dirs['pre']}\npost: {dirs['pre']}\nn_problems: 2\nsteps: [1]\ncounterfactual_n: 0\n"
                   "behaviour_n: 0\nn_boot: 20\nhooks: [hook_resid_post]\n")
    assert main(["--config", str(cfg), "--out", str(tmp_path / "o")]) == 0
    results = json.loads((tmp_path / "o" / "patching.json").read_text())
    assert results["settings"]["n_problems"] == 2 and results["settings"]["hooks"] == ["hook_resid_post"]


def test_module_entry_point_prints_help():
    out = subprocess.run([sys.executable, "-m", "probes.patch", "--help"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[3], timeout=120)
    assert out.returncode == 0 and "--pre" in out.stdout and "patching.json" in out.stdout
