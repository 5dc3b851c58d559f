"""The batched solver against sklearn: same objective, same solution, same choice of C."""

import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import GroupKFold

from probes.probing.batched_logistic import fit_logistic_cv
from probes.probing.synthetic import planted_activations

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def planted():
    return planted_activations(400, 3, 12, [0.0, 1.0, 2.0], seed=1, n_outliers=2)


def _folds(data, k=4):
    return list(GroupKFold(k).split(np.zeros(len(data.y)), data.y, data.groups))


CONVENTIONS = [(None, "accuracy"), ("balanced", "balanced_accuracy")]
"""(class_weight, scoring): sklearn's defaults, and the probes' (balanced weights, C by balanced accuracy)."""


@pytest.fixture(scope="module")
def unbalanced():
    """The planted data with three of every four positives dropped (about 20% positives)."""
    data = planted_activations(400, 3, 12, [0.0, 1.0, 2.0], seed=1, n_outliers=2)
    keep = np.flatnonzero((data.y == 0) | (np.arange(len(data.y)) % 4 == 0))
    return type(data)(**{**data.__dict__, "X": data.X[:, keep], "y": data.y[keep], "groups": data.groups[keep]})


@pytest.mark.parametrize("class_weight,scoring", CONVENTIONS)
def test_refit_equals_sklearn_logistic_regression_on_every_layer(unbalanced, class_weight, scoring):
    C = 0.05
    d = unbalanced
    cv = fit_logistic_cv(d.X, d.y, _folds(d), [C], tol=1e-7, max_iter=5000, class_weight=class_weight,
                         scoring=scoring)
    assert cv.converged
    for layer in range(3):
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000, class_weight=class_weight) \
            .fit(d.X[layer].astype(np.float64), d.y)
        np.testing.assert_allclose(cv.coef[layer], ref.coef_[0], rtol=2e-3, atol=2e-4)
        assert cv.intercept[layer] == pytest.approx(ref.intercept_[0], abs=2e-3)


@pytest.mark.parametrize("class_weight,scoring", CONVENTIONS)
def test_choice_of_c_and_fold_scores_match_logistic_regression_cv(unbalanced, class_weight, scoring):
    d = unbalanced
    folds = _folds(d)
    Cs = np.logspace(-3, 1, 5)
    cv = fit_logistic_cv(d.X, d.y, folds, Cs, tol=1e-6, max_iter=5000, class_weight=class_weight, scoring=scoring)
    for layer in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = LogisticRegressionCV(Cs=Cs, cv=folds, l1_ratios=(0.0,), scoring=scoring, class_weight=class_weight,
                                       tol=1e-8, max_iter=10_000, use_legacy_attributes=False).fit(d.X[layer], d.y)
        ref_scores = np.asarray(ref.scores_).reshape(len(folds), len(Cs)).T  # [C, fold]
        # fold scores agree to within one validation row of the smaller class
        n_small = min(np.bincount(d.y[va]).min() for _, va in folds)
        assert np.abs(cv.cv_scores[layer] - ref_scores).max() <= 1.0 / n_small + 1e-9
        if np.ptp(ref_scores.mean(1)) > 0.02:  # a clear optimum: the same C
            assert cv.C[layer] == pytest.approx(float(ref.C_))


def test_shifting_every_feature_by_a_constant_leaves_the_weights_unchanged(planted):
    # the solver centres each fold internally; the intercept is unpenalised, so a shift of the
    # activations must only move the intercept (by -w . shift)
    folds = _folds(planted)
    a = fit_logistic_cv(planted.X, planted.y, folds, [0.1], tol=1e-6, max_iter=5000)
    shift = np.linspace(-50, 50, planted.X.shape[2]).astype(np.float32)
    b = fit_logistic_cv(planted.X + shift, planted.y, folds, [0.1], tol=1e-6, max_iter=5000)
    assert a.converged and b.converged
    np.testing.assert_allclose(b.coef, a.coef, rtol=5e-3, atol=5e-4)
    np.testing.assert_allclose(b.intercept, a.intercept - (a.coef * shift).sum(1), atol=2e-2)


def test_the_planted_layer_gets_the_best_cross_validated_accuracy(planted):
    cv = fit_logistic_cv(planted.X, planted.y, _folds(planted), np.logspace(-3, 1, 5))
    best = cv.cv_scores.mean(2).max(1)
    assert best.argmax() == 2 and best[0] < 0.62 and best[2] > 0.85


def test_a_fold_with_one_class_in_training_is_rejected():
    X = np.random.default_rng(0).standard_normal((1, 20, 3)).astype(np.float32)
    y = np.r_[np.zeros(10), np.ones(10)].astype(int)
    folds = [(np.arange(10), np.arange(10, 20))]  # training rows hold class 0 only
    with pytest.raises(ValueError, match="single class"):
        fit_logistic_cv(X, y, folds, [1.0])


def test_non_binary_labels_on_used_rows_are_rejected():
    X = np.zeros((1, 6, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="binary"):
        fit_logistic_cv(X, [0, 1, 2, 0, 1, 2], [(np.arange(3), np.arange(3, 6))], [1.0])
