"""The within-type propensity probes (probes.probing.propensity): the ridge path, the within-type
scores, and the two acceptance cases of issue 18 (a planted signal is found where it is planted
and nowhere earlier; a label that is a function of the type is not informative)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from probes.bootstrap import resample_counts
from probes.probing.propensity import (
    _ridge_predict,
    propensity_map,
    ridge_cv,
    within_type_auroc,
    within_type_r2,
)
from probes.probing.splits import chain_of, inner_folds, outer_split
from probes.task import sample_problems

pytestmark = pytest.mark.unit

POSITIONS = ["word:0", "word:1", "word:-3", "word:-2", "prompt_end"]
LAYERS = [0, 1, 2]


def _setup(n_chains=120, d=24, seed=0):
    problems = [q for p in sample_problems(n_chains, seed=seed, steps=(1, 2, 3)) for q in (p, p.twin())]
    groups = np.array([chain_of(p.id) for p in problems])
    train, test = outer_split(groups, 0.25, seed)
    folds = [(train[a], train[b]) for a, b in inner_folds(None, groups[train], 5, seed=seed)]
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(len(POSITIONS), len(LAYERS), len(problems), d)).astype(np.float32)
    return problems, groups, train, test, folds, X, rng


@pytest.mark.parametrize("m,d", [(40, 12), (12, 40)])
def test_ridge_predict_matches_sklearn_both_forms(m, d):
    # the dual (m <= d) and primal forms give sklearn's Ridge at the same absolute strength
    rng = np.random.default_rng(1)
    X = rng.normal(size=(m, d))
    y = X @ rng.normal(size=d) + rng.normal(size=m)
    Xe = rng.normal(size=(7, d))
    import torch

    Xt = torch.tensor(X[None], dtype=torch.float64)
    Xc = X - X.mean(0)
    scale = np.linalg.eigvalsh(Xc @ Xc.T if m <= d else Xc.T @ Xc).clip(0).mean()
    p = _ridge_predict(Xt, torch.tensor(y), torch.tensor(Xe[None]), [0.1])[0, 0].numpy()
    ref = Ridge(alpha=0.1 * scale).fit(X, y).predict(Xe)
    np.testing.assert_allclose(p, ref, rtol=1e-6, atol=1e-8)


def test_ridge_cv_picks_weak_penalty_for_a_clean_signal_and_strong_for_noise():
    rng = np.random.default_rng(2)
    n, d = 200, 30
    X = rng.normal(size=(2, n, d)).astype(np.float32)
    y = X[0] @ rng.normal(size=d)
    idx = np.arange(n)
    train, test = idx[:150], idx[150:]
    folds = [(train[train % 5 != k], train[train % 5 == k]) for k in range(5)]
    f = ridge_cv(X, y, train, test, folds)
    assert f.alpha[0] < f.alpha[1]  # set 0 carries y exactly; set 1 is noise
    assert np.corrcoef(f.pred[0], y[test])[0, 1] > 0.99
    with pytest.raises(ValueError, match="rows"):
        ridge_cv(X[:, :10], y, train, test, folds)


def test_within_type_r2_ignores_the_type_part():
    types = np.array(["a"] * 50 + ["b"] * 50)
    rng = np.random.default_rng(3)
    within = rng.normal(size=100)
    y = np.where(types == "a", 10.0, -10.0) + within
    W = np.ones((1, 100))
    type_only = np.where(types == "a", 10.0, -10.0)
    assert abs(within_type_r2(W, y, type_only[None], types)[0, 0]) < 0.05  # the type explains nothing within
    assert within_type_r2(W, y, y[None], types)[0, 0] == pytest.approx(1.0)
    # a constant-within-type target has no within-type variance: undefined, not a score
    assert np.isnan(within_type_r2(W, type_only, type_only[None], types)[0, 0])


def test_within_type_auroc_only_compares_pairs_of_one_type():
    # the score separates the types perfectly but orders nothing within them
    types = np.array(["a"] * 4 + ["b"] * 4)
    lab = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    score = np.array([5, 5, 5, 5, -5, -5, -5, -5.0])
    assert within_type_auroc(np.ones((1, 8)), lab, score, types)[0] == pytest.approx(0.5)
    score2 = np.array([2, 1, 2, 1, -1, -2, -1, -2.0])
    assert within_type_auroc(np.ones((1, 8)), lab, score2, types)[0] == pytest.approx(1.0)


def test_planted_signal_is_found_at_its_cell_and_nowhere_earlier():
    problems, groups, train, test, folds, X, rng = _setup()
    types = np.array([p.type for p in problems])
    signal = rng.normal(size=len(problems))
    y = np.where(types == "evaluation", 2.0, -3.0) + signal
    p_star, l_star = POSITIONS.index("word:-3"), 1
    X[p_star, l_star, :, 0] += 3.0 * signal  # the within-type propensity, linearly, at one cell
    X[:, :, :, 1] += np.where(types == "evaluation", 4.0, -4.0)  # the type, everywhere (a format feature)
    res = propensity_map(X, POSITIONS, LAYERS, problems, y, groups, train, test, folds, headline_position="word:-3",
                         n_boot=200, seed=0)
    assert res["status"] == "ok"
    assert res["earliest"] == {"position": "word:-3", "position_name": "word:-3", "layer": 1}
    dec = np.array(res["map"]["decodable"])
    assert dec[p_star, l_star]
    assert not dec[:p_star].any() and not dec[p_star, :l_star].any()
    assert res["map"]["r2"][p_star][l_star] > 0.8
    assert res["headline"]["informative"] and res["headline"]["layer"] == 1
    assert res["headline"]["statement"].startswith("informative")


def test_a_label_of_the_type_alone_is_not_informative():
    problems, groups, train, test, folds, X, rng = _setup(seed=4)
    types = np.array([p.type for p in problems])
    X[:, :, :, 0] += np.where(types == "evaluation", 4.0, -4.0)[None, None]  # every cell reads the type
    y = np.where(types == "evaluation", 1.5, -2.5)
    res = propensity_map(X, POSITIONS, LAYERS, problems, y, groups, train, test, folds, n_boot=200)
    assert res["status"] == "skipped" and res["headline"]["informative"] is False
    assert "function of the type alone" in res["reason"]
    assert res["headline"]["statement"].startswith("not informative")
    # a within-type part that no activation carries: still not informative (the CI is not above 0)
    y2 = y + rng.normal(size=len(problems))
    res2 = propensity_map(X, POSITIONS, LAYERS, problems, y2, groups, train, test, folds, n_boot=200)
    assert res2["status"] == "ok"
    assert res2["headline"]["informative"] is False
    assert res2["headline"]["statement"].startswith("not informative")
    assert res2["earliest"] is None


def test_a_surface_explained_propensity_is_not_credited_to_the_probe():
    # the within-type propensity is the chain length; the activations carry it as well. The probe
    # matches the chain-length baseline, it does not beat it: not informative.
    problems, groups, train, test, folds, X, rng = _setup(seed=5)
    steps = np.array([p.steps for p in problems], dtype=float)
    y = steps + 0.01 * rng.normal(size=len(problems))
    X[:, :, :, 0] += steps[None, None]
    res = propensity_map(X, POSITIONS, LAYERS, problems, y, groups, train, test, folds, n_boot=200)
    assert res["baselines"]["type x chain length"]["r2"]["value"] > 0.95
    assert res["headline"]["informative"] is False


def test_samples_auroc_has_the_ceiling_and_bootstrap_weights_follow_chains():
    problems, groups, train, test, folds, X, rng = _setup(seed=6)
    types = np.array([p.type for p in problems])
    signal = rng.normal(size=len(problems)) * 2
    y = np.where(types == "evaluation", 0.5, -0.5) + signal
    X[-1, -1, :, 0] += signal
    p = 1 / (1 + np.exp(-y))
    samples = [["forward" if rng.random() < q else "backward" for _ in range(4)] for q in p]
    res = propensity_map(X, POSITIONS, LAYERS, problems, y, groups, train, test, folds, samples=samples, n_boot=200)
    a = res["samples"]["auroc"]
    assert a["ceiling"]["value"] > 0.7
    assert abs(a["probe"]["value"] - a["ceiling"]["value"]) < 0.08
    W = resample_counts(test.size, n_boot=5, seed=0, groups=groups[test])
    for g in np.unique(groups[test]):  # a chain's rows share their multiplicity
        assert (W[:, groups[test] == g] == W[:, groups[test] == g][:, :1]).all()


def test_bad_shapes_are_refused():
    problems, groups, train, test, folds, X, _ = _setup(n_chains=20)
    y = np.zeros(len(problems))
    with pytest.raises(ValueError, match="does not match"):
        propensity_map(X[:, :, :-1], POSITIONS, LAYERS, problems, y, groups, train, test, folds)
    with pytest.raises(ValueError, match="headline position"):
        propensity_map(X, POSITIONS, LAYERS, problems, y, groups, train, test, folds, headline_position="nowhere")
