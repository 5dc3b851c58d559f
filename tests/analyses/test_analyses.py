"""The analysis scripts and the exploration notebook, on one shared ``--quick`` run of the shipped pair."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.acceptance

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "analyses" / "notebooks" / "explore.ipynb"


@pytest.fixture
def run_copy(quick_run, tmp_path):
    """A private copy of the shared quick run (the scripts write into figures/)."""
    return Path(shutil.copytree(quick_run.out, tmp_path / "run", ignore=shutil.ignore_patterns("store")))


@pytest.mark.slow
@pytest.mark.parametrize("name, outputs", [
    ("behaviour", ["behaviour_strategy.png", "behaviour_decomposition.png"]),
    ("probes", ["probes_strategy_curve.png", "probes_strategy_curve.csv"]),
    ("patching", ["patching_recovery.png", "patching_recovery.csv"]),
    ("verdict", ["verdict.md"]),
])
def test_each_analysis_script_writes_its_figure_or_table(name, outputs, run_copy):
    for o in outputs:
        (run_copy / "figures" / o).unlink(missing_ok=True)
    r = subprocess.run([sys.executable, "-m", f"analyses.{name}", str(run_copy)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for o in outputs:
        f = run_copy / "figures" / o
        assert f.exists() and f.stat().st_size > 0, o
        if o.endswith(".png"):
            assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if not o.endswith(".csv"):  # the script prints the figure or table it made
            assert str(f) in r.stdout


@pytest.mark.slow
def test_the_probe_table_has_one_row_per_layer_of_each_probed_model(run_copy):
    from analyses.probes import strategy_rows

    probes = json.loads((run_copy / "probes" / "probes.json").read_text())
    rows = strategy_rows(probes)
    ok = [m for m in ("pre", "post") if probes["models"][m]["strategy"]["status"] == "ok"]
    n_layers = len(probes["settings"]["layers"])
    assert len(rows) == n_layers * len(ok) and ok
    first = next(r for r in rows if r["model"] == ok[0] and r["layer"] == 0)
    want = probes["models"][ok[0]]["strategy"]["per_layer"][0]["logistic"]["test"]["balanced_accuracy"]["value"]
    assert first["logistic"] == want


@pytest.mark.slow
def test_the_recovery_table_holds_both_directions_of_selection_and_improvement(run_copy):
    from analyses.patching import recovery_rows

    patching = json.loads((run_copy / "patching" / "patching.json").read_text())
    rows = recovery_rows(patching)
    assert {(r["panel"], r["direction"]) for r in rows} == {
        (p, d) for p in ("selection", "improvement") for d in ("post_into_pre", "pre_into_post")}
    last = patching["mechanistic"]["post_into_pre"]["curves"]["improvement"]["hook_resid_post"][-1]
    row = [r for r in rows if r["panel"] == "improvement" and r["direction"] == "post_into_pre"
           and r["hook"] == "hook_resid_post"][-1]
    assert row["recovery"] == last["value"] and row["behaviour"] == last["behaviour"]


@pytest.mark.slow
def test_the_verdict_table_states_the_label_and_both_scores(run_copy):
    from analyses.verdict import verdict_table

    res = json.loads((run_copy / "results.json").read_text())
    table = verdict_table(res)
    assert f"**{res['verdict']['label']}**" in table
    for k in ("selection", "improvement"):
        v = res["verdict"][f"{k}_score"]
        assert (f"{v:+.3f}" if v is not None else "undefined") in table
    assert all(line.count("|") == 4 for line in table.splitlines())  # the rule's own | characters are escaped


@pytest.mark.parametrize("name", ["behaviour", "probes", "patching", "verdict"])
def test_an_analysis_script_without_a_run_folder_is_a_one_line_error(name, tmp_path):
    r = subprocess.run([sys.executable, "-m", f"analyses.{name}", str(tmp_path / "nope")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.slow
def test_the_explore_notebook_runs_on_a_quick_run(run_copy, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("RUN_DIR", str(run_copy))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    label = json.loads((run_copy / "results.json").read_text())["verdict"]["label"]
    assert f"verdict: {label}" in text and "routing @ prompt" in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 4
