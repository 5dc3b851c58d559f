"""Bring your own task (issue 22): the pipeline runs a task it only knows through probes.tasks.

``python -m probes.run --quick --task probes.tasks.addition:AdditionTask`` on random tiny
checkpoints of that task's vocabulary runs every stage and prints a verdict; a task that lacks an
optional member turns off what needs it and says so; one that lacks a required member is a single
``error:`` line naming it.
"""

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.acceptance

ADDITION = "probes.tasks.addition:AdditionTask"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from probes.synth import make_synth, make_twin

    d = tmp_path_factory.mktemp("addition")
    make_synth("tiny", 1, d / "pre", task=ADDITION)
    make_twin(d / "pre", 2, d / "post", scale=0.5)
    return d


def _run(pair, out, task, extra_path=None):
    env = None
    if extra_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": str(extra_path)}
    return subprocess.run([sys.executable, "-m", "probes.run", "--quick", "--task", task, "--pre-rl", str(pair / "pre"),
                           "--post-rl", str(pair / "post"), "--out", str(out)], capture_output=True, text=True,
                          env=env, timeout=900)


def test_the_addition_task_runs_end_to_end_and_prints_a_verdict(pair, tmp_path):
    r = _run(pair, tmp_path / "run", ADDITION)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("verdict: ") and f"task: multi-digit addition" in r.stdout
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["task"]["spec"] == ADDITION and res["task"]["skipped"] == {}
    problems = [json.loads(x) for x in (tmp_path / "run" / "problems.jsonl").read_text().splitlines()]
    assert problems and all(p["id"].startswith("add-") for p in problems)
    assert set(res["decomposition"]["by_type"]) == {"sum", "missing"}
    assert res["patching"]["problems"]["counterfactual"]  # twins align word by word
    assert res["behaviour"]["forced_accuracy"]["method"] == "exact"
    assert "task: multi-digit addition" in (tmp_path / "run" / "report.md").read_text()


def test_a_task_without_twins_or_canonical_responses_says_what_it_skipped(pair, tmp_path):
    (tmp_path / "mytasks.py").write_text(textwrap.dedent("""
        from probes.tasks.addition import AdditionTask

        class NoTwins(AdditionTask):
            twin = None

        class NoCanonical(AdditionTask):
            canonical_response = None
    """))
    assert _run(pair, tmp_path / "a", ADDITION).returncode == 0  # the same folder held a run with twins first
    assert list((tmp_path / "a" / "patching").glob("counterfactual_*.png"))
    r = _run(pair, tmp_path / "a", "mytasks:NoTwins", extra_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list((tmp_path / "a" / "patching").glob("counterfactual_*.png"))  # no stale figure
    assert "counterfactual_pre" not in (tmp_path / "a" / "report.md").read_text()
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert set(res["task"]["skipped"]) == {"patching: counterfactual"}
    assert "twin" in res["task"]["skipped"]["patching: counterfactual"] and not res["patching"]["counterfactual"]
    assert "skipped: patching: counterfactual" in r.stdout
    r = _run(pair, tmp_path / "b", "mytasks:NoCanonical", extra_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    assert set(res["task"]["skipped"]) == {"exact forced accuracy", "patching"}
    assert res["behaviour"]["forced_accuracy"]["method"] == "sampled"
    assert res["verdict"]["selection_score"] is None
    assert "skipped, patching: the task has no canonical responses" in (tmp_path / "b" / "report.md").read_text()


def test_a_task_missing_a_required_member_is_one_error_line(pair, tmp_path):
    (tmp_path / "badtask.py").write_text(textwrap.dedent("""
        from probes.tasks.addition import AdditionTask

        class NoLabel(AdditionTask):
            label = None
    """))
    r = _run(pair, tmp_path / "run", "badtask:NoLabel", extra_path=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: task badtask:NoLabel has no label"), r.stderr
    (tmp_path / "brokentask.py").write_text(textwrap.dedent("""
        from probes.tasks.addition import AdditionTask

        class NeedsArgs(AdditionTask):
            def __init__(self, x):
                pass

        class NotCallable(AdditionTask):
            verify = 3

        undefined_name
    """))
    for bad, why in (("badtask", "write it as module:Name"), ("nosuchmodule:X", "cannot import nosuchmodule"),
                     ("badtask:Nope", "has no Nope"), ("badtask:", "write it as module:Name"),
                     ("brokentask:NeedsArgs", "cannot import brokentask (NameError")):
        r = _run(pair, tmp_path / "run", bad, extra_path=tmp_path)
        assert r.returncode == 2 and why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    (tmp_path / "brokentask.py").write_text((tmp_path / "brokentask.py").read_text().replace("undefined_name", ""))
    for bad, why in (("brokentask:NeedsArgs", "cannot instantiate NeedsArgs()"),
                     ("brokentask:NotCallable", "has no verify")):
        r = _run(pair, tmp_path / "run", bad, extra_path=tmp_path)
        assert r.returncode == 2 and why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_another_task_needs_its_own_checkpoints(tmp_path):
    r = subprocess.run([sys.executable, "-m", "probes.run", "--quick", "--task", ADDITION, "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "give the checkpoints of your task with --pre-rl and --post-rl" in r.stderr


def test_a_pair_trained_on_another_task_is_refused_before_any_stage(pair, tmp_path):
    """The organism's tokenizer knows neither R nor L (both <unk>): refused, one line."""
    r = subprocess.run([sys.executable, "-m", "probes.run", "--quick", "--task", ADDITION, "--pre-rl",
                        "checkpoints/organism/sft-fb", "--post-rl", "checkpoints/organism/rl-fb-hard", "--out",
                        str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and "were not trained on this task" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x" / "stages").exists()
