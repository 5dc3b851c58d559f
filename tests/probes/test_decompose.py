"""The selection / improvement decomposition on constructed inputs with known answers."""

import numpy as np
import pytest

from probes.behaviour.decompose import decompose, summarize

pytestmark = pytest.mark.unit


def _rand(n=40, s=2, seed=0):
    r = np.random.default_rng(seed)
    return r.dirichlet(np.ones(s), n), r.random((n, s)), r.dirichlet(np.ones(s), n), r.random((n, s))


def test_shapley_terms_add_up_to_delta_exactly():
    p0, a0, p1, a1 = _rand()
    d = decompose(p0, a0, p1, a1)
    np.testing.assert_allclose(d.selection + d.improvement, d.delta, rtol=0, atol=1e-15)
    for side in (d.at_reference, d.at_model):
        np.testing.assert_allclose(side["selection"] + side["improvement"] + side["interaction"], d.delta, rtol=0, atol=1e-15)


def test_shapley_split_is_the_mean_of_the_two_orderings():
    p0, a0, p1, a1 = _rand(seed=1)
    d = decompose(p0, a0, p1, a1)
    np.testing.assert_allclose(d.selection, (d.at_reference["selection"] + d.at_model["selection"]) / 2, atol=1e-15)


def test_swapping_models_negates_every_term_exactly():
    p0, a0, p1, a1 = _rand(seed=2)
    d, r = decompose(p0, a0, p1, a1), decompose(p1, a1, p0, a0)
    assert np.array_equal(r.delta, -d.delta)
    assert np.array_equal(r.selection, -d.selection)
    assert np.array_equal(r.improvement, -d.improvement)


def test_pure_selection_has_no_improvement():
    # same accuracies, the policy moves to the better strategy
    a = np.array([[0.9, 0.3]])
    d = decompose(np.array([[0.5, 0.5]]), a, np.array([[1.0, 0.0]]), a)
    assert d.improvement[0] == 0 and d.selection[0] == pytest.approx(0.3)
    assert d.delta[0] == pytest.approx(0.3)


def test_pure_improvement_has_no_selection():
    p = np.array([[1.0, 0.0]])
    d = decompose(p, np.array([[0.6, 0.2]]), p, np.array([[0.8, 0.1]]))
    assert d.selection[0] == 0 and d.improvement[0] == pytest.approx(0.2)


def test_mass_off_both_strategies_scores_zero():
    d = decompose(np.array([[0.25, 0.25]]), np.ones((1, 2)), np.array([[0.5, 0.5]]), np.ones((1, 2)))
    assert d.delta[0] == pytest.approx(0.5) and d.selection[0] == pytest.approx(0.5)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="same"):
        decompose(np.ones((3, 2)), np.ones((3, 2)), np.ones((2, 2)), np.ones((3, 2)))


def test_summarize_ci_covers_the_mean_and_shrinks_with_n():
    small, big = summarize(decompose(*_rand(n=50, seed=4))), summarize(decompose(*_rand(n=5000, seed=4)))
    for t in ("delta", "selection", "improvement", "at_reference.interaction"):
        node, key = (small, t) if "." not in t else (small[t.split(".")[0]], t.split(".")[1])
        lo, hi = node[key + "_ci"]
        assert lo < node[key] < hi
    (lo, hi), (blo, bhi) = small["delta_ci"], big["delta_ci"]
    assert bhi - blo < (hi - lo) / 5


def test_summarize_reports_identical_models_as_zero_with_zero_width_ci():
    p0, a0, _, _ = _rand(seed=3)
    s = summarize(decompose(p0, a0, p0, a0))
    assert s["delta"] == 0 and s["selection_ci"] == [0.0, 0.0] and s["n"] == 40
