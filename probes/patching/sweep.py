"""Sweeps: the metric of many patch configurations, many per forward pass.

A sweep scores ``K`` cells (:mod:`probes.patching.cells`) on a batch of ``N`` problems: for each
cell, the recipient's forward pass with the donor's values (:mod:`probes.patching.donor`)
written at the cell's sites and positions, scored by a metric (:mod:`probes.patching.metrics`).

**Batched** (the default): the batch is repeated ``m`` times along the batch dimension, copy
``j`` carries cell ``j``'s patch, and one :meth:`~activations.backends.base.Backend.run` scores
``m`` cells (``m * N <= max_rows``). Rows of a batch never see each other (attention is masked
per row), so each copy computes exactly what a forward pass with that one patch computes: the
numbers equal those of **looped** (one forward per cell, as TransformerLens'
``patching.generic_activation_patch`` does) up to float rounding of the batched matrix products
(~1e-6 in float32; tests hold them to 1e-5).

**Prefix reuse** (``engine="auto"``, the default): cells that patch one ``hook_resid_pre`` site
at one token index of unpadded inputs are computed by :mod:`probes.patching.prefix`, which runs
only the layers and tokens a patch can change (and skips patches that write the values already
there); every other cell goes through the backend as above. ``engine="backend"`` sends every cell
through the backend.

Example::

    >>> cells = layer_cells(["hook_resid_post"], n_layers, "prompt")
    >>> values = sweep(recipient, batch, cells, StrategyLogitDiff(tok), donor)  # [K, N] nats  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from activations.backends.base import Patch
from activations.batch import TokenBatch
from activations.positions import PositionIndex
from probes.patching import prefix
from probes.patching.cells import Cell, resolve_cell_positions
from probes.patching.donor import Donor
from probes.patching.metrics import Metric, MetricPlan

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 256
"""Rows (problems x cells) per forward pass of a batched sweep: bounds memory by the batch."""
ENGINES: tuple[str, ...] = ("auto", "backend")
"""``auto``: prefix reuse where it applies (:mod:`probes.patching.prefix`), the backend elsewhere."""


class SweepError(ValueError):
    """A sweep that cannot run (mismatched batches, bad chunking); the message says why."""


def repeat_batch(batch: TokenBatch, m: int) -> TokenBatch:
    """``batch`` repeated ``m`` times along the batch dimension (copy ``j`` at rows ``j*N ..``).

    Raises:
        SweepError: ``m < 1``.
    """
    if m < 1:
        raise SweepError(f"cannot repeat a batch {m} times")
    if m == 1:
        return batch
    return replace(
        batch,
        input_ids=batch.input_ids.repeat(m, 1),
        attention_mask=batch.attention_mask.repeat(m, 1),
        position_ids=batch.position_ids.repeat(m, 1),
        lengths=batch.lengths.repeat(m),
        pad_offset=batch.pad_offset.repeat(m),
        prompt_end=batch.prompt_end.repeat(m),
        steps=[list(s) for s in batch.steps] * m,
        has_response=list(batch.has_response) * m,
        keys=[f"{k}#{j}" for j in range(m) for k in batch.keys],
    )


def _cell_writes(cell: Cell, batch: TokenBatch, donor: Donor) -> list[tuple[str, Tensor, Tensor, Tensor, Tensor]]:
    """Per site: ``(site, rows, positions, columns, values)`` of one cell in the base batch."""
    rows, pos = resolve_cell_positions(cell.positions, batch)
    r = torch.tensor(rows, dtype=torch.long)
    p = torch.tensor(pos, dtype=torch.long)
    cols = batch.pad_offset[r] + p if len(rows) else p.clone()
    return [(s, r, p, cols, donor.values(s, r, p)) for s in cell.sites]


def cell_patches(cells: Sequence[Cell], batch: TokenBatch, donor: Donor) -> list[Patch]:
    """The patches of ``cells`` on ``batch`` repeated ``len(cells)`` times (copy ``j`` carries
    cell ``j``): one :class:`~activations.backends.base.Patch` per site, with the coordinates of
    every copy that patches it and the donor's values there.

    Raises:
        CellError / DonorError: a cell that cannot be resolved or served.
    """
    n = len(batch)
    by_site: dict[str, list[tuple[Tensor, Tensor, Tensor, Tensor]]] = {}
    for j, cell in enumerate(cells):
        for site, r, p, c, v in _cell_writes(cell, batch, donor):
            if len(r):
                by_site.setdefault(site, []).append((r + j * n, c, p, v))
    out = []
    for site, parts in by_site.items():
        rows = torch.cat([x[0] for x in parts])
        cols = torch.cat([x[1] for x in parts])
        pos = torch.cat([x[2] for x in parts])
        vals = torch.cat([x[3] for x in parts])
        out.append(Patch(site, vals, PositionIndex(rows=rows, cols=cols, positions=pos, labels=["patch"] * len(rows))))
    return out


def _check(batch: TokenBatch, donor: Donor) -> None:
    if len(donor.batch) != len(batch):
        raise SweepError(f"the donor run has {len(donor.batch)} inputs but the recipient batch has {len(batch)}")


def sweep(
    backend: Any,
    batch: TokenBatch,
    cells: Sequence[Cell],
    metric: Metric,
    donor: Donor,
    *,
    batched: bool = True,
    max_rows: int = DEFAULT_MAX_ROWS,
    desc: str | None = "patching sweep",
    plan: MetricPlan | None = None,
    engine: str = "auto",
) -> Float[Tensor, "k batch"]:
    """The metric of the recipient run with each cell's patch: ``[K, N]`` in the metric's unit.

    Args:
        backend: the recipient's :class:`~activations.backends.base.Backend`.
        batch: the recipient's inputs (``N`` rows).
        cells: the ``K`` patch configurations.
        metric: how each patched run is scored.
        donor: the values to write (same rows as ``batch``).
        batched: True: ``max_rows // N`` cells per forward pass; False: one forward per cell.
        max_rows: rows per forward pass when batched (at least ``N``).
        desc: the progress bar's label (None: no bar).
        plan: ``metric.plan(batch)`` when the caller already has it.
        engine: ``"auto"`` (prefix reuse for eligible cells when batched) or ``"backend"``.

    Returns:
        ``[K, N]`` on the CPU (float32; float64 for a float64 model); row ``k`` is cell ``k``.

    Raises:
        SweepError: the donor's batch does not match, ``max_rows < N`` when batched, or an
            unknown engine.
        CellError / DonorError / PatchError: a cell that cannot be applied.
    """
    _check(batch, donor)
    if engine not in ENGINES:
        raise SweepError(f"unknown engine {engine!r}: use one of {list(ENGINES)}")
    n = len(batch)
    plan = plan or metric.plan(batch)
    if not cells:
        return torch.zeros(0, n)
    if batched and max_rows < n:
        raise SweepError(f"max_rows={max_rows} is smaller than the batch of {n} problems")
    out: list[Tensor | None] = [None] * len(cells)
    fast: list[int] = []
    if batched and engine == "auto" and prefix.unsupported_reason(backend, batch) is None:
        fast = [i for i, c in enumerate(cells) if prefix.eligible(c)]
    fast_set = set(fast)
    slow = [i for i in range(len(cells)) if i not in fast_set]
    per = max(1, max_rows // n) if batched else 1
    bar = tqdm(total=len(cells), desc=desc, disable=desc is None, leave=False, unit="cell")
    try:
        if fast:
            vals = prefix.prefix_sweep(backend, batch, [cells[i] for i in fast], plan, donor, max_rows=max_rows,
                                       on_cells=bar.update)
            for j, i in enumerate(fast):
                out[i] = vals[j]
        for start in range(0, len(slow), per):
            idx = slow[start:start + per]
            m = len(idx)
            rep = repeat_batch(batch, m)
            logits = backend.run(rep, patches=cell_patches([cells[i] for i in idx], batch, donor),
                                 logits=plan.tiled(m)).logits
            vals = plan.reduce(logits, m).detach().cpu()
            for j, i in enumerate(idx):
                out[i] = vals[j]
            bar.update(m)
    finally:
        bar.close()
    return torch.stack(out, 0)  # type: ignore[arg-type]


def baseline(backend: Any, batch: TokenBatch, metric: Metric, plan: MetricPlan | None = None) -> Float[Tensor, " batch"]:
    """The metric of an unpatched forward pass of ``batch``: ``[N]`` float32 on the CPU."""
    plan = plan or metric.plan(batch)
    logits = backend.run(batch, logits=plan.index).logits
    return plan.reduce(logits, 1)[0].detach().cpu()
