"""Recovery: the fraction of the donor-recipient gap that a patch closes, with bootstrap CIs.

For one problem ``i`` with metric values ``recipient_i`` (recipient run, unpatched),
``donor_i`` (donor run) and ``patched_i`` (recipient run with the patch), the recovery is

    r_i = (patched_i - recipient_i) / (donor_i - recipient_i)

so 0 = the recipient unpatched and 1 = the donor (CMAP, Prakash et al. 2024, arXiv 2402.14811;
for counterfactual pairs the recipient is the corrupted run and the donor the clean one, the
"normalised logit difference" of Heimersheim and Nanda 2024, arXiv 2404.15255). Unit: fraction of
the gap recovered (dimensionless).

Over problems it is aggregated as a ratio of sums, with the gap ``g_i = donor_i - recipient_i``::

    R = sum_i sign(g_i) * (patched_i - recipient_i) / sum_i |g_i|

which is the ``|g_i|``-weighted mean of the ``r_i``: problems with a large gap count more, and
problems whose gaps have opposite signs (a routing change towards ``F`` on evaluation problems
and towards ``B`` on inversion problems) do not cancel. Problems with ``|g_i| < tol`` (donor and
recipient agree) contribute to neither sum.

**Undefined, never NaN.** When the mean absolute gap ``sum_i |g_i| / N`` is below ``tol`` the
donor and recipient agree and nothing can be recovered: ``R`` is reported as ``None`` with the
reason (:attr:`Recovery.reason`). The same holds for a single problem's ``r_i``.

**Intervals.** Percentile bootstrap over problems (:mod:`probes.bootstrap`); replicates
in which the gap falls below ``tol`` are dropped and counted (:attr:`Recovery.undefined_replicates`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float

from probes.bootstrap import DEFAULT_LEVEL, DEFAULT_N_BOOT, percentile_ci, resample_counts

DEFAULT_TOL = 1e-4
"""Gaps (in the metric's unit, nats) below this are float noise: float32 logits of magnitude
~10 carry rounding errors ~1e-6, and summed over a batch ~1e-5."""


@dataclass
class Recovery:
    """The recovery of one patch configuration over a set of problems.

    Attributes:
        value: ``R`` (fraction of the gap recovered), or None when undefined.
        ci: its bootstrap percentile interval ``(lo, hi)``, or None when undefined.
        reason: why ``value`` is None (None when it is defined).
        n: number of rows (problems, or problem x strategy rows).
        gap_abs: mean ``|donor - recipient|`` over rows, in the metric's unit.
        gap_abs_ci: its bootstrap interval.
        gap_signed: mean ``donor - recipient``, in the metric's unit.
        gap_signed_ci: its bootstrap interval.
        undefined_replicates: bootstrap replicates dropped because their gap was below ``tol``.
        tol: the gap tolerance used.
    """

    value: float | None
    ci: tuple[float, float] | None
    reason: str | None
    n: int
    gap_abs: float
    gap_abs_ci: tuple[float, float] | None
    gap_signed: float
    gap_signed_ci: tuple[float, float] | None
    undefined_replicates: int
    tol: float

    @property
    def defined(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("ci", "gap_abs_ci", "gap_signed_ci"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _check(patched: np.ndarray, recipient: np.ndarray, donor: np.ndarray) -> None:
    if recipient.ndim != 1 or donor.shape != recipient.shape or patched.shape[-1] != recipient.shape[0]:
        raise ValueError(
            f"recovery needs recipient and donor of shape [N] and patched of shape [..., N]; got "
            f"{recipient.shape}, {donor.shape}, {patched.shape}"
        )
    for name, a in (("patched", patched), ("recipient", recipient), ("donor", donor)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"recovery: the {name} metric values contain NaN or inf")


def per_problem_recovery(patched: Float[Any, " n"], recipient: Float[Any, " n"], donor: Float[Any, " n"],
                         tol: float = DEFAULT_TOL) -> list[float | None]:
    """``r_i`` for each problem: None where ``|donor_i - recipient_i| < tol``.

    Raises:
        ValueError: shapes differ or a value is not finite.
    """
    p, r, d = _np(patched), _np(recipient), _np(donor)
    _check(p, r, d)
    g = d - r
    return [None if abs(gi) < tol else float((pi - ri) / gi) for pi, ri, gi in zip(p, r, g)]


def recoveries(
    patched: Float[Any, "k n"],
    recipient: Float[Any, " n"],
    donor: Float[Any, " n"],
    *,
    tol: float = DEFAULT_TOL,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    groups: Sequence[object] | None = None,
) -> list[Recovery]:
    """:class:`Recovery` of each of ``k`` patch configurations over the same ``n`` rows.

    All configurations share the bootstrap replicates (same seed), so their intervals are
    comparable and differences between cells are not resampling noise.

    Args:
        patched: ``[k, n]`` metric values of the recipient run with each patch.
        recipient: ``[n]`` metric of the recipient run unpatched.
        donor: ``[n]`` metric of the donor run.
        tol: gap tolerance in the metric's unit (see :data:`DEFAULT_TOL`).
        n_boot, level, seed: the bootstrap (:func:`probes.bootstrap.resample_counts`).
        groups: ``n`` cluster labels (problem ids) when several rows belong to one problem.

    Raises:
        ValueError: shapes differ, or a value is NaN or infinite.
    """
    p, r, d = _np(patched), _np(recipient), _np(donor)
    if p.ndim == 1:
        p = p[None]
    _check(p, r, d)
    n = r.shape[0]
    g = d - r
    agree = np.abs(g) < tol
    sgn = np.where(agree, 0.0, np.sign(g))
    wabs = np.where(agree, 0.0, np.abs(g))
    num = (sgn[None] * (p - r[None]))  # [k, n]
    w = resample_counts(n, n_boot=n_boot, seed=seed, groups=groups)  # [B, n]
    tot = w.sum(1)
    boot_den = w @ wabs  # [B]
    boot_gap_abs = (w @ np.abs(g)) / tot
    boot_gap_signed = (w @ g) / tot
    ok = boot_gap_abs >= tol
    boot_num = w @ num.T  # [B, k]
    gap_abs = float(np.abs(g).mean())
    gap_signed = float(g.mean())
    gap_abs_ci = percentile_ci(boot_gap_abs, level)
    gap_signed_ci = percentile_ci(boot_gap_signed, level)
    out = []
    for k in range(p.shape[0]):
        if gap_abs < tol:
            value, ci = None, None
            reason = (f"donor and recipient agree: mean |donor - recipient| = {gap_abs:.3g} is below "
                      f"the tolerance {tol:g}, so there is no gap to recover")
        elif not wabs.sum() > 0:
            value, ci = None, None
            reason = f"every problem's gap is below the tolerance {tol:g}"
        else:
            value = float(num[k].sum() / wabs.sum())
            with np.errstate(divide="ignore", invalid="ignore"):
                samples = np.where(ok & (boot_den > 0), boot_num[:, k] / np.where(boot_den > 0, boot_den, 1.0), np.nan)
            ci = percentile_ci(samples, level)
            reason = None
        out.append(Recovery(value=value, ci=ci, reason=reason, n=n, gap_abs=gap_abs, gap_abs_ci=gap_abs_ci,
                            gap_signed=gap_signed, gap_signed_ci=gap_signed_ci,
                            undefined_replicates=int((~ok).sum()), tol=tol))
    return out


def recovery(patched: Float[Any, " n"], recipient: Float[Any, " n"], donor: Float[Any, " n"], **kwargs: Any) -> Recovery:
    """:class:`Recovery` of one patch configuration; keyword arguments as :func:`recoveries`."""
    p = _np(patched)
    if p.ndim != 1:
        raise ValueError(f"recovery() takes one configuration ([n]); got shape {p.shape}: use recoveries()")
    return recoveries(p[None], recipient, donor, **kwargs)[0]
