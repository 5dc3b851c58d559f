"""The bootstrap over problems: resampling weights and percentile intervals.

Every confidence interval of the patching results resamples *problems* (with replacement), the
unit that was sampled; rows that belong to one problem (e.g. the forward and backward traces of
one problem in the execution set) are resampled together (a cluster bootstrap). A replicate is
represented by its count vector: how many times each row was drawn, so any statistic that is a
ratio of weighted sums is one matrix product per replicate batch (Efron and Tibshirani 1993,
ch. 6 and 13).

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

    Args:
        n: number of rows.
        n_boot: number of replicates.
        seed: the generator seed (same arguments, same counts).
        groups: ``n`` cluster labels (e.g. problem ids); clusters are drawn with replacement and
            each drawn cluster brings all its rows. None: every row is its own cluster.

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
    k = int(codes.max()) + 1
    draws = rng.integers(0, k, size=(n_boot, k))
    cluster_counts = np.zeros((n_boot, k))
    np.add.at(cluster_counts, (np.arange(n_boot)[:, None], draws), 1.0)
    return cluster_counts[:, codes]


def percentile_ci(samples: Float[np.ndarray, " b"], level: float = DEFAULT_LEVEL) -> tuple[float, float] | None:
    """The percentile interval of finite ``samples`` at ``level``; None when there are none."""
    x = np.asarray(samples, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return None
    lo, hi = np.quantile(x, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def mean_ci(values: Float[np.ndarray, " n"], *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
            level: float = DEFAULT_LEVEL, groups: Sequence[object] | None = None) -> dict:
    """The mean of ``values`` with its bootstrap CI: ``{"mean", "ci", "n"}`` (JSON-able).

    Raises:
        ValueError: no values.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_ci of no values")
    w = resample_counts(v.size, n_boot=n_boot, seed=seed, groups=groups)
    boot = (w @ v) / w.sum(1)
    return {"mean": float(v.mean()), "ci": percentile_ci(boot, level), "n": int(v.size)}
