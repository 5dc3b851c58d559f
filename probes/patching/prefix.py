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
from dataclasses import dataclass
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
                pos: Tensor, kernel: str, cache_kw: str) -> Tensor:
    """The last layer's output at the ``query`` tokens only (``[rows, len(query), d]``).

    Only the query tokens' outputs reach the metric; the other block tokens matter to them only
    through their keys and values, which the layer's own attention module computes (its queries
    and output projection are wasted, its MLP is skipped). Keys are passed in any order with a
    mask built from their positions.
    """
    device = h.device
    block = torch.arange(p0, p0 + h.shape[1], device=device)
    is_query = torch.isin(block, query)
    others = block[~is_query]
    cos, sin = cos_sin
    kp, vp = pk, pv
    key_pos = torch.arange(p0, device=device)
    if len(others):
        rel = others - p0
        cap = _Capture(pk, pv)
        normed = layer.input_layernorm(h[:, rel])
        layer.self_attn(hidden_states=normed, position_embeddings=(cos[:, rel], sin[:, rel]),
                        attention_mask=_mask(others, torch.cat([key_pos, others]), kernel, h.dtype), **{cache_kw: cap})
        kp, vp = torch.cat([pk, cap.new_keys], 2), torch.cat([pv, cap.new_values], 2)
        key_pos = torch.cat([key_pos, others])
    rel_q = query - p0
    out = layer(h[:, rel_q], attention_mask=_mask(query, torch.cat([key_pos, query]), kernel, h.dtype),
                position_ids=pos[:, rel_q], use_cache=True, position_embeddings=(cos[:, rel_q], sin[:, rel_q]),
                **{cache_kw: _PrefixCache(kp, vp)})
    return out[0] if isinstance(out, tuple) else out


def _kv(cache: Any, layer: int) -> tuple[Tensor, Tensor]:
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]  # older transformers


@dataclass
class _Clean:
    resid_pre: list[Tensor]  # per layer [N, T, d]
    keys: list[Tensor]  # per layer [N, kv, T, dh]
    values: list[Tensor]
    logits: Tensor  # [N, T, vocab]


def _clean_pass(model: Any, batch: TokenBatch) -> _Clean:
    inputs = batch.model_inputs(next(model.parameters()).device)
    out = model(**inputs, use_cache=True, output_hidden_states=True)
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = out.past_key_values
    n_layers = len(model.model.layers)
    kv = [_kv(cache, l) for l in range(n_layers)]
    return _Clean(resid_pre=list(out.hidden_states[:n_layers]), keys=[k for k, _ in kv],
                  values=[v for _, v in kv], logits=out.logits)


def _groups(cells: list[tuple[int, int, int]], n: int, max_rows: int, span: int) -> list[list[tuple[int, int, int]]]:
    """Cells ``(index, layer, position)`` grouped by blocks of ``span`` consecutive positions,
    at most ``max_rows // n`` cells per group."""
    per = max(1, max_rows // n)
    by_block: dict[int, list[tuple[int, int, int]]] = {}
    for c in cells:
        by_block.setdefault(c[2] // span, []).append(c)
    out = []
    for key in sorted(by_block):
        block = sorted(by_block[key], key=lambda c: (c[1], c[2]))
        out += [block[i:i + per] for i in range(0, len(block), per)]
    return out


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
    n, t = len(batch), batch.seq_len
    span = span or max(1, -(-t // 2))
    kernel = model.config._attn_implementation
    layers = inner.layers
    cache_kw = "cache" if "cache" in inspect.signature(layers[0].forward).parameters else "past_key_values"
    with torch.inference_mode():
        clean = _clean_pass(model, batch)
        device = clean.logits.device
        rows_m, cols_m = plan.index.rows.to(device), plan.index.cols.to(device)
        base_vals = plan.reduce(clean.logits[rows_m, cols_m], 1)[0]
        out = base_vals.detach().cpu()[None].repeat(len(cells), 1)
        todo = []
        skipped = 0
        for i, layer, p in parsed:
            if p >= t:
                skipped += 1  # beyond every input: unpatched
                continue
            vals = donor.values(cells[i].sites[0], torch.arange(n), torch.full((n,), p)).to(device)
            if torch.equal(vals.to(clean.resid_pre[layer].dtype), clean.resid_pre[layer][:, p]):
                skipped += 1  # writes the values already there: a no-op
                continue
            todo.append((i, layer, p, vals))
        if on_cells is not None and skipped:
            on_cells(skipped)
        vals_of = {i: v for i, _, _, v in todo}
        for group in _groups([(i, l, p) for i, l, p, _ in todo], n, max_rows, span):
            p0 = min(c[2] for c in group)
            w = t - p0
            pos = batch.position_ids[:1, p0:].to(device)
            cos_sin = inner.rotary_emb(clean.resid_pre[0][:1, p0:], pos)
            h = clean.resid_pre[0].new_zeros((0, w, clean.resid_pre[0].shape[-1]))
            prob = torch.zeros(0, dtype=torch.long, device=device)
            order: list[int] = []
            query = torch.unique(cols_m[cols_m >= p0])  # tokens whose logits the metric reads
            last = len(layers) - 1
            for layer_idx, layer in enumerate(layers):
                start = [c for c in group if c[1] == layer_idx]
                if start:
                    new = clean.resid_pre[layer_idx][:, p0:].repeat(len(start), 1, 1)
                    for j, (i, _, p) in enumerate(start):
                        new[j * n:(j + 1) * n, p - p0] = vals_of[i].to(new.dtype)
                    h = torch.cat([h, new], 0)
                    prob = torch.cat([prob, torch.arange(n, device=device).repeat(len(start))])
                    order += [i for i, _, _ in start]
                if h.shape[0] == 0:
                    continue
                pk, pv = clean.keys[layer_idx][prob, :, :p0], clean.values[layer_idx][prob, :, :p0]
                if layer_idx == last and len(query) < w:
                    h = _last_layer(layer, h, pk, pv, p0, query, cos_sin, pos, kernel, cache_kw)
                    cols_in_h = {int(c): k for k, c in enumerate(query.tolist())}
                else:
                    h = layer(h, attention_mask=_mask(torch.arange(p0, t, device=device), torch.arange(t, device=device),
                                                      kernel, h.dtype),
                              position_ids=pos, use_cache=True, position_embeddings=cos_sin, **{cache_kw: _PrefixCache(pk, pv)})
                    h = h[0] if isinstance(h, tuple) else h
                    cols_in_h = {c: c - p0 for c in range(p0, t)}
            m = len(order)
            tiled = plan.tiled(m)
            r, c = tiled.rows.to(device), tiled.cols.to(device)
            inside = c >= p0
            logits = clean.logits[r % n, c].clone()
            if bool(inside.any()):
                ci = torch.tensor([cols_in_h[int(x)] for x in c[inside].tolist()], dtype=torch.long, device=device)
                hsel = h[r[inside], ci]
                logits[inside] = model.lm_head(inner.norm(hsel)).to(logits.dtype)
            vals = plan.reduce(logits, m).detach().cpu()
            for j, i in enumerate(order):
                out[i] = vals[j]
            if on_cells is not None:
                on_cells(m)
    log.debug("prefix sweep: %d cells, %d no-ops skipped", len(cells), skipped)
    return out
