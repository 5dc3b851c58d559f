"""Prefix reuse: exact ``hook_resid_pre`` layer x position sweeps that skip what cannot change.

A patch of ``blocks.{l}.hook_resid_pre`` at token ``p`` changes nothing at layers below ``l``
and nothing at tokens before ``p`` (attention is causal). So the patched forward pass only has to
run layers ``l .. L-1`` on tokens ``p .. T-1``, reading the recipient's clean keys and values for
tokens ``< p`` from one clean pass (its KV cache) and the recipient's clean residual stream
entering layer ``l`` for tokens ``>= p``. Three more savings, all exact:

- cells run many per call: the rows of cells whose tokens fall in one block ``p0 .. T-1`` go
  through the layers together, each row entering at its own layer (so a row for layer 3 costs one
  layer, a row for layer 0 all of them);
- the last layer runs in full only at the tokens whose logits the metric reads; the other tokens
  matter to those only through their keys and values at that layer, which the layer's attention
  module computes (its MLP is skipped there);
- a cell whose donor values equal the recipient's clean values (e.g. the embedding of a token the
  two inputs share) changes nothing: its value is the clean one, without a forward pass.

This is the same computation as a full patched forward pass, done on fewer tokens and layers, so
it gives the numbers of one patch per forward pass up to float rounding (tests hold it to 1e-5
against :func:`probes.patching.sweep.sweep` with one backend run per cell). It runs the Hugging
Face decoder layers of the checkpoint's model directly (the backends have no way to start a pass
at a layer with a KV-cache prefix), so it applies only where that is well defined
(:func:`unsupported_reason`): cells that patch one ``hook_resid_pre`` site at one token index,
inputs without padding (one token length), the Qwen2/Llama module layout, and the ``sdpa`` or
``eager`` attention kernels. :func:`probes.patching.sweep.sweep` uses it for such cells by
default (``engine="auto"``) and runs every other cell through the backend.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from activations.batch import TokenBatch
from probes.patching.cells import Cell
from probes.patching.donor import Donor
from probes.patching.metrics import MetricPlan

log = logging.getLogger(__name__)

KERNELS: tuple[str, ...] = ("sdpa", "eager")
"""Attention implementations the prefix engine builds masks for."""
MODEL_TYPES: tuple[str, ...] = ("qwen2", "llama", "mistral")
"""Model types whose decoder the prefix engine runs layer by layer (unscaled embeddings, no
sliding windows, the ``model.layers[l].self_attn`` layout)."""


def _resid_pre_layer(cell: Cell) -> int | None:
    """The layer of a single-site ``hook_resid_pre`` cell at a token index, else None."""
    if len(cell.sites) != 1 or not isinstance(cell.positions, int):
        return None
    parts = cell.sites[0].split(".")
    if len(parts) == 3 and parts[0] == "blocks" and parts[2] == "hook_resid_pre":
        return int(parts[1])
    return None


def eligible(cell: Cell) -> bool:
    """Whether a cell is one ``hook_resid_pre`` site at one token index."""
    return _resid_pre_layer(cell) is not None


def _model(backend: Any) -> Any:
    ckpt = getattr(backend, "checkpoint", None)
    return getattr(ckpt, "model", None)


def unsupported_reason(backend: Any, batch: TokenBatch) -> str | None:
    """Why the prefix engine cannot run this backend's model on ``batch`` (None: it can)."""
    model = _model(backend)
    if model is None:
        return "the backend exposes no checkpoint model"
    inner = getattr(model, "model", None)
    for name in ("layers", "norm", "rotary_emb", "embed_tokens"):
        if inner is None or not hasattr(inner, name):
            return f"the model has no model.{name} (not the Qwen2/Llama layout)"
    if not hasattr(model, "lm_head"):
        return "the model has no lm_head"
    if not all(hasattr(inner.layers[0], a) for a in ("input_layernorm", "self_attn")):
        return "its decoder layers have no input_layernorm and self_attn (not the Qwen2/Llama layout)"
    kernel = getattr(model.config, "_attn_implementation", None)
    if kernel not in KERNELS:
        return f"attention kernel {kernel!r} (the prefix engine builds masks for {list(KERNELS)})"
    if any(t != "full_attention" for t in (getattr(model.config, "layer_types", None) or [])):
        return "sliding-window layers"
    if getattr(model.config, "model_type", None) not in MODEL_TYPES:
        return f"model type {getattr(model.config, 'model_type', None)!r} (the prefix engine runs {list(MODEL_TYPES)})"
    if bool((batch.attention_mask == 0).any()):
        return "a padded batch (inputs of different token lengths)"
    return None


class _PrefixCache:
    """A stand-in for a Hugging Face ``Cache`` that prepends fixed keys and values of the
    prefix tokens to the block's own (``[rows, kv_heads, tokens, d_head]``)."""

    def __init__(self, keys: Tensor, values: Tensor):
        self.keys, self.values = keys, values

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if self.keys.shape[2] == 0:
            return key_states, value_states
        return torch.cat([self.keys, key_states], 2), torch.cat([self.values, value_states], 2)


def _mask(query_pos: Tensor, key_pos: Tensor, kernel: str, dtype: torch.dtype) -> Tensor:
    """The causal mask ``[1, 1, q, k]`` of queries at ``query_pos`` over keys at ``key_pos``
    (any order): boolean (True = attend) for ``sdpa``, additive for ``eager``."""
    allowed = (key_pos[None, :] <= query_pos[:, None])[None, None]
    if kernel == "eager":
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return allowed


class _Capture(_PrefixCache):
    """A :class:`_PrefixCache` that also keeps the block's own keys and values."""

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        self.new_keys, self.new_values = key_states, value_states
        return super().update(key_states, value_states, layer_idx)


def _last_layer(layer: Any, h: Tensor, pk: Tensor, pv: Tensor, p0: int, query: Tensor, cos_sin: tuple[Tensor, Tensor],
                pos: Tensor, kernel: str, cache_kw: str) -> tuple[Tensor, Tensor, Tensor]:
    """The last layer's output at the ``query`` tokens only, and the block's keys and values.

    Only the query tokens' outputs reach the metric; the other block tokens matter to them only
    through their keys and values, which the layer's own attention module computes (its queries
    and output projection are wasted, its MLP is skipped). Keys are passed in any order with a
    mask built from their positions.

    Returns:
        ``(out [rows, len(query), d], keys, values)``; keys and values ``[rows, kv, w, d_head]``
        of the block's tokens in position order.
    """
    device = h.device
    w = h.shape[1]
    block = torch.arange(p0, p0 + w, device=device)
    is_query = torch.isin(block, query)
    others = block[~is_query]
    rel_q = query - p0
    cos, sin = cos_sin
    kp, vp = pk, pv
    key_pos = torch.arange(p0, device=device)
    ko = vo = None
    if len(others):
        rel = others - p0
        cap = _Capture(pk, pv)
        normed = layer.input_layernorm(h[:, rel])
        layer.self_attn(hidden_states=normed, position_embeddings=(cos[:, rel], sin[:, rel]),
                        attention_mask=_mask(others, torch.cat([key_pos, others]), kernel, h.dtype), **{cache_kw: cap})
        ko, vo = cap.new_keys, cap.new_values
        kp, vp = _cat(pk, ko), _cat(pv, vo)
        key_pos = torch.cat([key_pos, others])
    cap_q = _Capture(kp, vp)
    out = layer(h[:, rel_q], attention_mask=_mask(query, torch.cat([key_pos, query]), kernel, h.dtype),
                position_ids=pos[:, rel_q], use_cache=True, position_embeddings=(cos[:, rel_q], sin[:, rel_q]),
                **{cache_kw: cap_q})
    out = out[0] if isinstance(out, tuple) else out
    kq, vq = cap_q.new_keys, cap_q.new_values
    keys = kq.new_empty((kq.shape[0], kq.shape[1], w, kq.shape[3]))
    values = torch.empty_like(keys)
    keys[:, :, rel_q], values[:, :, rel_q] = kq, vq
    if ko is not None:
        keys[:, :, others - p0], values[:, :, others - p0] = ko, vo
    return out, keys, values


def _cat(prefix: Tensor, new: Tensor) -> Tensor:
    return new if prefix.shape[2] == 0 else torch.cat([prefix, new], 2)


def _groups(cells: list[tuple[int, int, int]], n: int, max_rows: int, span: int) -> list[list[tuple[int, int, int]]]:
    """Cells ``(index, layer, position)`` grouped by blocks of ``span`` consecutive positions
    (first block first), at most ``max_rows // n`` cells per group."""
    per = max(1, max_rows // n)
    by_block: dict[int, list[tuple[int, int, int]]] = {}
    for c in cells:
        by_block.setdefault(c[2] // span, []).append(c)
    out = []
    for key in sorted(by_block):
        block = sorted(by_block[key], key=lambda c: (c[1], c[2]))
        out += [block[i:i + per] for i in range(0, len(block), per)]
    return out


@dataclass
class _Clean:
    """The recipient's clean run, filled in by the first group: per layer, the residual stream
    entering it ``[N, T, d]`` and its keys and values ``[N, kv, T, d_head]``; the logits at the
    metric's coordinates ``[n, vocab]``."""

    resid_pre: list[Tensor] = field(default_factory=list)
    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    logits: Tensor | None = None


def _donor_values(donor: Donor, todo: list[tuple[int, int, int]], n: int, device: Any) -> dict[int, Tensor]:
    """The donor's value of each cell, ``{cell index: [N, d]}``, one gather per layer."""
    vals: dict[int, Tensor] = {}
    for layer_idx in sorted({c[1] for c in todo}):
        here = [c for c in todo if c[1] == layer_idx]
        ps = torch.tensor([c[2] for c in here])
        got = donor.values(f"blocks.{layer_idx}.hook_resid_pre", torch.arange(n).repeat(len(here)),
                           ps.repeat_interleave(n)).to(device)
        for j, c in enumerate(here):
            vals[c[0]] = got[j * n:(j + 1) * n]
    return vals


def prefix_sweep(
    backend: Any,
    batch: TokenBatch,
    cells: Sequence[Cell],
    plan: MetricPlan,
    donor: Donor,
    *,
    max_rows: int = 256,
    span: int | None = None,
    on_cells: Any = None,
) -> Float[Tensor, "k batch"]:
    """The metric of each ``hook_resid_pre`` cell, computed with prefix reuse: ``[K, N]``.

    The recipient's clean run is computed alongside the first group of cells: its rows enter at
    layer 0 and give every other row its clean residual stream, keys and values, and the
    unpatched metric (the value of cells without effect).

    Args:
        backend: the recipient's backend (its checkpoint's Hugging Face model is run).
        batch: the recipient's inputs, unpadded (``N`` rows of ``T`` tokens).
        cells: cells for which :func:`eligible` holds.
        plan: the metric's plan on ``batch``.
        donor: the donor's activations at the cells' sites.
        max_rows: rows (cells x problems) per call.
        span: positions per block of tokens run together (default ``ceil(T / 2)``: two blocks,
            which for cells spread evenly over positions runs 3/4 of the tokens of one block at
            twice its calls; more blocks save less compute than their calls cost on small models).
        on_cells: a callback ``f(k)`` after ``k`` more cells are done (progress bars).

    Returns:
        ``[K, N]`` float32 (float64 for a float64 model) on the CPU.

    Raises:
        ValueError: an ineligible cell, or a model or batch :func:`unsupported_reason` refuses.
    """
    reason = unsupported_reason(backend, batch)
    if reason is not None:
        raise ValueError(f"the prefix engine cannot run: {reason}")
    parsed = []
    for i, c in enumerate(cells):
        layer = _resid_pre_layer(c)
        if layer is None:
            raise ValueError(f"cell {c.label} is not one hook_resid_pre site at one token index")
        parsed.append((i, layer, int(c.positions)))
    model = _model(backend)
    inner = model.model
    layers = inner.layers
    n_layers = len(layers)
    n, t = len(batch), batch.seq_len
    span = span or max(1, -(-t // 2))
    kernel = model.config._attn_implementation
    cache_kw = "cache" if "cache" in inspect.signature(layers[0].forward).parameters else "past_key_values"
    device = next(model.parameters()).device
    todo = [c for c in parsed if c[2] < t]  # a token beyond every input patches nothing
    out: list[Tensor | None] = [None] * len(cells)
    with torch.inference_mode():
        vals = _donor_values(donor, todo, n, device)
        groups = _groups(todo, n, max_rows, span)
        if not groups or min(c[2] for c in groups[0]) // span != 0:
            groups.insert(0, [])  # the clean run needs a group that starts at token 0
        rows_m, cols_m = plan.index.rows.to(device), plan.index.cols.to(device)
        clean = _Clean()
        pos_all = batch.position_ids.to(device)
        for g, group in enumerate(groups):
            with_clean = g == 0
            p0 = 0 if with_clean else min(c[2] for c in group)
            w = t - p0
            pos = pos_all[:1, p0:]
            h = inner.embed_tokens(batch.input_ids.to(device)) if with_clean else None
            cos_sin = inner.rotary_emb(h if with_clean else clean.resid_pre[0], pos)
            query = torch.unique(cols_m[cols_m >= p0])  # tokens whose logits the metric reads
            prob = torch.arange(n, device=device) if with_clean else torch.zeros(0, dtype=torch.long, device=device)
            order: list[int] = []
            for layer_idx, layer in enumerate(layers):
                if with_clean:
                    clean.resid_pre.append(h[:n])
                start = [c for c in group if c[1] == layer_idx]
                if start:
                    base = clean.resid_pre[layer_idx][:, p0:]
                    v = torch.stack([vals[c[0]] for c in start]).to(base.dtype)  # [s, N, d]
                    rel = torch.tensor([c[2] - p0 for c in start], device=device)
                    same = (v == base[:, rel].transpose(0, 1)).flatten(1).all(1)  # writes what is there
                    keep = (~same).nonzero()[:, 0]
                    if len(keep):
                        k = len(keep)
                        new = base.repeat(k, 1, 1)
                        new[torch.arange(k * n, device=device), rel[keep].repeat_interleave(n)] = v[keep].reshape(k * n, -1)
                        h = new if h is None else torch.cat([h, new], 0)
                        prob = torch.cat([prob, torch.arange(n, device=device).repeat(k)])
                        order += [start[j][0] for j in keep.tolist()]
                if h is None:
                    continue
                pk = clean.keys[layer_idx][prob, :, :p0] if p0 else h.new_zeros((h.shape[0], 0, 0, 0))
                pv = clean.values[layer_idx][prob, :, :p0] if p0 else pk
                if layer_idx == n_layers - 1 and len(query) < w:
                    h, keys, values = _last_layer(layer, h, pk, pv, p0, query, cos_sin, pos, kernel, cache_kw)
                    cols_in_h = {int(c): j for j, c in enumerate(query.tolist())}
                else:
                    cache = _Capture(pk, pv)
                    mask = _mask(torch.arange(p0, t, device=device), torch.arange(t, device=device), kernel, h.dtype)
                    h = layer(h, attention_mask=mask, position_ids=pos, use_cache=True, position_embeddings=cos_sin,
                              **{cache_kw: cache})
                    h = h[0] if isinstance(h, tuple) else h
                    keys, values = cache.new_keys, cache.new_values
                    cols_in_h = {c: c - p0 for c in range(p0, t)}
                if with_clean:
                    clean.keys.append(keys[:n])
                    clean.values.append(values[:n])
            if with_clean:  # the clean rows' logits at every metric coordinate
                ci = torch.tensor([cols_in_h[int(x)] for x in cols_m.tolist()], dtype=torch.long, device=device)
                clean.logits = model.lm_head(inner.norm(h[rows_m, ci]))
            m = len(order)
            if m:
                tiled = plan.tiled(m)
                r, c = tiled.rows.to(device) + (n if with_clean else 0), tiled.cols.to(device)
                inside = c >= p0
                logits = clean.logits.repeat(m, 1)
                if bool(inside.any()):
                    ci = torch.tensor([cols_in_h[int(x)] for x in c[inside].tolist()], dtype=torch.long, device=device)
                    logits[inside] = model.lm_head(inner.norm(h[r[inside], ci])).to(logits.dtype)
                got = plan.reduce(logits, m).detach().cpu()
                for j, i in enumerate(order):
                    out[i] = got[j]
                if on_cells is not None:
                    on_cells(m)
        base_vals = plan.reduce(clean.logits, 1)[0].detach().cpu()
    rest = [i for i in range(len(cells)) if out[i] is None]  # writes what is there, or beyond every input
    for i in rest:
        out[i] = base_vals
    if on_cells is not None and rest:
        on_cells(len(rest))
    log.debug("prefix sweep: %d cells, %d without effect (no forward pass)", len(cells), len(rest))
    return torch.stack(out, 0)  # type: ignore[arg-type]
