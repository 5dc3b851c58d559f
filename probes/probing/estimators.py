"""Linear probes as scikit-learn estimators.

- :class:`LogisticProbe`: L2 logistic regression whose strength ``C`` is chosen by grouped
  cross-validation on the training rows (Hewitt and Liang 2019, arXiv 1909.03368, use such
  probes with controls). Binary targets use the batched solver of
  :mod:`probes.probing.batched_logistic`; multiclass targets use sklearn's
  :class:`~sklearn.linear_model.LogisticRegressionCV` (multinomial) on the same folds and grid.
- :class:`DiffMeansProbe`: the difference of the class means as the direction ("mass-mean"
  probe, Marks and Tegmark 2023, arXiv 2310.06824), with a 1-D logistic calibration of the
  projection for probabilities.
- :class:`RidgeProbe`: ridge regression for continuous targets (the model's propensity
  ``log P(F) / P(B)``), its strength chosen by grouped cross-validation.

All follow sklearn's conventions: hyper-parameters in ``__init__``, learned state ending in
``_``, ``fit(X, y, groups=None)`` (``groups``, e.g. chain ids, drive the inner folds; rows are
their own groups when None), ``predict`` / ``predict_proba`` / ``decision_function`` /
``score``. A target with one class raises :class:`SingleClassError` (callers record the reason
and skip; see :mod:`probes.probing.sweep`).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge
from sklearn.metrics import r2_score
from sklearn.utils.validation import check_is_fitted, validate_data

from probes.probing.batched_logistic import fit_logistic_cv
from probes.probing.config import DEFAULT_ALPHAS, DEFAULT_CS
from probes.probing.splits import inner_folds



class SingleClassError(ValueError):
    """The target has a single class on the rows given: there is nothing to probe."""


def _check_two_classes(y: np.ndarray) -> np.ndarray:
    classes = np.unique(y)
    if len(classes) < 2:
        raise SingleClassError(f"the target has a single class ({classes.tolist()}); nothing to probe")
    return classes


class LogisticProbe(ClassifierMixin, BaseEstimator):
    """L2 logistic-regression probe with balanced class weights; ``C`` chosen by grouped
    cross-validated balanced accuracy (the metric the reports headline; under a 98/2 strategy
    split plain accuracy would choose a probe that never predicts the minority).

    Parameters:
        Cs: grid of inverse regularisation strengths (larger = weaker penalty).
        n_splits: inner folds (lowered when there are too few groups).
        tol: gradient tolerance of the solver (sklearn's meaning).
        max_iter: solver iterations per fit at most.
        solver: ``"batched"`` (binary targets through :func:`fit_logistic_cv`; multiclass falls
            back to sklearn) or ``"sklearn"`` (always :class:`LogisticRegressionCV`).
        random_state: seed of the stratified group folds.

    Attributes:
        classes_: ``[n_classes]`` class labels.
        coef_: ``[1, d]`` (binary) or ``[n_classes, d]`` weights; ``intercept_`` likewise.
        C_: the chosen C.
        cv_scores_: ``[n_Cs, n_folds]`` validation balanced accuracy per C and fold.
        direction_: ``[d]`` unit vector of the binary probe (towards ``classes_[1]``).

    Raises (``fit``):
        SingleClassError: one class in ``y``.
        ValueError: too few groups for the folds.
    """

    def __init__(self, Cs=DEFAULT_CS, n_splits: int = 5, tol: float = 1e-4, max_iter: int = 1000,
                 solver: str = "batched", random_state: int = 0):
        self.Cs = Cs
        self.n_splits = n_splits
        self.tol = tol
        self.max_iter = max_iter
        self.solver = solver
        self.random_state = random_state

    def fit(self, X, y, groups=None):
        """Fit on ``X`` ``[n, d]`` and labels ``y`` ``[n]``; ``groups`` ``[n]`` for the folds."""
        if self.solver not in ("batched", "sklearn"):
            raise ValueError(f"unknown solver {self.solver!r}: use 'batched' or 'sklearn'")
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        self.classes_ = _check_two_classes(y)
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        folds = inner_folds(y, groups, self.n_splits, seed=self.random_state)
        Cs = np.asarray(self.Cs, dtype=np.float64)
        if len(self.classes_) == 2 and self.solver == "batched":
            y01 = (y == self.classes_[1]).astype(np.int64)
            cv = fit_logistic_cv(X[None].astype(np.float32), y01, folds, Cs, tol=self.tol,
                                 max_iter=self.max_iter)
            self.coef_ = cv.coef.astype(np.float64)
            self.intercept_ = cv.intercept.astype(np.float64)
            self.C_ = float(cv.C[0])
            self.cv_scores_ = cv.cv_scores[0]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                m = LogisticRegressionCV(Cs=Cs, cv=folds, l1_ratios=(0.0,), scoring="balanced_accuracy",
                                         class_weight="balanced", tol=self.tol, max_iter=self.max_iter,
                                         use_legacy_attributes=False).fit(X, y)
            self.coef_, self.intercept_ = m.coef_, m.intercept_
            self.C_ = float(m.C_)
            self.cv_scores_ = np.asarray(m.scores_).reshape(len(folds), -1).T
        return self

    def decision_function(self, X):
        """``[n]`` logits of ``classes_[1]`` (binary) or ``[n, n_classes]`` scores."""
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        s = X @ self.coef_.T + self.intercept_
        return s[:, 0] if s.shape[1] == 1 else s

    def predict_proba(self, X):
        """``[n, n_classes]`` class probabilities."""
        s = self.decision_function(X)
        if s.ndim == 1:
            p1 = 1.0 / (1.0 + np.exp(-s))
            return np.stack([1 - p1, p1], 1)
        s = s - s.max(1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(1, keepdims=True)

    def predict(self, X):
        """``[n]`` predicted classes."""
        s = self.decision_function(X)
        idx = (s > 0).astype(int) if s.ndim == 1 else s.argmax(1)
        return self.classes_[idx]

    @property
    def direction_(self) -> np.ndarray:
        check_is_fitted(self, "coef_")
        if self.coef_.shape[0] != 1:
            raise AttributeError("direction_ exists for binary probes only")
        w = self.coef_[0]
        return w / max(np.linalg.norm(w), 1e-30)


class DiffMeansProbe(ClassifierMixin, BaseEstimator):
    """Difference-of-means ("mass-mean") probe for a binary target (Marks and Tegmark 2023,
    arXiv 2310.06824).

    The direction is ``mu_1 - mu_0`` (class means of ``classes_[1]`` and ``classes_[0]``); the
    score of a row is its projection ``(x - (mu_0 + mu_1) / 2) . (mu_1 - mu_0)``, and a 1-D
    logistic regression on the training scores (nearly unpenalised) turns it into probabilities
    and sets the threshold (so class imbalance moves the threshold, not the direction).

    Parameters:
        calibrate: fit the 1-D calibration (else threshold 0 at the midpoint, probabilities
            ``sigmoid(score)``).

    Attributes:
        classes_: ``[2]``; means_: ``[2, d]``; difference_: ``[d]`` ``mu_1 - mu_0`` (the raw
        vector, in activation units, used for steering); direction_: ``[d]`` its unit vector;
        coef_: ``[1, d]`` and intercept_: ``[1]`` of the calibrated linear score.

    Raises (``fit``):
        SingleClassError: one class. ValueError: more than two classes.
    """

    def __init__(self, calibrate: bool = True):
        self.calibrate = calibrate

    def fit(self, X, y, groups=None):
        """Fit on ``X`` ``[n, d]`` and binary ``y`` ``[n]`` (``groups`` is accepted and unused)."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        self.classes_ = _check_two_classes(y)
        if len(self.classes_) > 2:
            raise ValueError(f"DiffMeansProbe is binary; got {len(self.classes_)} classes")
        X = X.astype(np.float64)
        self.means_ = np.stack([X[y == c].mean(0) for c in self.classes_])
        self.difference_ = self.means_[1] - self.means_[0]
        mid = self.means_.mean(0)
        raw = (X - mid) @ self.difference_
        a, b = 1.0, 0.0
        if self.calibrate:
            scale = max(raw.std(), 1e-30)
            lr = LogisticRegression(C=1e6, max_iter=1000).fit((raw / scale)[:, None], y == self.classes_[1])
            a, b = float(lr.coef_[0, 0]) / scale, float(lr.intercept_[0])
        self.coef_ = (a * self.difference_)[None, :]
        self.intercept_ = np.array([b - a * float(mid @ self.difference_)])
        return self

    @property
    def direction_(self) -> np.ndarray:
        check_is_fitted(self, "difference_")
        return self.difference_ / max(np.linalg.norm(self.difference_), 1e-30)

    def decision_function(self, X):
        """``[n]`` calibrated logits of ``classes_[1]``."""
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return X @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, X):
        """``[n, 2]`` class probabilities."""
        p1 = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.stack([1 - p1, p1], 1)

    def predict(self, X):
        """``[n]`` predicted classes."""
        s = self.decision_function(X)
        return self.classes_[(s > 0).astype(int)]


class RidgeProbe(RegressorMixin, BaseEstimator):
    """Ridge-regression probe for a continuous target; ``alpha`` chosen by grouped CV (R^2).

    Used for the model's propensity ``log P(F)/P(B)`` at the first response token (nats), the
    linear read-out of the logit difference.

    Parameters:
        alphas: grid of L2 strengths. n_splits: inner folds (``GroupKFold``).
        random_state: unused (the folds are deterministic), kept for symmetry.

    Attributes:
        coef_: ``[d]``; intercept_: float; alpha_: the chosen alpha; cv_scores_: ``[n_alphas]``
        mean validation R^2.

    Raises (``fit``):
        ValueError: a constant target, or too few groups.
    """

    def __init__(self, alphas=DEFAULT_ALPHAS, n_splits: int = 5, random_state: int = 0):
        self.alphas = alphas
        self.n_splits = n_splits
        self.random_state = random_state

    def fit(self, X, y, groups=None):
        """Fit on ``X`` ``[n, d]`` and ``y`` ``[n]`` (float); ``groups`` ``[n]`` for the folds.

        Every alpha of a fold comes from one SVD of the fold's centred training rows (the ridge
        solution is ``V diag(s / (s^2 + alpha)) U^T y``, as sklearn's ``Ridge(solver="svd")``);
        the refit at the chosen alpha is sklearn's ``Ridge``.
        """
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=True)
        if np.ptp(y) == 0:
            raise SingleClassError("the target is constant; nothing to probe")
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        folds = inner_folds(None, groups, self.n_splits, stratify=False)
        alphas = np.asarray(self.alphas, dtype=np.float64)
        scores = np.zeros((len(alphas), len(folds)))
        X64, y64 = X.astype(np.float64), y.astype(np.float64)
        for f, (tr, va) in enumerate(folds):
            xm, ym = X64[tr].mean(0), y64[tr].mean()
            U, s, Vt = np.linalg.svd(X64[tr] - xm, full_matrices=False)
            uty = U.T @ (y64[tr] - ym)
            for a, alpha in enumerate(alphas):
                coef = Vt.T @ (s / (s**2 + alpha) * uty)
                pred = (X64[va] - xm) @ coef + ym
                scores[a, f] = r2_score(y64[va], pred) if len(va) > 1 else np.nan
        self.cv_scores_ = np.nanmean(scores, axis=1)
        self.alpha_ = float(alphas[int(np.nanargmax(self.cv_scores_))])
        best = Ridge(alpha=self.alpha_).fit(X64, y64)
        self.coef_ = np.asarray(best.coef_, dtype=np.float64)
        self.intercept_ = float(best.intercept_)
        return self

    def predict(self, X):
        """``[n]`` predicted target values."""
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return X @ self.coef_ + self.intercept_
