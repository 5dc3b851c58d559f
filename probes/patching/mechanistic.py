"""The mechanistic decomposition: the behavioural Shapley split, measured with patched activations.

The behaviour stage splits the accuracy change of an RL update, ``acc(x) = sum_s pi(s|x) a(s|x)``,
into ``selection = sum_s (pi' - pi)(a + a')/2`` and ``improvement = sum_s (pi + pi')/2 (a' - a)``
(:mod:`probes.behaviour.decompose`; unprimed: pre-RL, primed: post-RL). Here the same two terms are
measured *through the residual stream*: the donor model's activations at one site (hook, layer)
are written into the recipient model (cross-model activation patching, CMAP, Prakash et al. 2024,
arXiv 2402.14811), and the patched recipient's ``pi`` and ``a`` replace the donor's in the term.

- **Routing** (prompt positions patched; :class:`~probes.patching.metrics.StrategyProbs`):
  ``pi_patched(s|x)``, and the mechanistic selection term
  ``sel_mech = sum_s (pi_patched - pi_r)(a_r + a_d)/2``.
- **Execution** (every response position of a teacher-forced canonical trace of each strategy
  patched; :class:`~probes.patching.metrics.TraceLogProb`): ``a_patched(s|x)``, the exact
  probability of the canonical trace and its end token, and the mechanistic improvement term
  ``imp_mech = sum_s (pi_r + pi_d)/2 (a_patched - a_r)``.

``r`` is the recipient and ``d`` the donor. With the post-RL model as donor and the pre-RL model as
recipient (``post_into_pre``, *denoising*), the behavioural terms ``sel_beh = sum_s (pi_d -
pi_r)(a_r + a_d)/2`` and ``imp_beh = sum_s (pi_r + pi_d)/2 (a_d - a_r)`` are exactly the behaviour
stage's selection and improvement; with the roles exchanged (``pre_into_post``, *noising*) they are
their negatives, and the mechanistic terms say how much of the change the pre-RL activations take
away. Swapping the pair exchanges the two directions exactly.

**Recovery** of a term = ``sum_i mech_i / sum_i beh_i`` over problems (ratio of means: 1 = the
patch carries the whole behavioural term, 0 = none of it), with a percentile bootstrap CI over
problems (the same replicates for every cell; Efron and Tibshirani 1993). It is undefined, never
NaN, when the behavioural term's mean is below ``tol`` in absolute value (there is nothing to
recover), and replicates whose resampled behavioural mean is below ``tol`` are dropped and counted.

Units: ``pi`` and ``a`` are probabilities; every term is in accuracy units (fraction correct per
problem); recoveries are dimensionless.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from jaxtyping import Float

from activations.batch import encode_batch
from probes.behaviour.exact import by_steps, trace_logprobs
from probes.bootstrap import DEFAULT_LEVEL, percentile_ci, resample_counts
from probes.patching.cells import Cell, layer_cells
from probes.patching.donor import Donor
from probes.patching.metrics import StrategyProbs, TraceLogProb
from probes.patching.sweep import baseline, sweep
from probes.tasks import STRATEGIES, current_task
from probes.tasks import TaskProblem as Problem

DIRECTIONS: tuple[str, ...] = ("post_into_pre", "pre_into_post")
"""``donor_into_recipient``: denoising (post-RL activations into the pre-RL model) and noising."""
TERM_TOL = 1e-6
"""Behavioural terms (accuracy units) whose mean is below this are 0 for the recovery: float32
probabilities carry rounding errors ~1e-7, far below any change a reader could care about."""


def selection_terms(pi_r: np.ndarray, pi_d: np.ndarray, a_r: np.ndarray, a_d: np.ndarray,
                    pi_patched: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mechanistic and behavioural selection terms.

    Args:
        pi_r, pi_d, a_r, a_d: ``[N, S]`` the recipient's and donor's strategy probabilities and
            forced-strategy accuracies.
        pi_patched: ``[K, N, S]`` the recipient's strategy probabilities with each of ``K`` patches.

    Returns:
        ``(mech [K, N], beh [N])`` in accuracy units.

    Raises:
        ValueError: shapes that do not match.
    """
    pi_r, pi_d, a_r, a_d, pp = (np.asarray(x, dtype=np.float64) for x in (pi_r, pi_d, a_r, a_d, pi_patched))
    _check_shapes(pi_r, pi_d, a_r, a_d, pp)
    w = (a_r + a_d) / 2
    return ((pp - pi_r[None]) * w[None]).sum(-1), ((pi_d - pi_r) * w).sum(-1)


def improvement_terms(pi_r: np.ndarray, pi_d: np.ndarray, a_r: np.ndarray, a_d: np.ndarray,
                      a_patched: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mechanistic and behavioural improvement terms (shapes as :func:`selection_terms`, with
    ``a_patched`` ``[K, N, S]`` the recipient's forced accuracies under each patch).

    Raises:
        ValueError: shapes that do not match.
    """
    pi_r, pi_d, a_r, a_d, ap = (np.asarray(x, dtype=np.float64) for x in (pi_r, pi_d, a_r, a_d, a_patched))
    _check_shapes(pi_r, pi_d, a_r, a_d, ap)
    w = (pi_r + pi_d) / 2
    return ((ap - a_r[None]) * w[None]).sum(-1), (w * (a_d - a_r)).sum(-1)


def _check_shapes(pi_r, pi_d, a_r, a_d, patched) -> None:
    if not (pi_r.ndim == 2 and pi_r.shape == pi_d.shape == a_r.shape == a_d.shape
            and patched.ndim == 3 and patched.shape[1:] == pi_r.shape):
        raise ValueError(f"expected [N, S] arrays and a [K, N, S] patched array; got {pi_r.shape}, {pi_d.shape}, "
                         f"{a_r.shape}, {a_d.shape}, {patched.shape}")
    for a in (pi_r, pi_d, a_r, a_d, patched):
        if not np.all(np.isfinite(a)):
            raise ValueError("the mechanistic terms need finite probabilities; got NaN or inf")


@dataclass
class TermRecovery:
    """The recovery of one behavioural term by one patch, over a set of problems.

    Attributes:
        value: ``sum mech / sum beh`` (fraction of the term carried by the patch), or None.
        ci: its 95% percentile bootstrap interval, or None.
        reason: why ``value`` is None (None when defined).
        mechanistic, mechanistic_ci: the mean mechanistic term and its CI (accuracy units).
        behaviour, behaviour_ci: the mean behavioural term on the same problems and its CI.
        n: problems.
        undefined_replicates: bootstrap replicates dropped (behavioural mean below ``tol``).
    """

    value: float | None
    ci: tuple[float, float] | None
    reason: str | None
    mechanistic: float
    mechanistic_ci: tuple[float, float] | None
    behaviour: float
    behaviour_ci: tuple[float, float] | None
    n: int
    undefined_replicates: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("ci", "mechanistic_ci", "behaviour_ci"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d


def term_recoveries(mech: Float[np.ndarray, "k n"], beh: Float[np.ndarray, " n"], *, n_boot: int = 1000,
                    seed: int = 0, tol: float = TERM_TOL, level: float = DEFAULT_LEVEL) -> list[TermRecovery]:
    """:class:`TermRecovery` of each of ``K`` patches (rows of ``mech``) against ``beh``.

    All patches share the bootstrap replicates (resampled problems), so their intervals compare.

    Raises:
        ValueError: shapes that do not match, or a non-finite value.
    """
    mech = np.atleast_2d(np.asarray(mech, dtype=np.float64))
    beh = np.asarray(beh, dtype=np.float64)
    if beh.ndim != 1 or mech.shape[1] != beh.shape[0] or beh.size == 0:
        raise ValueError(f"term_recoveries needs mech [K, N] and beh [N] with N >= 1; got {mech.shape}, {beh.shape}")
    if not (np.all(np.isfinite(mech)) and np.all(np.isfinite(beh))):
        raise ValueError("term_recoveries: NaN or inf in the terms")
    n = beh.size
    w = resample_counts(n, n_boot=n_boot, seed=seed)
    tot = w.sum(1)
    boot_beh = (w @ beh) / tot  # [B]
    boot_mech = (w @ mech.T) / tot[:, None]  # [B, K]
    ok = np.abs(boot_beh) >= tol
    beh_mean = float(beh.mean())
    beh_ci = percentile_ci(boot_beh, level)
    out = []
    for k in range(mech.shape[0]):
        m_mean = float(mech[k].mean())
        m_ci = percentile_ci(boot_mech[:, k], level)
        if abs(beh_mean) < tol:
            value, ci = None, None
            reason = (f"the behavioural term is {beh_mean:.3g} (below {tol:g} in absolute value): the two models "
                      "agree on it, so there is nothing to recover")
        else:
            value = float(m_mean / beh_mean)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(ok, boot_mech[:, k] / np.where(ok, boot_beh, 1.0), np.nan)
            ci, reason = percentile_ci(ratio, level), None
        out.append(TermRecovery(value=value, ci=ci, reason=reason, mechanistic=m_mean, mechanistic_ci=m_ci,
                                behaviour=beh_mean, behaviour_ci=beh_ci, n=n, undefined_replicates=int((~ok).sum())))
    return out


@dataclass
class PatchedBehaviour:
    """One direction's numbers: the recipient's and donor's ``pi`` and ``a`` and the patched ones.

    Attributes:
        direction: ``"post_into_pre"`` or ``"pre_into_post"``.
        hooks: the block hooks swept; ``n_layers`` layers each (cells hook-major).
        routing_positions: the prompt positions of each routing sweep (``prompt``, ``prompt_end``).
        pi_r, pi_d: ``[N, S]`` strategy probabilities of recipient and donor (unpatched).
        a_r, a_d: ``[N, S]`` exact forced accuracies of recipient and donor.
        pi_patched: per routing position, ``[K, N, S]``.
        a_patched: ``[K, N, S]`` (strategies not swept keep ``a_r``).
        logp_r, logp_d, logp_patched: the trace log-probabilities (nats) behind ``a``:
            ``[N, S]``, ``[N, S]``, ``[K, N, S]``.
        n_targets: ``[N, S]`` tokens scored per trace (the strategy word excluded, the end token
            included).
        strategies: the strategies whose traces were patched.
    """

    direction: str
    hooks: list[str]
    n_layers: int
    routing_positions: list[str]
    pi_r: np.ndarray
    pi_d: np.ndarray
    a_r: np.ndarray
    a_d: np.ndarray
    pi_patched: dict[str, np.ndarray]
    a_patched: np.ndarray
    logp_r: np.ndarray
    logp_d: np.ndarray
    logp_patched: np.ndarray
    n_targets: np.ndarray
    strategies: list[str]

    def terms(self, routing_position: str = "prompt") -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{"selection": (mech [K, N], beh [N]), "improvement": (...)}``."""
        return {
            "selection": selection_terms(self.pi_r, self.pi_d, self.a_r, self.a_d, self.pi_patched[routing_position]),
            "improvement": improvement_terms(self.pi_r, self.pi_d, self.a_r, self.a_d, self.a_patched),
        }


def _dedupe(cells: list[Cell]) -> tuple[list[Cell], list[int]]:
    """The cells to run and, per cell, the index of the one that computes it:
    ``blocks.{l}.hook_resid_pre`` is ``blocks.{l-1}.hook_resid_post`` (the same tensor, so the same
    patch) and is run once."""
    def key(c: Cell) -> tuple:
        out = []
        for site in c.sites:
            m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_pre", site)
            out.append(f"blocks.{int(m.group(1)) - 1}.hook_resid_post" if m and int(m.group(1)) > 0 else site)
        return tuple(sorted(out)), c.positions

    unique: list[Cell] = []
    first: dict[tuple, int] = {}
    where = []
    for c in cells:
        k = key(c)
        if k not in first:
            first[k] = len(unique)
            unique.append(c)
        where.append(first[k])
    return unique, where


def _chunks(idx: list[int], rows_per: int) -> list[list[int]]:
    return [idx[i:i + rows_per] for i in range(0, len(idx), rows_per)]


def patched_behaviour(
    recipient: Any,
    donor: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    hooks: Sequence[str],
    *,
    direction: str = "post_into_pre",
    routing_positions: Sequence[str] = ("prompt",),
    strategies: Sequence[str] = STRATEGIES,
    chat: bool = False,
    max_rows: int = 256,
    progress: bool = True,
) -> PatchedBehaviour:
    """Sweep every (hook, layer) of the recipient with the donor's activations: ``pi`` at the
    prompt positions and exact ``a`` at the response positions of each strategy's canonical trace.

    Problems are run in batches of one chain length (less padding) of at most ``max_rows`` rows.

    Args:
        recipient, donor: backends of the two checkpoints (same architecture and tokenizer).
        tokenizer: their tokenizer.
        problems: the ``N`` problems.
        hooks: block hooks swept at every layer (``K = len(hooks) * n_layers`` cells).
        direction: a label stored in the result.
        routing_positions: prompt position groups of the routing sweeps (``prompt`` is needed for
            the selection term).
        strategies: strategies whose traces are patched (all of them for the improvement term;
            a strategy left out keeps the recipient's ``a``).
        chat: prompts in the chat template.
        max_rows: rows per forward pass (a chunk of problems, times the cells batched with it).

    Returns:
        A :class:`PatchedBehaviour`.

    Raises:
        MetricError: a strategy word that is not one token, or a tokenizer without an end token.
        CellError / SiteError: an unknown hook.
    """
    from tqdm.auto import tqdm

    n_layers = recipient.dims.n_layers
    n, s_all = len(problems), list(STRATEGIES)
    k = len(hooks) * n_layers
    probs_metric = StrategyProbs(tokenizer, chat=chat)
    pi_r, pi_d = np.zeros((n, len(s_all))), np.zeros((n, len(s_all)))
    pi_patched = {pos: np.zeros((k, n, len(s_all))) for pos in routing_positions}
    logp_r, logp_d = np.zeros((n, len(s_all))), np.zeros((n, len(s_all)))
    logp_patched = np.zeros((k, n, len(s_all)))
    n_targets = np.zeros((n, len(s_all)), dtype=np.int64)
    per_chunk = max(1, max_rows // 2)  # at least two cells per forward pass
    jobs = [(pos, None, chunk) for pos in routing_positions for chunk in _chunks(list(range(n)), per_chunk)]
    jobs += [("response", s, chunk) for s in strategies for g in by_steps(problems) for chunk in _chunks(g, per_chunk)]
    bar = tqdm(total=len(jobs) * k, desc=f"patching {direction}", unit="cell", leave=False, disable=not progress)
    try:
        for pos, strategy, chunk in jobs:
            ps = [problems[i] for i in chunk]
            keys = [p.id for p in ps]
            if strategy is None:
                batch = encode_batch(tokenizer, [p.prompt for p in ps], keys=keys, chat=chat)
                metric: Any = probs_metric
            else:
                metric = TraceLogProb(tokenizer, [p.prompt for p in ps],
                                      [current_task().canonical_response(p, strategy) for p in ps],
                                      chat=chat)
                batch = encode_batch(tokenizer, metric.prompts, metric.response_texts(), keys=keys, chat=chat)
            plan = metric.plan(batch)
            cells = layer_cells(list(hooks), n_layers, pos)
            unique, where = _dedupe(cells)
            rec = baseline(recipient, batch, metric, plan).double().numpy()
            # one donor pass gives its activations (the patches) and its metric
            ran = donor.run(batch, read=sorted({s for c in unique for s in c.sites}), logits=plan.index)
            source = Donor(batch=batch, activations=dict(ran.activations))
            don = plan.reduce(ran.logits, 1)[0].detach().cpu().double().numpy()
            vals = sweep(recipient, batch, unique, metric, source, max_rows=max(max_rows, len(batch)), desc=None,
                         plan=plan).double().numpy()[where]
            if strategy is None:
                if pos == routing_positions[0]:
                    pi_r[chunk], pi_d[chunk] = rec, don
                pi_patched[pos][:, chunk] = vals
            else:
                j = s_all.index(strategy)
                logp_r[chunk, j], logp_d[chunk, j] = rec, don
                logp_patched[:, chunk, j] = vals
                n_targets[chunk, j] = [len(t) for t in metric._targets]
            bar.update(k)
    finally:
        bar.close()
    unswept = [s for s in s_all if s not in strategies]
    if unswept:  # the terms need both models' a of every strategy: measured unpatched
        cols = [s_all.index(s) for s in unswept]
        for backend, logp in ((recipient, logp_r), (donor, logp_d)):
            logp[:, cols] = trace_logprobs(backend, tokenizer, problems, chat=chat, batch_size=max_rows,
                                           strategies=unswept)
        logp_patched[:, :, cols] = logp_r[None, :, cols]
    a_r, a_d, a_p = np.exp(logp_r), np.exp(logp_d), np.exp(logp_patched)
    return PatchedBehaviour(direction=direction, hooks=list(hooks), n_layers=n_layers,
                            routing_positions=list(routing_positions), pi_r=pi_r, pi_d=pi_d, a_r=a_r, a_d=a_d,
                            pi_patched=pi_patched, a_patched=a_p, logp_r=logp_r, logp_d=logp_d,
                            logp_patched=logp_patched, n_targets=n_targets, strategies=list(strategies))


def recovery_curves(pb: PatchedBehaviour, *, n_boot: int = 1000, seed: int = 0, tol: float = TERM_TOL,
                    routing_position: str = "prompt") -> dict[str, dict[str, list[TermRecovery]]]:
    """``{"selection": {hook: [TermRecovery per layer]}, "improvement": {...}}`` of one direction."""
    out: dict[str, dict[str, list[TermRecovery]]] = {}
    for term, (mech, beh) in pb.terms(routing_position).items():
        recs = term_recoveries(mech, beh, n_boot=n_boot, seed=seed, tol=tol)
        out[term] = {h: recs[i * pb.n_layers:(i + 1) * pb.n_layers] for i, h in enumerate(pb.hooks)}
    return out


def earliest_layer(curve: Sequence[TermRecovery], threshold: float) -> int | None:
    """The first layer whose recovery CI lies above ``threshold`` (where the change forms), or None."""
    for layer, r in enumerate(curve):
        if r.ci is not None and r.ci[0] > threshold:
            return layer
    return None
