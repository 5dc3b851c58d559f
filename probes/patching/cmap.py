"""Cross-model activation patching (CMAP): routing and execution recovery curves.

CMAP (Prakash et al. 2024, arXiv 2402.14811) runs the same input through a *recipient* model
while its activations at chosen sites and positions are replaced by a *donor* model's on that
input. Between a pre-RL and a post-RL checkpoint of one base model (checked patchable by
:func:`activations.pair.check_pair`) it asks where the post-RL behaviour lives:

- **routing** (selection): the input is the prompt; the patch covers the prompt positions
  (``prompt``: all of them, or ``prompt_end`` only); the metric is the strategy logit difference
  at the first response token (:class:`~probes.patching.metrics.StrategyLogitDiff`, nats);
- **execution** (improvement): the input is the prompt and a teacher-forced correct trace of a
  fixed strategy; the patch covers the trace's positions (``response``); the metric is the mean
  log-probability of the correct step results and answer
  (:class:`~probes.patching.metrics.StepLogProb`, nats/token).

Each hook (``hook_resid_post``, ``hook_mlp_out``...) and layer is one cell; its recovery
(:mod:`probes.patching.recovery`: 0 = recipient unpatched, 1 = donor) over layers is a
*recovery curve*. Both directions are run: post-RL into pre-RL (``post_into_pre``: does the
post-RL activation make the pre-RL model behave as post-RL?) and pre-RL into post-RL
(``pre_into_post``).

Example::

    >>> batch, metric = routing_inputs(tok, problems)
    >>> curves = cmap(pre_backend, post_backend, batch, metric, ["hook_resid_post"], "prompt")  # doctest: +SKIP
    >>> curves["post_into_pre"].curve("hook_resid_post")[-1].value               # doctest: +SKIP
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from jaxtyping import Float
from torch import Tensor

from activations.batch import TokenBatch, encode_batch
from probes.patching.cells import Cell, Positions, layer_cells
from probes.patching.donor import Donor
from probes.patching.metrics import Metric, StepLogProb, StrategyLogitDiff
from probes.patching.recovery import DEFAULT_TOL, Recovery, recoveries
from probes.patching.sweep import DEFAULT_MAX_ROWS, baseline, sweep
from probes.tasks import STRATEGIES, current_task
from probes.tasks import TaskProblem as Problem

DIRECTIONS: tuple[str, ...] = ("post_into_pre", "pre_into_post")
"""Patch directions: ``donor_into_recipient``."""


@dataclass
class CurveResult:
    """Recovery curves of one direction: one :class:`Recovery` per (hook, layer) cell.

    Attributes:
        direction: ``"post_into_pre"`` or ``"pre_into_post"``.
        positions: the patched positions (see :mod:`probes.patching.cells`).
        metric: the metric's description (name, unit).
        hooks: the block hooks, in cell order (hook-major).
        n_layers: layers per hook.
        cells: the ``K = len(hooks) * n_layers`` cells.
        recipient: ``[N]`` metric of the recipient unpatched.
        donor: ``[N]`` metric of the donor.
        patched: ``[K, N]`` metric of the recipient with each cell's patch.
        recoveries: ``K`` recoveries (fraction of the gap), cell order.
        groups: ``N`` problem ids (the bootstrap's clusters).
    """

    direction: str
    positions: Positions
    metric: dict
    hooks: list[str]
    n_layers: int
    cells: list[Cell]
    recipient: Float[Tensor, " n"]
    donor: Float[Tensor, " n"]
    patched: Float[Tensor, "k n"]
    recoveries: list[Recovery]
    groups: list[str] = field(default_factory=list)

    def curve(self, hook: str) -> list[Recovery]:
        """The recoveries of ``hook`` at layers ``0 .. n_layers - 1``.

        Raises:
            KeyError: a hook that was not swept.
        """
        if hook not in self.hooks:
            raise KeyError(f"hook {hook!r} was not swept; swept: {self.hooks}")
        i = self.hooks.index(hook)
        return self.recoveries[i * self.n_layers:(i + 1) * self.n_layers]

    def at(self, hook: str, layer: int) -> Recovery:
        """The recovery of ``hook`` at ``layer`` (negative layers count from the end)."""
        return self.curve(hook)[layer]

    def to_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "positions": self.positions,
            "metric": self.metric,
            "n": int(self.recipient.shape[0]),
            "recipient_mean": float(self.recipient.mean()),
            "donor_mean": float(self.donor.mean()),
            "curves": {h: [r.to_dict() for r in self.curve(h)] for h in self.hooks},
        }


def routing_inputs(tokenizer: Any, problems: Sequence[Problem], chat: bool = False,
                   ) -> tuple[TokenBatch, StrategyLogitDiff]:
    """The prompts of ``problems`` as a batch (in the chat template with ``chat``), and the
    routing metric."""
    batch = encode_batch(tokenizer, [p.prompt for p in problems], keys=[p.id for p in problems], chat=chat)
    return batch, StrategyLogitDiff(tokenizer, chat=chat)


def execution_inputs(
    tokenizer: Any, problems: Sequence[Problem], strategies: Sequence[str] = STRATEGIES,
    parts: Sequence[str] = ("steps", "answer"), chat: bool = False,
) -> tuple[TokenBatch, StepLogProb, list[str]]:
    """Teacher-forced correct traces of each problem under each forced strategy (prompts in the
    chat template with ``chat``).

    Returns:
        ``(batch, metric, groups)``: rows problem-major (problem ``i``, strategy ``s``), the
        execution metric, and each row's problem id (rows of a problem are resampled together).

    Raises:
        ValueError: an unknown strategy.
    """
    prompts, responses, keys, groups = [], [], [], []
    for p in problems:
        for s in strategies:
            prompts.append(p.prompt)
            responses.append(current_task().canonical_response(p, s))
            keys.append(f"{p.id}/{s}")
            groups.append(p.id)
    batch = encode_batch(tokenizer, prompts, responses, keys=keys, chat=chat)
    return batch, StepLogProb(tokenizer, prompts, responses, parts, chat=chat), groups


def cross_model_patching(
    recipient: Any,
    donor: Any,
    batch: TokenBatch,
    metric: Metric,
    hooks: Sequence[str],
    positions: Positions,
    *,
    direction: str = "post_into_pre",
    groups: Sequence[str] | None = None,
    tol: float = DEFAULT_TOL,
    n_boot: int = 1000,
    seed: int = 0,
    max_rows: int = DEFAULT_MAX_ROWS,
    batched: bool = True,
    desc: str | None = None,
) -> CurveResult:
    """One direction of CMAP: the donor's activations at every (hook, layer) patched into the
    recipient at ``positions``, one cell at a time.

    Args:
        recipient, donor: backends of the two checkpoints (same architecture and tokenizer).
        batch: the inputs, run through both models.
        metric: the score (routing or execution).
        hooks: block hooks to sweep over all layers.
        positions: where to patch (``prompt``, ``prompt_end``, ``response``...).
        direction: a label stored in the result.
        groups: problem id of each row (default: the batch keys).
        tol, n_boot, seed: the recovery's gap tolerance and bootstrap.
        max_rows, batched: see :func:`probes.patching.sweep.sweep`.

    Returns:
        A :class:`CurveResult`.

    Raises:
        CellError: positions the batch lacks (``response`` without a trace).
        SiteError: an unknown hook.
    """
    n_layers = recipient.dims.n_layers
    cells = layer_cells(hooks, n_layers, positions)
    plan = metric.plan(batch)
    sites = sorted({s for c in cells for s in c.sites})
    source = Donor.read(donor, batch, sites)
    rec = baseline(recipient, batch, metric, plan)
    don = baseline(donor, batch, metric, plan)
    patched = sweep(recipient, batch, cells, metric, source, batched=batched, max_rows=max_rows,
                    desc=desc or f"CMAP {direction} @ {positions}", plan=plan)
    groups = list(groups) if groups is not None else list(batch.keys)
    recs = recoveries(patched, rec, don, tol=tol, n_boot=n_boot, seed=seed, groups=groups)
    return CurveResult(direction=direction, positions=positions, metric=metric.describe(), hooks=list(hooks),
                       n_layers=n_layers, cells=cells, recipient=rec, donor=don, patched=patched,
                       recoveries=recs, groups=groups)


def cmap(pre: Any, post: Any, batch: TokenBatch, metric: Metric, hooks: Sequence[str], positions: Positions,
         **kwargs: Any) -> dict[str, CurveResult]:
    """Both directions of :func:`cross_model_patching`: ``{"post_into_pre": ..., "pre_into_post": ...}``.

    Keyword arguments are passed on (``groups``, ``tol``, ``n_boot``, ``max_rows``...).
    """
    return {
        "post_into_pre": cross_model_patching(pre, post, batch, metric, hooks, positions,
                                              direction="post_into_pre", **kwargs),
        "pre_into_post": cross_model_patching(post, pre, batch, metric, hooks, positions,
                                              direction="pre_into_post", **kwargs),
    }
