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

All follow sklearn's conventions and pass its estimator checks
(``tests/probes/probing/test_estimator_checks.py``): hyper-parameters in ``__init__`` (stored
as given, validated in ``fit``), learned state ending in ``_`` (``n_features_in_`` and, for
named columns, ``feature_names_in_`` included), ``fit(X, y, groups=None)`` returning the
estimator (``groups``, e.g. chain ids, drive the inner folds; rows are their own groups when
None), ``predict`` / ``predict_proba`` / ``decision_function`` / ``score``, and
:class:`~sklearn.exceptions.NotFittedError` from these before ``fit``. ``X`` must be a finite
dense ``[n, d]`` array (anything :func:`~sklearn.utils.check_array` turns into one); labels of
the classifiers may be any hashable values (ints, strings). A target with one class (or a
constant continuous target) raises :class:`SingleClassError` (callers record the reason and
skip; see :mod:`probes.probing.sweep`).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge
from sklearn.metrics import r2_score
from sklearn.utils.multiclass import check_classification_targets, type_of_target
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


def _check_grid(name: str, values, *, allow_zero: bool) -> np.ndarray:
    """``values`` as a ``[k]`` float64 array; ValueError unless a non-empty 1-D sequence of finite
    numbers that are positive (or, with ``allow_zero``, non-negative)."""
    try:
        grid = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}") from e
    bad = grid < 0 if allow_zero else grid <= 0
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(bad):
        sign = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a non-empty 1-D sequence of finite {sign} numbers, got {values!r}")
    return grid


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_groups(groups, n: int) -> np.ndarray:
    """``[n]`` group ids (``arange(n)``, every row its own group, when None)."""
    if groups is None:
        return np.arange(n)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must have shape ({n},) (one id per row of X), got {groups.shape}")
    return groups


def _sigmoid(s: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-s) = inf for s << 0 gives the right limit, 0
        return 1.0 / (1.0 + np.exp(-s))


class LogisticProbe(ClassifierMixin, BaseEstimator):
    """L2 logistic-regression probe with balanced class weights; ``C`` chosen by grouped
    cross-validated balanced accuracy (the metric the reports headline; under a 98/2 strategy
    split plain accuracy would choose a probe that never predicts the minority).

    Parameters:
        Cs: grid of inverse regularisation strengths (larger = weaker penalty); positive.
        n_splits: inner folds, an integer >= 2 (lowered when there are too few groups).
        tol: gradient tolerance of the solver (sklearn's meaning), positive.
        max_iter: solver iterations per fit at most, an integer >= 1.
        solver: ``"batched"`` (binary targets through :func:`fit_logistic_cv`; multiclass falls
            back to sklearn) or ``"sklearn"`` (always :class:`LogisticRegressionCV`).
        random_state: seed of the stratified group folds.

    Attributes:
        classes_: ``[n_classes]`` class labels (sorted).
        coef_: ``[1, d]`` (binary) or ``[n_classes, d]`` weights; ``intercept_``: ``[1]`` or
            ``[n_classes]``.
        C_: the chosen C (float).
        cv_scores_: ``[n_Cs, n_folds]`` validation balanced accuracy per C and fold.
        n_iter_: ``[n_Cs, n_folds]`` solver iterations of each fold's fit (``max_iter`` where a
            fit stopped there).
        n_features_in_: ``d``; ``feature_names_in_``: ``[d]`` when ``X`` had string column names.
        direction_: ``[d]`` unit vector of the binary probe (towards ``classes_[1]``).
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
        """Fit the probe, choosing ``C`` on grouped inner folds of the rows.

        Args:
            X: ``[n, d]`` features (float32 is kept, other dtypes become float64).
            y: ``[n]`` class labels (ints, strings, ...; two or more classes).
            groups: ``[n]`` group ids for the folds (no group on both sides of a fold); None:
                every row its own group.

        Returns:
            self.

        Raises:
            SingleClassError: one class in ``y``.
            ValueError: invalid hyper-parameters (unknown ``solver``, ``Cs`` not positive,
                ``n_splits`` < 2, ``tol`` <= 0, ``max_iter`` < 1); ``X`` not 2-D, with NaN or
                inf, or fewer than 2 rows; ``y`` continuous (``Unknown label type``) or not
                ``[n]``; ``groups`` not ``[n]``; too few groups (per class) for 2 folds.
            TypeError: sparse ``X``.
        """
        if self.solver not in ("batched", "sklearn"):
            raise ValueError(f"unknown solver {self.solver!r}: use 'batched' or 'sklearn'")
        Cs = _check_grid("Cs", self.Cs, allow_zero=False)
        _check_int("n_splits", self.n_splits, 2)
        _check_int("max_iter", self.max_iter, 1)
        if not isinstance(self.tol, numbers.Real) or not self.tol > 0:
            raise ValueError(f"tol must be a positive number, got {self.tol!r}")
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], ensure_min_samples=2)
        check_classification_targets(y)
        groups = _check_groups(groups, len(y))
        self.classes_ = _check_two_classes(y)
        folds = inner_folds(y, groups, self.n_splits, seed=self.random_state)
        if len(self.classes_) == 2 and self.solver == "batched":
            y01 = (y == self.classes_[1]).astype(np.int64)
            cv = fit_logistic_cv(X[None].astype(np.float32), y01, folds, Cs, tol=self.tol,
                                 max_iter=self.max_iter)
            self.coef_ = cv.coef.astype(np.float64)
            self.intercept_ = cv.intercept.astype(np.float64)
            self.C_ = float(cv.C[0])
            self.cv_scores_ = cv.cv_scores[0]
            self.n_iter_ = np.asarray(cv.n_iter[0], dtype=np.int64)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                m = LogisticRegressionCV(Cs=Cs, cv=folds, l1_ratios=(0.0,), scoring="balanced_accuracy",
                                         class_weight="balanced", tol=self.tol, max_iter=self.max_iter,
                                         use_legacy_attributes=False).fit(X, y)
            self.coef_, self.intercept_ = m.coef_, m.intercept_
            self.C_ = float(m.C_)
            self.cv_scores_ = np.asarray(m.scores_).reshape(len(folds), -1).T
            self.n_iter_ = np.asarray(m.n_iter_, dtype=np.int64).reshape(len(folds), -1).T
        return self

    def decision_function(self, X):
        """Linear scores of the rows.

        Args:
            X: ``[n, d]`` features (``d == n_features_in_``).

        Returns:
            ``[n]`` logits of ``classes_[1]`` (binary) or ``[n, n_classes]`` scores.

        Raises:
            NotFittedError: before ``fit``.
            ValueError: ``X`` not 2-D, with NaN or inf, or with another number of features
                (or other column names) than in ``fit``.
        """
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        s = X @ self.coef_.T + self.intercept_
        return s[:, 0] if s.shape[1] == 1 else s

    def predict_proba(self, X):
        """Class probabilities: ``[n, n_classes]``, rows summing to 1, columns in the order of
        ``classes_``. Raises as :meth:`decision_function`."""
        s = self.decision_function(X)
        if s.ndim == 1:
            p1 = _sigmoid(s)
            return np.stack([1 - p1, p1], 1)
        s = s - s.max(1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(1, keepdims=True)

    def predict(self, X):
        """``[n]`` predicted classes (values of ``classes_``). Raises as :meth:`decision_function`."""
        s = self.decision_function(X)
        idx = (s > 0).astype(int) if s.ndim == 1 else s.argmax(1)
        return self.classes_[idx]

    @property
    def direction_(self) -> np.ndarray:
        """``[d]`` unit weight vector of a binary probe. Raises NotFittedError before ``fit`` and
        AttributeError for a multiclass probe."""
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
    Binary only: its sklearn tag ``classifier_tags.multi_class`` is False.

    Parameters:
        calibrate: fit the 1-D calibration (else threshold 0 at the midpoint, probabilities
            ``sigmoid(score)``).

    Attributes:
        classes_: ``[2]``; means_: ``[2, d]``; difference_: ``[d]`` ``mu_1 - mu_0`` (the raw
        vector, in activation units, used for steering); direction_: ``[d]`` its unit vector;
        coef_: ``[1, d]`` and intercept_: ``[1]`` of the calibrated linear score;
        n_features_in_: ``d`` (and ``feature_names_in_`` ``[d]`` for named columns).
    """

    def __init__(self, calibrate: bool = True):
        self.calibrate = calibrate

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def fit(self, X, y, groups=None):
        """Fit the class means (and the calibration).

        Args:
            X: ``[n, d]`` features (float32 is kept for validation; the means are float64).
            y: ``[n]`` binary labels (any two values).
            groups: accepted for a common signature with the other probes, unused.

        Returns:
            self.

        Raises:
            SingleClassError: one class in ``y``.
            ValueError: more than two classes (``Only binary classification is supported``),
                a continuous target (``Unknown label type``), ``y`` not ``[n]``, or ``X`` not
                2-D, with NaN or inf, or fewer than 2 rows.
            TypeError: sparse ``X``.
        """
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], ensure_min_samples=2)
        check_classification_targets(y)
        y_type = type_of_target(y, input_name="y")
        if y_type != "binary":
            raise ValueError(f"Only binary classification is supported. The type of the target is {y_type} "
                             f"({len(np.unique(y))} classes); DiffMeansProbe is binary")
        self.classes_ = _check_two_classes(y)
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
        """``[d]`` unit vector of ``difference_``. Raises NotFittedError before ``fit``."""
        check_is_fitted(self, "difference_")
        return self.difference_ / max(np.linalg.norm(self.difference_), 1e-30)

    def decision_function(self, X):
        """Calibrated scores of the rows.

        Args:
            X: ``[n, d]`` features (``d == n_features_in_``).

        Returns:
            ``[n]`` logits of ``classes_[1]``.

        Raises:
            NotFittedError: before ``fit``.
            ValueError: ``X`` not 2-D, with NaN or inf, or with another number of features
                (or other column names) than in ``fit``.
        """
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return X @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, X):
        """``[n, 2]`` class probabilities (columns in the order of ``classes_``). Raises as
        :meth:`decision_function`."""
        p1 = _sigmoid(self.decision_function(X))
        return np.stack([1 - p1, p1], 1)

    def predict(self, X):
        """``[n]`` predicted classes (values of ``classes_``). Raises as :meth:`decision_function`."""
        s = self.decision_function(X)
        return self.classes_[(s > 0).astype(int)]


class RidgeProbe(RegressorMixin, BaseEstimator):
    """Ridge-regression probe for a continuous target; ``alpha`` chosen by grouped CV (R^2).

    Used for the model's propensity ``log P(F)/P(B)`` at the first response token (nats), the
    linear read-out of the logit difference.

    Parameters:
        alphas: grid of L2 strengths (non-negative). n_splits: inner folds (``GroupKFold``), an
        integer >= 2. random_state: unused (the folds are deterministic), kept for symmetry.

    Attributes:
        coef_: ``[d]``; intercept_: float; alpha_: the chosen alpha; cv_scores_: ``[n_alphas]``
        mean validation R^2; n_features_in_: ``d`` (and ``feature_names_in_`` ``[d]`` for named
        columns).
    """

    def __init__(self, alphas=DEFAULT_ALPHAS, n_splits: int = 5, random_state: int = 0):
        self.alphas = alphas
        self.n_splits = n_splits
        self.random_state = random_state

    def fit(self, X, y, groups=None):
        """Fit the probe, choosing ``alpha`` on grouped inner folds of the rows.

        Every alpha of a fold comes from one SVD of the fold's centred training rows (the ridge
        solution is ``V diag(s / (s^2 + alpha)) U^T y``, as sklearn's ``Ridge(solver="svd")``);
        the refit at the chosen alpha is sklearn's ``Ridge``.

        Args:
            X: ``[n, d]`` features.
            y: ``[n]`` numeric target (a ``[n, 1]`` column is flattened with a warning).
            groups: ``[n]`` group ids for the folds; None: every row its own group.

        Returns:
            self.

        Raises:
            SingleClassError: a constant target.
            ValueError: invalid hyper-parameters (``alphas`` negative, ``n_splits`` < 2); ``X``
                not 2-D, with NaN or inf, or fewer than 2 rows; ``y`` not numeric or not ``[n]``;
                ``groups`` not ``[n]``; fewer than 2 groups; no fold with 2 validation rows to
                score R^2 on.
            TypeError: sparse ``X``.
        """
        alphas = _check_grid("alphas", self.alphas, allow_zero=True)
        _check_int("n_splits", self.n_splits, 2)
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], y_numeric=True, ensure_min_samples=2)
        groups = _check_groups(groups, len(y))
        if np.ptp(y) == 0:
            raise SingleClassError("the target is constant; nothing to probe")
        folds = inner_folds(None, groups, self.n_splits, stratify=False)
        if all(len(va) < 2 for _, va in folds):
            raise ValueError(f"R^2 needs 2 validation rows in a fold; the {len(folds)} folds of {len(y)} rows "
                             f"in {len(np.unique(groups))} groups have 1 each")
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
        """Predicted target values.

        Args:
            X: ``[n, d]`` features (``d == n_features_in_``).

        Returns:
            ``[n]`` float64 predictions.

        Raises:
            NotFittedError: before ``fit``.
            ValueError: ``X`` not 2-D, with NaN or inf, or with another number of features
                (or other column names) than in ``fit``.
        """
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return X @ self.coef_ + self.intercept_
