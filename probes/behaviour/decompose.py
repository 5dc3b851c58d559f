"""The accuracy decomposition of an RL update into strategy selection and improvement.

With ``acc(x) = sum_s pi(s|x) a(s|x)`` (strategy propensity ``pi`` times forced-strategy
accuracy ``a``) for a reference model (pre-RL: ``pi, a``) and a model (post-RL: ``pi', a'``),
the change ``delta = acc' - acc`` splits exactly as

- Shapley (symmetric, the headline):
  ``selection = sum_s (pi' - pi)(a + a')/2``, ``improvement = sum_s (pi + pi')/2 (a' - a)``;
  ``selection + improvement = delta`` exactly.
- one-sided at the reference's values: ``selection = sum_s (pi' - pi) a``,
  ``improvement = sum_s pi (a' - a)``, ``interaction = sum_s (pi' - pi)(a' - a)``;
- one-sided at the model's values: ``selection = sum_s (pi' - pi) a'``,
  ``improvement = sum_s pi' (a' - a)``, ``interaction = -sum_s (pi' - pi)(a' - a)``.

Each holds per problem; strata and the pooled value average over problems with equal
weight. Swapping the two models negates every term. Units: accuracy (fraction correct).
Confidence intervals: percentile bootstrap over problems (Efron and Tibshirani 1993), from
:func:`probes.bootstrap.mean_ci`, the draws the patching and probing intervals use too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probes.bootstrap import mean_ci

TERMS = ("delta", "selection", "improvement")
ONE_SIDED = ("selection", "improvement", "interaction")


@dataclass
class Decomposition:
    """Per-problem terms; every array has shape ``[N]`` (problems)."""

    delta: np.ndarray
    selection: np.ndarray
    improvement: np.ndarray
    at_reference: dict[str, np.ndarray]
    at_model: dict[str, np.ndarray]


def decompose(pi_ref: np.ndarray, a_ref: np.ndarray, pi_new: np.ndarray, a_new: np.ndarray) -> Decomposition:
    """Per-problem decomposition.

    Args:
        pi_ref, pi_new: ``[N, S]`` strategy probabilities of the reference and the model (rows
            may sum to less than 1: the rest is mass on no strategy, which scores 0).
        a_ref, a_new: ``[N, S]`` forced-strategy accuracies in [0, 1].

    Raises:
        ValueError: shapes differ or are not 2-D.
    """
    arrs = [np.asarray(x, dtype=np.float64) for x in (pi_ref, a_ref, pi_new, a_new)]
    if any(x.ndim != 2 for x in arrs) or len({x.shape for x in arrs}) != 1:
        raise ValueError(f"pi and a must all have the same [N, S] shape, got {[x.shape for x in arrs]}")
    p0, a0, p1, a1 = arrs
    dp, da = p1 - p0, a1 - a0
    delta = (p1 * a1).sum(1) - (p0 * a0).sum(1)
    inter = (dp * da).sum(1)
    return Decomposition(
        delta=delta,
        selection=(dp * (a0 + a1) / 2).sum(1),
        improvement=((p0 + p1) / 2 * da).sum(1),
        at_reference={"selection": (dp * a0).sum(1), "improvement": (p0 * da).sum(1), "interaction": inter},
        at_model={"selection": (dp * a1).sum(1), "improvement": (p1 * da).sum(1), "interaction": -inter},
    )


def summarize(dec: Decomposition, mask: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Means and bootstrap 95% CIs of every term over the problems selected by ``mask``.

    Args:
        dec: the per-problem terms (``[N]`` each).
        mask: ``[N]`` booleans selecting the problems; None selects all.
        n_boot, seed: the bootstrap (:func:`probes.bootstrap.mean_ci`: problems resampled with
            replacement, percentile interval; Efron and Tibshirani 1993).

    Returns:
        ``{"n", TERM, TERM + "_ci", "at_reference": {...}, "at_model": {...}}``: each mean is a
        float (None when no problem is selected), each CI ``[lo, hi]`` (None when no problem is
        selected; ``[nan, nan]`` when a selected term is NaN). Every term is resampled with the
        same draws (same ``n`` and ``seed``), so the CIs are of matched draws.
    """
    m = np.ones_like(dec.delta, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    n = int(m.sum())
    out: dict = {"n": n}
    series = {"delta": dec.delta, "selection": dec.selection, "improvement": dec.improvement}
    for side, terms in (("at_reference", dec.at_reference), ("at_model", dec.at_model)):
        for k, v in terms.items():
            series[f"{side}.{k}"] = v
    for name, v in series.items():
        res = mean_ci(v[m], n_boot=n_boot, seed=seed) if n else None
        node = out
        parts = name.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = res["mean"] if res else None
        node[parts[-1] + "_ci"] = list(res["ci"]) if res else None
    return out
