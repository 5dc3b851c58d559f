"""python -m probes.trajectory: snapshots found by step, the flip step and its CI, and an end-to-end
run on the shipped organism (a snapshot equal to the start, the RL checkpoint, an unloadable one)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from probes.runconfig import QUICK
from probes.trajectory import find_snapshots, flip_step, flip_with_ci, main, run_trajectory

pytestmark = pytest.mark.acceptance

REPO = Path(__file__).resolve().parents[2]
SFT = REPO / "checkpoints" / "organism" / "sft-fb"
RL = REPO / "checkpoints" / "organism" / "rl-fb-hard"


def test_snapshots_are_found_by_step_in_both_layouts(tmp_path):
    for name in ("step-20", "checkpoint-5", "step-100", "notes", "step-x"):
        (tmp_path / name).mkdir()
    (tmp_path / "step-7.txt").write_text("")
    assert [(s, p.name) for s, p in find_snapshots(tmp_path)] == [(5, "checkpoint-5"), (20, "step-20"),
                                                                   (100, "step-100")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no step-numbered snapshot folders"):
        find_snapshots(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        find_snapshots(tmp_path / "missing")


def test_flip_step_is_where_half_the_final_value_is_passed_in_its_direction():
    steps = np.array([0, 10, 20, 30, 40])
    assert flip_step(steps, np.array([0.0, 0.01, 0.03, 0.07, 0.08])) == 30  # 0.03 < 0.08 / 2 <= 0.07
    assert flip_step(steps, np.array([0.0, -0.05, -0.06, -0.07, -0.08])) == 10
    assert flip_step(steps, np.zeros(5)) is None
    rng = np.random.default_rng(0)
    # 300 problems switch at step 20 (half of them) or 30: the mean passes half its final value at 20
    per = np.zeros((5, 300))
    per[2:, :150] = 0.1
    per[3:, 150:] = 0.1
    per += rng.normal(0, 0.01, per.shape)
    f = flip_with_ci(steps, per, n_boot=200)
    assert f["step"] in (20, 30) and f["ci"][0] <= f["step"] <= f["ci"][1]
    assert set(f["ci"]) <= {20, 30}


@pytest.mark.slow
def test_trajectory_runs_end_to_end_zero_at_the_start_and_skips_an_unloadable_snapshot(tmp_path, capsys):
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    shutil.copytree(SFT, snaps / "step-0")  # the start itself: every term is exactly 0
    shutil.copytree(RL, snaps / "step-150")
    shutil.copytree(RL, snaps / "step-7")
    w = snaps / "step-7" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])  # truncated weights: reported and skipped
    quick = {k: v for k, v in QUICK.items() if k != "forced"}
    cfg = tmp_path / "quick.yaml"
    cfg.write_text(json.dumps({**quick, "probe_targets": ["strategy"]}))
    out = tmp_path / "traj"
    assert main(["--start", str(SFT), "--snapshots", str(snaps), "--out", str(out), "--config", str(cfg),
                 "--n-boot", "100"]) == 0
    err = capsys.readouterr().err
    assert "[snapshot 1/3 step 0]" in err and "[snapshot 2/3 step 7] skipped:" in err
    assert "[snapshot 3/3 step 150] [1/5 behaviour]" in err  # one line per snapshot and stage
    res = json.loads((out / "trajectory.json").read_text())
    by_step = {r["step"]: r for r in res["steps"]}
    assert "truncated" in by_step[7]["skipped"] or "safetensors" in by_step[7]["skipped"]
    for t in ("delta", "selection", "improvement"):
        assert by_step[0][t] == {"value": 0.0, "ci": [0.0, 0.0]}
    assert by_step[150]["selection"]["value"] != 0.0  # RL moved the strategy shares (little at k <= 2)
    assert by_step[150]["forward_share"]["evaluation"] > by_step[0]["forward_share"]["evaluation"] + 0.2
    assert set(res["flips"]) == {"delta", "selection", "improvement"}
    for t, f in res["flips"].items():
        assert f.get("step") in (None, 150) and (f.get("step") is not None or f["reason"])
    assert (out / "report.html").exists() and (out / "figures" / "trajectory.png").read_bytes()[:4] == b"\x89PNG"
    # a rerun reuses every finished stage of every snapshot
    assert main(["--start", str(SFT), "--snapshots", str(snaps), "--out", str(out), "--config", str(cfg),
                 "--n-boot", "100"]) == 0
    err = capsys.readouterr().err  # the stages print "done in" only when they run
    assert not re.search(r"\[\d/5 \w+\] done in", err) and err.count("up to date") == 10  # 2 snapshots x 5 stages
    # the start is measured once for all snapshots (its behaviour rows come from the trajectory's cache)
    assert len(list((out / "behaviour-cache").glob("*.jsonl"))) == 2  # the start (= step 0, same weights), step 150


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--start", str(tmp_path / "nope"), "--snapshots", str(tmp_path)])
    assert e.value.code == 2 and "no such checkpoint directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--start", str(SFT), "--snapshots", str(tmp_path)])
    assert "no step-numbered snapshot folders" in capsys.readouterr().err


def test_run_trajectory_records_a_snapshot_that_cannot_be_loaded(tmp_path):
    bad = tmp_path / "step-3"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    res = run_trajectory(str(SFT), [(3, bad)], tmp_path / "out", log=lambda m: None)
    assert res["steps"][0]["step"] == 3 and "config.json" in res["steps"][0]["skipped"]
    assert res["flips"] == {} and (tmp_path / "out" / "trajectory.json").exists()
