"""The one bootstrap (probes.bootstrap): its draws, its percentile interval, and that the
behaviour, patching and probing intervals all come from the same draws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from probes.behaviour.decompose import decompose, summarize
from probes.bootstrap import mean_ci, percentile_ci, resample_counts
from probes.patching.recovery import recovery
from probes.probing.metrics import classification_scores

pytestmark = pytest.mark.unit


def test_counts_are_the_integers_draw_of_index_resampling():
    # replicate b is values[idx[b]] for idx = default_rng(seed).integers(0, n, (n_boot, n))
    n, n_boot, seed = 9, 40, 7
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    expected = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)
    assert np.array_equal(resample_counts(n, n_boot=n_boot, seed=seed), expected)


def test_cluster_bootstrap_draws_the_rows_of_a_problem_together():
    groups = ["a", "a", "b", "b", "c", "c"]
    w = resample_counts(6, n_boot=300, seed=0, groups=groups)
    assert np.array_equal(w[:, 0], w[:, 1]) and np.array_equal(w[:, 4], w[:, 5])
    assert np.all(w.sum(1) == 6) and not np.array_equal(w[:, 0], w[:, 2])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="n >= 1"):
        resample_counts(0)
    with pytest.raises(ValueError, match="n_boot >= 1"):
        resample_counts(3, n_boot=0)
    with pytest.raises(ValueError, match="2 group labels for 3 rows"):
        resample_counts(3, groups=["a", "b"])
    with pytest.raises(ValueError, match="no values"):
        mean_ci(np.array([]))


def test_mean_ci_of_a_constant_is_that_constant():
    out = mean_ci(np.full(7, 0.25), n_boot=100)
    assert out["mean"] == 0.25 and out["ci"] == (0.25, 0.25) and out["n"] == 7


def test_mean_ci_covers_the_mean_and_shrinks_with_n():
    r = np.random.default_rng(0)
    small, big = r.normal(1, 1, 50), r.normal(1, 1, 5000)
    lo, hi = mean_ci(small)["ci"]
    assert lo < small.mean() < hi
    blo, bhi = mean_ci(big)["ci"]
    assert bhi - blo < (hi - lo) / 5


def test_a_nan_value_makes_the_mean_and_its_interval_nan():
    out = mean_ci(np.array([0.1, math.nan, 0.3]), n_boot=50)
    assert math.isnan(out["mean"]) and all(math.isnan(x) for x in out["ci"])


def test_percentile_ci_drops_undefined_replicates_and_is_none_without_any():
    assert percentile_ci(np.array([np.nan, 1.0, 3.0, np.inf]), level=1.0) == (1.0, 3.0)
    assert percentile_ci(np.array([np.nan, np.inf])) is None


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_behaviour_patching_and_probing_intervals_use_the_same_draws(seed):
    # behaviour: the decomposition's delta CI; patching: the recovery CI with recipient 0 and
    # donor 1 (each replicate's recovery is then the replicate mean of the patched values) and
    # the signed-gap CI; probing: the accuracy CI of 0/1 correctness. Same seed, same values,
    # same draws: the same interval (the patching ratio to float rounding).
    r = np.random.default_rng(seed)
    pi0, a0, pi1, a1 = r.dirichlet([1, 1], 60), r.random((60, 2)), r.dirichlet([1, 1], 60), r.random((60, 2))
    dec = decompose(pi0, a0, pi1, a1)
    behaviour = summarize(dec, n_boot=500, seed=seed)["delta_ci"]
    zeros, ones = np.zeros(60), np.ones(60)
    patching = recovery(dec.delta, zeros, ones, n_boot=500, seed=seed)
    assert patching.ci == pytest.approx(tuple(behaviour), abs=1e-12)
    assert recovery(zeros, zeros, dec.delta, n_boot=500, seed=seed).gap_signed_ci == tuple(behaviour)

    correct = (r.random(60) < 0.7).astype(int)
    probing = classification_scores(correct, np.ones(60, int), n_boot=500, seed=seed)["accuracy"]["ci"]
    assert probing == mean_ci(correct, n_boot=500, seed=seed)["ci"]
    assert summarize(decompose(np.ones((60, 1)), correct[:, None], np.zeros((60, 1)), np.zeros((60, 1))),
                     n_boot=500, seed=seed)["delta_ci"] == pytest.approx([-probing[1], -probing[0]], abs=1e-12)
