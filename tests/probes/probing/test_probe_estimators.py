"""Probes as scikit-learn estimators: conventions, and the answers they must give."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from probes.probing.estimators import DiffMeansProbe, LogisticProbe, RidgeProbe, SingleClassError
from probes.probing.synthetic import planted_activations

pytestmark = pytest.mark.unit


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


def _imbalanced(seed, n=400, d=64, share=0.05, shift=3.0):
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < share).astype(int)
    X = rng.normal(size=(n, d))
    X[y == 1, 0] += shift
    return X, y


def test_a_five_percent_minority_is_probed_as_the_balanced_reference_probes_it():
    """Issue 18: under imbalance C is chosen by balanced accuracy with balanced class weights, as
    sklearn's LogisticRegressionCV(class_weight='balanced', scoring='balanced_accuracy') chooses it.
    The old choice (unweighted rows, C by accuracy) predicts the minority never (0.5)."""
    import warnings

    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import balanced_accuracy_score

    from probes.probing.batched_logistic import fit_logistic_cv
    from probes.probing.config import DEFAULT_CS
    from probes.probing.splits import inner_folds

    ours, ref, old = [], [], []
    for seed in range(10):
        X, y = _imbalanced(seed)
        tr, te = np.arange(300), np.arange(300, 400)
        if y[te].sum() == 0:
            continue
        ours.append(balanced_accuracy_score(y[te], LogisticProbe().fit(X[tr], y[tr]).predict(X[te])))
        folds = inner_folds(y[tr], np.arange(300), 5, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = LogisticRegressionCV(Cs=np.asarray(DEFAULT_CS), cv=folds, l1_ratios=(0.0,), class_weight="balanced",
                                     scoring="balanced_accuracy", max_iter=5000, use_legacy_attributes=False)
            ref.append(balanced_accuracy_score(y[te], m.fit(X[tr], y[tr]).predict(X[te])))
        cv = fit_logistic_cv(X[None, tr].astype(np.float32), y[tr], folds, DEFAULT_CS, class_weight=None,
                             scoring="accuracy")
        old.append(balanced_accuracy_score(y[te], (X[te] @ cv.coef[0] + cv.intercept[0] > 0).astype(int)))
    assert len(ours) >= 8
    assert abs(np.mean(ours) - np.mean(ref)) <= 0.05, (np.mean(ours), np.mean(ref))
    assert np.mean(old) < np.mean(ref) - 0.1  # the test has teeth: the old choice collapses
