"""Probe scores with cluster-bootstrap 95% confidence intervals.

Point values are sklearn's (:func:`~sklearn.metrics.accuracy_score`,
:func:`~sklearn.metrics.balanced_accuracy_score`, :func:`~sklearn.metrics.roc_auc_score`,
:func:`~sklearn.metrics.r2_score`). Intervals are percentile bootstraps that resample *groups*
(problem chains) with replacement, since the rows of a chain are not independent; each draw is a
multiplicity per group (:func:`probes.bootstrap.resample_counts`, the draws of the behaviour and
patching intervals too), so every metric of a draw is a weighted metric over the rows, computed
for all draws at once, and the interval is :func:`probes.bootstrap.percentile_ci` (Efron and
Tibshirani 1993). Draws can be returned so that differences of two scores on the same rows
(selectivity, transfer gaps) get paired intervals.
"""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, r2_score, roc_auc_score

from probes.bootstrap import percentile_ci, resample_counts

CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "auroc")
REGRESSION_METRICS: tuple[str, ...] = ("r2",)


def _weighted_accuracy(W: np.ndarray, correct: np.ndarray) -> np.ndarray:
    return (W @ correct) / np.maximum(W.sum(1), 1e-12)


def _weighted_balanced_accuracy(W: np.ndarray, y: np.ndarray, correct: np.ndarray) -> np.ndarray:
    recalls = []
    for c in np.unique(y):
        m = (y == c).astype(np.float64)
        tot = W @ m
        rec = np.where(tot > 0, (W @ (m * correct)) / np.maximum(tot, 1e-12), np.nan)
        recalls.append(rec)
    return np.nanmean(np.stack(recalls, 1), axis=1)


def auroc_parts(W: np.ndarray, y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mann-Whitney numerator and pair count ``([B], [B])`` of the rows weighted by each row of
    ``W [B, n]`` (ties count one half); AUROC is their ratio, and sums of them pool strata."""
    order = np.argsort(score, kind="mergesort")
    s, yy, Ws = score[order], y[order], W[:, order]
    starts = np.concatenate([[0], np.nonzero(np.diff(s))[0] + 1])
    pos = (yy == 1).astype(np.float64)
    neg_blocks = np.add.reduceat(Ws * (1 - pos), starts, axis=1)  # [B, K]
    pos_blocks = np.add.reduceat(Ws * pos, starts, axis=1)
    below = np.cumsum(neg_blocks, axis=1) - neg_blocks
    return (pos_blocks * (below + 0.5 * neg_blocks)).sum(1), pos_blocks.sum(1) * neg_blocks.sum(1)


def _weighted_auroc(W: np.ndarray, y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """AUROC of each weight row (Mann-Whitney with ties counted one half)."""
    num, den = auroc_parts(W, y, score)
    return np.where(den > 0, num / np.maximum(den, 1e-12), np.nan)


def _weighted_r2(W: np.ndarray, y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    sw = np.maximum(W.sum(1), 1e-12)
    mean = (W @ y) / sw
    sst = W @ (y**2) - sw * mean**2
    sse = W @ ((y - pred) ** 2)
    return np.where(sst > 0, 1 - sse / np.maximum(sst, 1e-300), np.nan)


def classification_scores(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    y_score: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    return_draws: bool = False,
) -> dict:
    """Accuracy, balanced accuracy and (binary) AUROC with cluster-bootstrap CIs.

    Args:
        y_true: ``[n]`` true classes (binary metrics treat class ``1`` as positive).
        y_pred: ``[n]`` predicted classes.
        y_score: ``[n]`` scores for AUROC (larger = class 1); None or a multiclass ``y_true``
            gives ``auroc = None`` with the reason.
        groups: ``[n]`` group ids to resample (chains); None resamples rows
            (:func:`probes.bootstrap.resample_counts`).
        n_boot: bootstrap draws.
        seed: seed of the draws (the same seed and groups give the same draws, so scores of two
            probes on the same rows are paired).
        level: CI coverage.
        return_draws: also return the ``[n_boot]`` draws of each metric under ``"draws"``.

    Returns:
        ``{"n": n, METRIC: {"value": float, "ci": (lo, hi)}, ...}``, metrics in
        :data:`CLASSIFICATION_METRICS` (fractions; AUROC in [0, 1], 0.5 = chance); ``ci`` is
        None when no draw of the metric is defined.
        A metric that does not exist (one class in ``y_true``) is ``{"value": None,
        "reason": ...}``.

    Raises:
        ValueError: arrays of different lengths, ``n_boot < 1`` or ``groups`` of the wrong length.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = len(y_true)
    if len(y_pred) != n or (y_score is not None and len(y_score) != n):
        raise ValueError(f"y_true, y_pred and y_score must have the same length ({n})")
    out: dict = {"n": int(n)}
    draws: dict[str, np.ndarray] = {}
    if n == 0:
        for m in CLASSIFICATION_METRICS:
            out[m] = {"value": None, "reason": "no rows"}
        return out
    W = resample_counts(n, n_boot=n_boot, seed=seed, groups=groups)
    correct = (y_true == y_pred).astype(np.float64)
    out["accuracy"] = {"value": float(accuracy_score(y_true, y_pred))}
    draws["accuracy"] = _weighted_accuracy(W, correct)
    classes = np.unique(y_true)
    if len(classes) < 2:
        out["balanced_accuracy"] = {"value": None, "reason": "one class in y_true"}
    else:
        with warnings.catch_warnings():  # predicted classes absent from y_true are fine here
            warnings.simplefilter("ignore", UserWarning)
            out["balanced_accuracy"] = {"value": float(balanced_accuracy_score(y_true, y_pred))}
        draws["balanced_accuracy"] = _weighted_balanced_accuracy(W, y_true, correct)
    if y_score is None:
        out["auroc"] = {"value": None, "reason": "no scores"}
    elif len(classes) != 2 or not set(classes.tolist()) <= {0, 1}:
        out["auroc"] = {"value": None, "reason": "AUROC is reported for binary 0/1 targets only"
                        if len(classes) >= 2 else "one class in y_true"}
    else:
        s = np.asarray(y_score, dtype=np.float64)
        out["auroc"] = {"value": float(roc_auc_score(y_true, s))}
        draws["auroc"] = _weighted_auroc(W, y_true, s)
    for m, d in draws.items():
        out[m]["ci"] = percentile_ci(d, level)
    if return_draws:
        out["draws"] = draws
    return out


def regression_scores(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    return_draws: bool = False,
) -> dict:
    """Coefficient of determination R^2 (dimensionless; 0 = predicting the mean) with a
    cluster-bootstrap CI, and Pearson's r.

    Returns:
        ``{"n": n, "r2": {"value", "ci"}, "pearson_r": float}`` (``draws`` on request).

    Raises:
        ValueError: arrays of different lengths, ``n_boot < 1`` or ``groups`` of the wrong length.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    n = len(y_true)
    if len(y_pred) != n:
        raise ValueError(f"y_true and y_pred must have the same length ({n})")
    if n < 2 or np.ptp(y_true) == 0:
        return {"n": int(n), "r2": {"value": None, "reason": "fewer than 2 rows or constant target"},
                "pearson_r": None}
    W = resample_counts(n, n_boot=n_boot, seed=seed, groups=groups)
    d = _weighted_r2(W, y_true, y_pred)
    r = float(np.corrcoef(y_true, y_pred)[0, 1]) if np.ptp(y_pred) > 0 else 0.0
    out = {"n": int(n), "r2": {"value": float(r2_score(y_true, y_pred)), "ci": percentile_ci(d, level)}, "pearson_r": r}
    if return_draws:
        out["draws"] = {"r2": d}
    return out


def paired_difference(a: Mapping, b: Mapping, metric: str, level: float = 0.95) -> dict:
    """``a[metric] - b[metric]`` with a CI from paired draws (both from ``return_draws=True``
    with the same groups, seed and ``n_boot``).

    Returns:
        ``{"value": float, "ci": (lo, hi)}`` or ``{"value": None, "reason": ...}``.
    """
    va, vb = a.get(metric, {}).get("value"), b.get(metric, {}).get("value")
    if va is None or vb is None:
        return {"value": None, "reason": f"{metric} missing on one side"}
    da, db = a.get("draws", {}).get(metric), b.get("draws", {}).get(metric)
    out = {"value": float(va - vb)}
    if da is not None and db is not None and len(da) == len(db):
        out["ci"] = percentile_ci(da - db, level)
    return out


def strip_draws(scores: dict) -> dict:
    """A copy of a score dict without its bootstrap draws (for JSON)."""
    return {k: v for k, v in scores.items() if k != "draws"}
