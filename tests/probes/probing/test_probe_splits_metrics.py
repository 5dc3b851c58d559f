"""Grouped splits never leak a chain; bootstrap metrics equal sklearn's weighted metrics."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import balanced_accuracy_score, r2_score, roc_auc_score

from probes.probing.metrics import (
    _weighted_auroc,
    _weighted_balanced_accuracy,
    _weighted_r2,
    classification_scores,
    paired_difference,
)
from probes.bootstrap import resample_counts
from probes.probing.splits import LeakError, chain_of, check_disjoint, inner_folds, outer_split

pytestmark = pytest.mark.unit


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=8, max_size=80), st.integers(0, 10_000))
def test_outer_split_and_inner_folds_never_put_a_group_on_both_sides(groups, seed):
    groups = np.array(groups)
    if len(np.unique(groups)) < 2:
        with pytest.raises(ValueError):
            outer_split(groups, seed=seed)
        return
    train, test = outer_split(groups, test_size=0.3, seed=seed)
    assert not set(groups[train]) & set(groups[test])
    assert len(train) + len(test) == len(groups)
    if len(np.unique(groups)) >= 2:
        y = np.arange(len(groups)) % 2
        try:
            folds = inner_folds(y, groups, n_splits=4, seed=seed)
        except ValueError:
            return  # a class in fewer than 2 groups: refused, not leaked
        for tr, va in folds:
            assert not set(groups[tr]) & set(groups[va])


def test_a_problem_and_its_twin_always_land_on_the_same_side(make_twins):
    problems = make_twins(60, seed=4)
    groups = np.array([chain_of(p.id) for p in problems])
    assert all(chain_of(p.id) == p.chain_id == chain_of(p.twin().id) for p in problems)
    train, test = outer_split(groups, test_size=0.25, seed=1)
    test_ids = {problems[i].id for i in test}
    for i in train:
        assert problems[i].twin().id not in test_ids


def test_check_disjoint_raises_on_a_shared_group():
    with pytest.raises(LeakError, match="both sides"):
        check_disjoint(np.array([0, 1]), np.array([2]), np.array(["a", "b", "a"]))


def test_chain_of_rejects_what_is_not_a_problem_id():
    assert chain_of("p13-inv-k3-543c612e7b") == "543c612e7b"
    with pytest.raises(ValueError, match="not a task problem id"):
        chain_of("hello")


def test_weighted_bootstrap_metrics_equal_sklearn_with_sample_weights():
    rng = np.random.default_rng(0)
    n = 200
    y = rng.integers(0, 2, n)
    score = y + rng.normal(0, 1.2, n)
    score[:20] = np.round(score[:20])  # ties
    pred = (score > 0.5).astype(int)
    W = resample_counts(n, n_boot=5, seed=1, groups=np.arange(n) // 2)
    for w in W:
        assert _weighted_auroc(w[None], y, score)[0] == pytest.approx(roc_auc_score(y, score, sample_weight=w))
        assert _weighted_balanced_accuracy(w[None], y, (pred == y).astype(float))[0] == pytest.approx(
            balanced_accuracy_score(y, pred, sample_weight=w))
        assert _weighted_r2(w[None], y.astype(float), score)[0] == pytest.approx(r2_score(y, score, sample_weight=w))


def test_group_bootstrap_gives_every_row_of_a_group_the_same_weight():
    groups = np.array([0, 0, 1, 1, 2, 2, 3])
    W = resample_counts(len(groups), n_boot=50, seed=0, groups=groups)
    assert np.all(W[:, 0] == W[:, 1]) and np.all(W[:, 2] == W[:, 3])
    assert np.all(W.reshape(50, -1)[:, [0, 2, 4, 6]].sum(1) == 4)  # 4 groups drawn per replicate


def test_classification_scores_ci_brackets_the_value_and_one_class_metrics_carry_a_reason():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    pred = np.where(rng.random(300) < 0.8, y, 1 - y)
    s = classification_scores(y, pred, pred + rng.normal(0, 0.1, 300), np.arange(300) // 3, n_boot=300)
    for m in ("accuracy", "balanced_accuracy", "auroc"):
        lo, hi = s[m]["ci"]
        assert lo <= s[m]["value"] <= hi and hi - lo < 0.2
    assert s["accuracy"]["value"] == pytest.approx(np.mean(pred == y))
    one = classification_scores(np.ones(10, int), np.ones(10, int), np.zeros(10))
    assert one["accuracy"]["value"] == 1.0
    assert one["balanced_accuracy"]["value"] is None and "one class" in one["auroc"]["reason"]


def test_paired_difference_of_a_score_with_itself_is_exactly_zero():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 100)
    a = classification_scores(y, y, None, n_boot=100, return_draws=True)
    d = paired_difference(a, a, "accuracy")
    assert d["value"] == 0 and d["ci"] == (0.0, 0.0)
