"""Attribution patching (AtP): a first-order estimate of every cell's patching effect from two
forward passes and one backward pass, its agreement with exact patching, and exact confirmation
of its top hits.

For a recipient run with activation ``a`` at a (site, layer, position) and the donor's value
``a'`` there, AtP (Nanda 2023; Kramar et al. 2024, "AtP*", arXiv 2403.00745, eq. 3) estimates the
effect of patching that one cell on the metric ``M`` as

    M(patched) - M(recipient)  ~=  (a' - a) . dM/da

with the gradient taken on the recipient run. One forward pass of the donor (its activations),
one forward pass of the recipient that keeps the graph, and one backward pass of ``sum_i M_i``
(rows of a batch are independent, so each row's gradient is its own) give the estimate for every
site, layer and position at once.

AtP is a linearisation: it fails where the metric saturates (attention softmax, AtP* sec. 3.1) and
where effects cancel (sec. 3.2); AtP* corrects both, at the price of more backward passes, and is
not implemented here. So AtP is used as a prefilter: :func:`agreement` measures how well it ranks
the cells of an exact sweep (Spearman rank correlation, top-k recall), and
:func:`confirm_top_hits` re-runs exact patching on its top hits.

Estimates are normalised like exact patches (:mod:`probes.patching.recovery`): the estimated
patched value is ``recipient + estimate``, so both are fractions of the gap.

Example::

    >>> atp = attribution_patching(backend, corrupt_batch, clean_donor, metric, ["hook_resid_pre"],
    ...                            n_positions=19, recipient=corrupt_ld, donor_values=clean_ld)   # doctest: +SKIP
    >>> agreement(atp.values(), exact.values(), k=10)["spearman"]                                # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from activations.batch import TokenBatch
from probes.patching.cells import Cell, grid_cells
from probes.patching.donor import Donor
from probes.patching.metrics import Metric
from probes.patching.recovery import DEFAULT_TOL, Recovery, recoveries
from probes.patching.sweep import DEFAULT_MAX_ROWS, sweep

DEFAULT_TOP_K = 10
"""Cells counted as AtP's top hits unless a caller asks otherwise."""
DEFAULT_MIN_EFFECT = 0.05
"""An exact effect (fraction of the gap) at least this large, with the estimate's sign, confirms a hit."""


@dataclass
class Attribution:
    """AtP estimates for a layer x position grid of every hook.

    Attributes:
        hooks, n_layers, n_positions: the grid (cells in hook, layer, position order).
        cells: the ``K`` cells.
        estimates: ``[K, N]`` estimated ``patched - recipient`` per cell and row (metric units);
            0 where a row has no token at that position.
        recipient, donor: ``[N]`` unpatched metrics of the recipient and donor runs.
        recoveries: ``K`` normalised estimates (fraction of the gap).
    """

    hooks: list[str]
    n_layers: int
    n_positions: int
    cells: list[Cell]
    estimates: Float[Tensor, "k n"]
    recipient: Float[Tensor, " n"]
    donor: Float[Tensor, " n"]
    recoveries: list[Recovery] = field(default_factory=list)

    def values(self) -> np.ndarray:
        """``[K]`` normalised estimates (NaN where undefined, in this array only)."""
        return np.array([np.nan if r.value is None else r.value for r in self.recoveries])


def attribution_patching(
    backend: Any,
    batch: TokenBatch,
    donor: Donor,
    metric: Metric,
    hooks: Sequence[str],
    *,
    n_positions: int | None = None,
    recipient: Float[Tensor, " n"] | None = None,
    donor_values: Float[Tensor, " n"],
    tol: float = DEFAULT_TOL,
    n_boot: int = 1000,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> Attribution:
    """AtP estimates for every hook, layer and token position (one forward and one backward pass
    of the recipient; the donor's activations are given).

    Args:
        backend: the recipient's backend.
        batch: the recipient's inputs (``N`` rows).
        donor: the donor's activations at every ``blocks.{l}.{hook}`` (all tokens).
        metric: the score.
        hooks: block hooks (``hook_resid_pre``, ``hook_attn_out``, ``hook_mlp_out``, ...).
        n_positions: grid width (default: the longest input); positions are token indices within
            each unpadded input, as in :func:`probes.patching.cells.grid_cells`.
        recipient: ``[N]`` the recipient's unpatched metric (default: from the graph's forward).
        donor_values: ``[N]`` the donor's metric (the normalisation's 1).
        tol, n_boot, seed, groups: the recovery's tolerance and bootstrap.

    Raises:
        DonorError: the donor lacks a site.
        SiteError: an unknown hook.
    """
    n_layers = backend.dims.n_layers
    width = int(batch.lengths.max()) if n_positions is None else int(n_positions)
    cells = grid_cells(hooks, n_layers, width)
    sites = [f"blocks.{l}.{h}" for h in hooks for l in range(n_layers)]
    plan = metric.plan(batch)
    run = backend.run(batch, read=sites, logits=plan.index, grad=True)
    values = plan.reduce(run.logits, 1)[0]
    acts = [run.activations[s] for s in sites]
    grads = torch.autograd.grad(values.sum(), acts, allow_unused=True)
    n = len(batch)
    est = torch.zeros(len(sites), width, n)
    for k, (site, a, g) in enumerate(zip(sites, acts, grads)):
        if g is None:
            continue
        for b in range(n):
            length = int(batch.lengths[b])
            p = torch.arange(min(width, length))
            cols = batch.pad_offset[b] + p
            d = donor.values(site, [b] * len(p), p).to(a.dtype) - a[b, cols].detach()
            prod = (d * g[b, cols].detach()).reshape(len(p), -1).sum(-1)
            est[k, :len(p), b] = prod.float().cpu()
    estimates = est.reshape(len(sites) * width, n)
    rec = values.detach().cpu().float() if recipient is None else recipient
    recs = recoveries(rec[None] + estimates, rec, donor_values, tol=tol, n_boot=n_boot, seed=seed, groups=groups)
    return Attribution(hooks=list(hooks), n_layers=n_layers, n_positions=width, cells=cells, estimates=estimates,
                       recipient=rec, donor=donor_values, recoveries=recs)


def agreement(estimate: Float[np.ndarray, " k"], exact: Float[np.ndarray, " k"], k: int = DEFAULT_TOP_K) -> dict[str, Any]:
    """How well AtP ranks cells: Spearman rank correlation of the signed values and top-k recall.

    Top-k recall is ``|top_k(|estimate|) & top_k(|exact|)| / k``: the fraction of the ``k`` largest
    exact effects that AtP's ``k`` largest estimates contain (1 = AtP finds every top hit).

    Returns:
        ``{"spearman", "spearman_p", "top_k", "top_k_recall", "n_cells", "reason"}``; values None
        with a ``reason`` when undefined (undefined cells, or constant values).

    Raises:
        ValueError: arrays of different lengths or ``k < 1``.
    """
    from scipy.stats import spearmanr

    e, x = np.asarray(estimate, dtype=np.float64), np.asarray(exact, dtype=np.float64)
    if e.shape != x.shape or e.ndim != 1:
        raise ValueError(f"agreement needs two [K] arrays of one length, got {e.shape} and {x.shape}")
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k}")
    out: dict[str, Any] = {"spearman": None, "spearman_p": None, "top_k": int(min(k, e.size)),
                           "top_k_recall": None, "n_cells": int(e.size), "reason": None}
    if e.size == 0 or not (np.all(np.isfinite(e)) and np.all(np.isfinite(x))):
        out["reason"] = "undefined cells (donor and recipient agree): nothing to rank"
        return out
    kk = out["top_k"]
    top_e = set(np.argsort(-np.abs(e), kind="stable")[:kk].tolist())
    top_x = set(np.argsort(-np.abs(x), kind="stable")[:kk].tolist())
    out["top_k_recall"] = len(top_e & top_x) / kk
    if np.ptp(e) == 0 or np.ptp(x) == 0:
        out["reason"] = "constant values: the rank correlation is undefined"
        return out
    rho, p = spearmanr(e, x)
    out["spearman"], out["spearman_p"] = float(rho), float(p)
    return out


def top_cells(atp: Attribution, k: int = DEFAULT_TOP_K) -> list[int]:
    """Indices of the ``k`` cells with the largest ``|normalised estimate|`` (undefined: none)."""
    v = atp.values()
    if not np.all(np.isfinite(v)):
        return []
    return np.argsort(-np.abs(v), kind="stable")[:k].tolist()


def confirm_top_hits(
    backend: Any,
    batch: TokenBatch,
    donor: Donor,
    metric: Metric,
    atp: Attribution,
    *,
    k: int = DEFAULT_TOP_K,
    min_effect: float = DEFAULT_MIN_EFFECT,
    tol: float = DEFAULT_TOL,
    n_boot: int = 1000,
    seed: int = 0,
    groups: Sequence[str] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> list[dict[str, Any]]:
    """Exact patching of AtP's top ``k`` cells.

    A hit is *confirmed* when its exact normalised effect has the estimate's sign and
    ``|exact| >= min_effect`` (fraction of the gap).

    Returns:
        One dict per hit, in AtP order: ``cell``, ``estimate``, ``exact`` (a
        :meth:`~probes.patching.recovery.Recovery.to_dict`), ``confirmed``. Empty when AtP is
        undefined.
    """
    idx = top_cells(atp, k)
    if not idx:
        return []
    cells = [atp.cells[i] for i in idx]
    patched = sweep(backend, batch, cells, metric, donor, max_rows=max_rows, desc="confirm AtP hits")
    exact = recoveries(patched, atp.recipient, atp.donor, tol=tol, n_boot=n_boot, seed=seed, groups=groups)
    out = []
    for i, c, r in zip(idx, cells, exact):
        est = atp.recoveries[i].value
        ok = r.value is not None and est is not None and np.sign(r.value) == np.sign(est) and abs(r.value) >= min_effect
        out.append({"cell": c.label, "estimate": est, "exact": r.to_dict(), "confirmed": bool(ok)})
    return out
