"""Probes as scikit-learn estimators: conventions, and the answers they must give."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from probes.probing.estimators import DiffMeansProbe, LogisticProbe, RidgeProbe, SingleClassError
from probes.probing.synthetic import planted_activations


@pytest.fixture(scope="module")
def planted():
    return planted_activations(600, 1, 10, [1.5], seed=3, n_outliers=1)


def test_estimators_follow_sklearn_conventions(planted):
    X, y = planted.X[0], planted.y
    for est in (LogisticProbe(Cs=(0.01, 1.0), n_splits=3), DiffMeansProbe(), RidgeProbe(alphas=(1.0, 10.0), n_splits=3)):
        params = est.get_params()
        assert clone(est).get_params() == params  # hyper-parameters live in __init__
        with pytest.raises(NotFittedError):
            est.predict(X)
        yy = y.astype(float) if isinstance(est, RidgeProbe) else y
        assert est.fit(X, yy, groups=planted.groups) is est
        learned = [k for k in vars(est) if k.endswith("_") and not k.startswith("_")]
        assert "coef_" in learned and not set(learned) & set(params)
        assert est.predict(X).shape == (len(y),)


def test_logistic_probe_reads_a_planted_label_and_gives_probabilities(planted):
    X, y = planted.X[0], planted.y
    tr, te = np.arange(450), np.arange(450, 600)
    p = LogisticProbe(Cs=(1e-3, 1e-2, 1e-1, 1.0), n_splits=3).fit(X[tr], y[tr], groups=planted.groups[tr])
    assert p.score(X[te], y[te]) > 0.85  # Bayes accuracy Phi(1.5) = 0.93
    proba = p.predict_proba(X[te])
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-9)
    assert np.array_equal(p.predict(X[te]), p.classes_[(proba[:, 1] > 0.5).astype(int)])
    assert np.dot(p.direction_, planted.weights[0]) > 0.8  # the Bayes-optimal direction
    assert p.C_ in p.Cs and p.cv_scores_.shape == (4, 3)


def test_batched_and_sklearn_solvers_give_the_same_probe(planted):
    X, y, g = planted.X[0], planted.y, planted.groups
    a = LogisticProbe(Cs=(0.01, 0.1), n_splits=3, tol=1e-6).fit(X, y, groups=g)
    b = LogisticProbe(Cs=(0.01, 0.1), n_splits=3, tol=1e-6, solver="sklearn").fit(X, y, groups=g)
    assert a.C_ == b.C_
    assert np.mean(a.predict(X) == b.predict(X)) > 0.99
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=0.02, atol=1e-3)


def test_logistic_probe_handles_string_classes_and_multiclass():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (3, 5))
    y = rng.integers(0, 3, 300)
    X = centers[y] + rng.normal(0, 1, (300, 5))
    names = np.array(["a", "b", "c"])[y]
    p = LogisticProbe(Cs=(0.1, 1.0), n_splits=3).fit(X, names)
    assert list(p.classes_) == ["a", "b", "c"] and p.coef_.shape == (3, 5)
    assert p.score(X, names) > 0.9
    with pytest.raises(AttributeError, match="binary"):
        p.direction_


def test_a_single_class_target_raises_single_class_error():
    X = np.random.default_rng(0).normal(size=(20, 3))
    for est in (LogisticProbe(), DiffMeansProbe()):
        with pytest.raises(SingleClassError, match="single class"):
            est.fit(X, np.ones(20, dtype=int))
    with pytest.raises(SingleClassError, match="constant"):
        RidgeProbe().fit(X, np.ones(20))


def test_difference_of_means_direction_is_the_class_mean_difference(planted):
    X, y = planted.X[0].astype(np.float64), planted.y
    dm = DiffMeansProbe().fit(X, y)
    np.testing.assert_allclose(dm.difference_, X[y == 1].mean(0) - X[y == 0].mean(0), rtol=1e-10)
    assert np.isclose(np.linalg.norm(dm.direction_), 1.0)
    assert dm.score(X, y) > 0.6  # above chance, below logistic: the noise is anisotropic
    assert np.dot(dm.direction_, planted.directions[0]) > 0.9  # the planted mean shift
    with pytest.raises(ValueError, match="binary"):
        DiffMeansProbe().fit(X, np.arange(len(y)) % 3)


def test_ridge_probe_recovers_a_linear_target_and_scores_r2():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 8))
    w = rng.normal(size=8)
    y = X @ w + 0.1 * rng.normal(size=300)
    r = RidgeProbe(alphas=(1e-3, 1.0, 1e3), n_splits=3).fit(X, y)
    assert r.alpha_ < 1e3
    assert r.score(X, y) > 0.99
    np.testing.assert_allclose(r.coef_, w, atol=0.05)
    noise = RidgeProbe(alphas=(1e-3, 1.0, 1e3), n_splits=3).fit(X, rng.normal(size=300))
    assert noise.cv_scores_.max() < 0.05  # nothing to read: CV R^2 near or below 0
