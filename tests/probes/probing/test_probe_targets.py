"""Targets from behaviour rows, the control task and the shuffled null."""

import json

import numpy as np
import pytest

from probes.probing.targets import (
    LabelsError,
    build_target,
    control_labels,
    labels_from_rows,
    load_labels,
    shuffled_labels,
    step_values,
    surface_identity,
)
from probes.task.problems import apply_op

pytestmark = pytest.mark.unit


def test_behaviour_rows_give_strategy_type_correct_and_propensity(make_twins, make_behaviour_rows, tmp_path):
    problems = make_twins(20, seed=1, steps=(2, 3))
    strategies = ["forward", "backward", "unparseable", "forward"] * 10
    rows = make_behaviour_rows(problems, strategies)
    path = tmp_path / "b.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    labels = load_labels(path)
    keys = [p.id for p in problems]
    pos = ["prompt_end"] * len(keys)
    s = build_target("strategy", keys, pos, labels)
    assert s.kind == "binary" and s.skipped is None
    assert not s.valid[2] and s.valid[0]  # unparseable responses are left out
    assert s.y[0] == 1 and s.y[1] == 0
    t = build_target("type", keys, pos, labels)
    assert [t.y[i] for i in range(4)] == [int(problems[i].type == "inversion") for i in range(4)]
    prop = build_target("propensity", keys, pos, labels)
    assert prop.kind == "continuous" and prop.y[0] == pytest.approx(rows[0]["logit_diff"])
    c = build_target("correct", keys, pos, labels)
    assert c.y[3] == int(rows[3]["greedy_correct"])


def test_a_forward_only_model_skips_the_strategy_target_with_its_reason(make_twins, make_behaviour_rows):
    problems = make_twins(10, seed=2, steps=(2,))
    labels = labels_from_rows(make_behaviour_rows(problems, ["forward"] * len(problems)))
    t = build_target("strategy", [p.id for p in problems], ["prompt_end"] * len(problems), labels)
    assert t.skipped is not None and "one class" in t.skipped and "forward" in t.skipped
    none = build_target("strategy", ["p11-eval-k1-0000000000"], ["prompt_end"], labels)
    assert none.skipped is not None and "no rows" in none.skipped


def test_rows_whose_id_disagrees_with_the_prompt_are_rejected(make_twins):
    p = make_twins(1)[0]
    with pytest.raises(LabelsError, match="does not match"):
        labels_from_rows([{"id": p.twin().id, "prompt": p.prompt}])
    with pytest.raises(ValueError, match="unknown target"):
        build_target("mood", [p.id], ["prompt_end"], labels_from_rows([{"prompt": p.prompt}]))


def test_step_values_are_the_values_a_value_trace_carries(make_twins):
    for p in make_twins(10, seed=5, steps=(3,)):
        if p.type != "evaluation":
            continue
        v, expected = p.given, []
        for op, c in p.ops:
            v = apply_op(p.F, op, c, v)
            expected.append(v)
        assert step_values(p, "forward") == expected
        assert len(step_values(p, "backward")) == 3 + 2  # map trace: 3 compositions and 2 solve steps


def test_step_value_target_reads_step_rows_only(make_twins):
    p = next(q for q in make_twins(5, seed=6, steps=(2,)) if q.type == "inversion")
    labels = labels_from_rows([{"prompt": p.prompt}])
    t = build_target("step_value", [p.id] * 3, ["prompt_end", "step:0", "step:1"], labels)
    assert t.kind == "multiclass" and list(t.valid) == [False, True, True]
    assert list(t.y[1:]) == step_values(p, "backward")  # the natural strategy of inversion


def test_control_task_is_a_deterministic_function_of_surface_identity_with_the_same_balance(make_twins,
                                                                                             make_behaviour_rows):
    problems = make_twins(150, seed=7, steps=(1, 2, 3))
    rng = np.random.default_rng(0)
    strategies = np.where(rng.random(len(problems)) < 0.3, "forward", "backward")
    labels = labels_from_rows(make_behaviour_rows(problems, strategies))
    keys = [p.id for p in problems]
    target = build_target("strategy", keys, ["prompt_end"] * len(keys), labels)
    ctrl = control_labels(keys, labels, target, seed=0)
    assert ctrl.skipped is None
    ident = np.array([surface_identity(labels[k].problem) for k in keys])
    for s in np.unique(ident):
        assert len(np.unique(ctrl.y[ident == s])) == 1  # one label per surface identity
    assert ctrl.y[0] == ctrl.y[1]  # a problem and its twin share their surface identity
    assert abs(ctrl.y[ctrl.valid].mean() - target.y[target.valid].mean()) < 0.12
    again = control_labels(keys, labels, target, seed=0)
    assert np.array_equal(again.y, ctrl.y)
    assert not np.array_equal(control_labels(keys, labels, target, seed=1).y, ctrl.y)


def test_shuffled_labels_keep_the_class_counts_and_break_the_pairing(make_twins, make_behaviour_rows):
    problems = make_twins(100, seed=8, steps=(2, 3))
    strategies = np.array(["forward", "backward"])[np.arange(len(problems)) % 2]
    labels = labels_from_rows(make_behaviour_rows(problems, strategies))
    keys = [p.id for p in problems]
    t = build_target("strategy", keys, ["prompt_end"] * len(keys), labels)
    sh = shuffled_labels(t, np.arange(len(keys)), seed=0)
    assert np.bincount(sh.y[sh.valid]).tolist() == np.bincount(t.y[t.valid]).tolist()
    assert 0.3 < np.mean(sh.y == t.y) < 0.7
