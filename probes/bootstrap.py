"""The one bootstrap of the project: resampling counts and percentile intervals.

Every confidence interval of the behaviour decomposition (:mod:`probes.behaviour`), the probe
scores (:mod:`probes.probing`) and the patching results (:mod:`probes.patching`) resamples the
unit that was sampled (problems, or problem chains) with replacement; rows that belong to one
unit (e.g. the forward and backward traces of one problem, the rows of one chain) are resampled
together (a cluster bootstrap). A replicate is represented by its count vector: how many times
each row was drawn, so any statistic that is a (ratio of) weighted sum(s) is one matrix product
per replicate batch. Intervals are percentile intervals (Efron and Tibshirani 1993, *An
Introduction to the Bootstrap*, ch. 6 and 13).

- :func:`resample_counts`: the draws, ``[n_boot, n]`` counts; the same arguments give the same
  counts, so statistics computed from one seed are paired.
- :func:`percentile_ci`: the percentile interval of replicate values.
- :func:`mean_ci`: the two together for the mean of one series.

Example::

    >>> w = resample_counts(5, n_boot=3, seed=0)      # [3, 5] draws per row, each row sums to 5
    >>> w.sum(1).tolist()
    [5.0, 5.0, 5.0]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from jaxtyping import Float

DEFAULT_N_BOOT = 1000
"""Bootstrap replicates used unless a caller asks otherwise."""
DEFAULT_LEVEL = 0.95
"""Coverage of the percentile intervals."""


def resample_counts(
    n: int, *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, groups: Sequence[object] | None = None
) -> Float[np.ndarray, "n_boot n"]:
    """Bootstrap replicates as counts: ``out[b, i]`` = times row ``i`` is in replicate ``b``.

    Each replicate draws ``k`` clusters uniformly with replacement from the ``k`` clusters
    (``rng.integers(0, k, size=(n_boot, k))`` of ``np.random.default_rng(seed)``) and every row
    gets the count of its cluster; without ``groups`` the rows are the clusters, so replicate
    ``b`` is the ordinary resample ``values[draws[b]]`` (Efron and Tibshirani 1993, ch. 6).

    Args:
        n: number of rows.
        n_boot: number of replicates.
        seed: the generator seed (same arguments, same counts).
        groups: ``n`` cluster labels (e.g. problem ids or chains; compared as ``str``); clusters
            are drawn with replacement and each drawn cluster brings all its rows. None: every
            row is its own cluster.

    Returns:
        ``[n_boot, n]`` float64 counts; each replicate's counts over the clusters sum to ``k``
        (to ``n`` without ``groups``).

    Raises:
        ValueError: ``n < 1``, ``n_boot < 1``, or ``groups`` of the wrong length.
    """
    if n < 1 or n_boot < 1:
        raise ValueError(f"the bootstrap needs n >= 1 rows and n_boot >= 1 (got n={n}, n_boot={n_boot})")
    rng = np.random.default_rng(seed)
    if groups is None:
        codes = np.arange(n)
    else:
        if len(groups) != n:
            raise ValueError(f"{len(groups)} group labels for {n} rows")
        _, codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
        codes = codes.reshape(-1)
    k = int(codes.max()) + 1
    draws = rng.integers(0, k, size=(n_boot, k))
    flat = (np.arange(n_boot)[:, None] * k + draws).reshape(-1)
    cluster_counts = np.bincount(flat, minlength=n_boot * k).reshape(n_boot, k).astype(np.float64)
    return cluster_counts[:, codes]


def percentile_ci(samples: Float[np.ndarray, " b"], level: float = DEFAULT_LEVEL) -> tuple[float, float] | None:
    """The percentile interval of the finite ``samples`` ``[b]`` at coverage ``level``.

    The ``(1 - level) / 2`` and ``1 - (1 - level) / 2`` quantiles (``np.quantile``, linear
    interpolation) of the replicate values (Efron and Tibshirani 1993, ch. 13). Non-finite
    replicates (a statistic undefined on that resample, e.g. a ratio with a zero denominator)
    are dropped.

    Returns:
        ``(lo, hi)``, or None when no replicate is finite.
    """
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return None
    lo, hi = np.quantile(x, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def mean_ci(values: Float[np.ndarray, " n"], *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
            level: float = DEFAULT_LEVEL, groups: Sequence[object] | None = None) -> dict:
    """The mean of ``values`` ``[n]`` with its bootstrap CI: ``{"mean", "ci", "n"}``.

    The replicate means are ``(w @ values) / w.sum(1)`` for the counts ``w`` of
    :func:`resample_counts` (same ``n_boot``, ``seed``, ``groups``), and ``ci`` is their
    :func:`percentile_ci`. Calls with the same ``n``, ``n_boot``, ``seed`` and ``groups`` share
    their replicates, so their intervals are paired.

    Returns:
        ``{"mean": float, "ci": (lo, hi), "n": int}``. A non-finite value makes the mean
        undefined: ``mean`` is then NaN (or inf) and ``ci`` is ``(nan, nan)``, never an interval
        of the replicates that happened to miss that value.

    Raises:
        ValueError: no values, or ``groups`` of the wrong length.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("mean_ci of no values")
    w = resample_counts(v.size, n_boot=n_boot, seed=seed, groups=groups)
    if not np.all(np.isfinite(v)):
        return {"mean": float(v.mean()), "ci": (float("nan"), float("nan")), "n": int(v.size)}
    boot = (w @ v) / w.sum(1)
    return {"mean": float(v.mean()), "ci": percentile_ci(boot, level), "n": int(v.size)}
