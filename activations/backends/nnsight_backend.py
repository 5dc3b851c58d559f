"""The nnsight backend (the default): canonical sites on a Hugging Face model through nnsight.

nnsight (https://nnsight.net) runs the body of a ``with model.trace(...)`` block interleaved with
the forward pass: each ``module.input`` / ``module.output`` access waits for that module to run,
and assigning to it replaces the value the model carries on. One trace is one forward pass, so a
:meth:`~activations.backends.base.Backend.run` with any number of reads and writes, for every row
of the batch, costs one forward. The trace is a context manager: hooks exist only inside it, and
an error inside it leaves the model clean.

Site to module (Qwen2 / Llama / Mistral layout, ``model.model.layers[l]``):

================================  ==================================================
site                              module value
================================  ==================================================
``hook_embed``                    ``model.embed_tokens`` output
``blocks.l.hook_resid_pre``       ``layers[l]`` input (``hidden_states``)
``blocks.l.attn.hook_z``          ``layers[l].self_attn.o_proj`` input, viewed as
                                  ``[batch, pos, n_heads, d_head]``
``blocks.l.hook_attn_out``        ``layers[l].self_attn`` output[0]
``blocks.l.hook_resid_mid``       ``layers[l].post_attention_layernorm`` input (read);
                                  written through ``hook_attn_out`` (see base module)
``blocks.l.hook_mlp_out``         ``layers[l].mlp`` output
``blocks.l.hook_resid_post``      ``layers[l]`` output
``ln_final.hook_normalized``      ``x * rsqrt(mean(x^2) + eps)`` of ``model.norm``'s input
                                  (read); written as ``model.norm`` output ``= weight * value``
================================  ==================================================

When no logits are asked for, the trace stops right after the last site read
(``tracer.stop()``), so the final norm and the unembedding are not computed.

Remote execution on NDIF (``remote=True``) is nnsight's own feature and is not wired here yet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor

from activations.backends.base import Backend, RunResult, _Plan, _Write, gather, normalize_rms
from activations.batch import TokenBatch
from activations.load import Checkpoint
from activations.sites import Site

log = logging.getLogger(__name__)

Op = Callable[[Any, dict, dict], Any]
"""An operation at one module event: ``op(value, out, scratch) -> value`` (possibly replaced)."""


class UnsupportedModelError(ValueError):
    """The model's module tree is not the Qwen2/Llama layout the site map expects."""


SITE_EVENTS: dict[str, tuple[str, str, int]] = {
    "hook_embed": ("embed", "output", 0),
    "hook_resid_pre": ("layer", "input", 0),
    "attn.hook_z": ("o_proj", "input", 1),
    "hook_attn_out": ("attn", "output", 2),
    "hook_resid_mid": ("ln2", "input", 3),
    "hook_mlp_out": ("mlp", "output", 4),
    "hook_resid_post": ("layer", "output", 5),
    "ln_final.hook_normalized": ("norm", "output", 1),
}
"""This backend's mapping of every site of :mod:`activations.sites` (the one list of hook names) to
``(module in LAYOUT, "input" or "output", order within the block)``: adding a site is one entry there
and one here (``tests/activations/test_sites.py`` checks that every site has one)."""

LAYOUT = {
    "embed": "model.embed_tokens",
    "layer": "model.layers.{l}",
    "attn": "model.layers.{l}.self_attn",
    "o_proj": "model.layers.{l}.self_attn.o_proj",
    "ln2": "model.layers.{l}.post_attention_layernorm",
    "mlp": "model.layers.{l}.mlp",
    "norm": "model.norm",
    "lm_head": "lm_head",
}
"""Module paths of the Hugging Face decoder layout (``*ForCausalLM`` of Qwen2, Llama, Mistral)."""


def _check_layout(model: Any, n_layers: int) -> None:
    for key, path in LAYOUT.items():
        for l in ([0, n_layers - 1] if "{l}" in path else [0]):
            name = path.format(l=l)
            try:
                model.get_submodule(name)
            except AttributeError:
                raise UnsupportedModelError(
                    f"{type(model).__name__} has no module {name!r}: the nnsight backend maps "
                    "sites onto the Qwen2/Llama layout (model.layers[l].self_attn.o_proj, "
                    "post_attention_layernorm, mlp, model.norm, lm_head)"
                ) from None


def _first(value: Any) -> Tensor:
    return value[0] if isinstance(value, tuple) else value


def _replace_first(value: Any, new: Tensor) -> Any:
    return (new, *value[1:]) if isinstance(value, tuple) else new


@dataclass
class _Event:
    """One module value the trace waits for (``kind`` is ``"input"`` or ``"output"``)."""

    order: tuple[int, int]
    path: str
    kind: str
    writes: list[Op] = field(default_factory=list)
    captures: list[Op] = field(default_factory=list)
    reads: list[Op] = field(default_factory=list)
    envoy: Any = None

    def fire(self, out: dict, scratch: dict) -> None:
        """Wait for the value, write patches, then capture and read the (patched) value."""
        value = getattr(self.envoy, self.kind)
        new = value
        for op in (*self.writes, *self.captures, *self.reads):
            new = op(new, out, scratch)
        if new is not value:
            setattr(self.envoy, self.kind, new)


class NNsightBackend(Backend):
    """Reads and writes canonical sites of a Hugging Face causal LM through nnsight.

    The checkpoint's own model is wrapped (``nnsight.NNsight``); nnsight's instrumentation is
    inert outside a trace, so the model still runs as usual elsewhere.

    Raises:
        UnsupportedModelError: the model does not have the Qwen2/Llama module layout.
    """

    name = "nnsight"
    supports_kv_cache = True

    def __init__(self, checkpoint: Checkpoint):
        super().__init__(checkpoint)
        from nnsight import NNsight

        _check_layout(checkpoint.model, self.dims.n_layers)
        self._envoy = NNsight(checkpoint.model)
        self._envoys: dict[str, Any] = {}
        norm = checkpoint.model.get_submodule(LAYOUT["norm"])
        self._eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        self._norm_weight = norm.weight

    # --- building the per-event operations ---------------------------------------------------

    def _events(self, plan: _Plan) -> list[_Event]:
        events: dict[tuple[str, str], _Event] = {}
        L = self.dims.n_layers

        def event(part: str, kind: str, layer: int | None, sub: int) -> _Event:
            path = LAYOUT[part].format(l=layer)
            key = (path, kind)
            if key not in events:
                rank = -1 if part == "embed" else (L if layer is None else layer)
                events[key] = _Event(order=(rank, sub), path=path, kind=kind)
            return events[key]

        rows, cols = plan.rows, plan.cols

        def where(site: Site) -> tuple[str, str, int]:
            return SITE_EVENTS[site.hook]

        # At each event: writes, then captures, then reads (so reads see the patched values).
        captured: set[int] = set()
        for w in plan.writes:
            s = w.site
            if s.hook == "ln_final.hook_normalized":
                event("norm", "output", None, 1).writes.append(self._write_normed(w))
            elif s.hook == "hook_resid_mid":
                key = f"resid_pre.{s.layer}"
                if s.layer not in captured:
                    captured.add(s.layer)  # type: ignore[arg-type]
                    event("layer", "input", s.layer, 0).captures.append(_capture(key))
                event("attn", "output", s.layer, 2).writes.append(_write_mid(w, key))
            elif s.hook == "attn.hook_z":
                event("o_proj", "input", s.layer, 1).writes.append(_write_z(w, self.dims.n_heads))
            else:
                part, kind, sub = where(s)
                event(part, kind, s.layer, sub).writes.append(_write(w))
        for s in plan.reads:
            if s.hook == "ln_final.hook_normalized":
                eps = self._eps
                event("norm", "input", None, 0).captures.append(
                    _capture("normed", lambda x: normalize_rms(x, eps)))
                patched = [w for w in plan.writes if w.site.name == s.name]
                # read at the norm's output event, after the writes there, so patches show
                event("norm", "output", None, 1).reads.append(_read_normed(s.name, patched, rows, cols))
            elif s.hook == "attn.hook_z":
                event("o_proj", "input", s.layer, 1).reads.append(
                    _read(s.name, rows, cols, z_heads=self.dims.n_heads))
            else:
                part, kind, sub = where(s)
                event(part, kind, s.layer, sub).reads.append(_read(s.name, rows, cols))
        if plan.logits:
            at = plan.logits_at
            r = at.rows.to(self.device) if at is not None else None
            c = at.cols.to(self.device) if at is not None else None
            event("lm_head", "output", None, 2).reads.append(_read("__logits__", r, c))
        ordered = sorted(events.values(), key=lambda e: e.order)
        for e in ordered:
            if e.path not in self._envoys:
                self._envoys[e.path] = self._envoy.get(e.path)
            e.envoy = self._envoys[e.path]
        return ordered

    def _write_normed(self, w: _Write) -> Op:
        weight = self._norm_weight

        def op(value: Any, out: dict, scratch: dict) -> Any:
            scaled = _Write(w.site, weight * w.values.to(weight.dtype), w.rows, w.cols, None, w.add)
            return _replace_first(value, scaled.apply(_first(value)))

        return op

    # --- running --------------------------------------------------------------------------------

    def _execute(self, batch: TokenBatch, plan: _Plan) -> RunResult:
        events = self._events(plan)
        inputs = batch.model_inputs(self.device)
        out: dict[str, Tensor] = {}
        scratch: dict[str, Tensor] = {}
        stop = not plan.logits and not plan.kv_cache
        with self._envoy.trace(**inputs, use_cache=plan.kv_cache) as tracer:
            for ev in events:
                ev.fire(out, scratch)
            model_out = self._envoy.output.save() if plan.kv_cache else None
            if stop:
                tracer.stop()
        # transformers 5 names the cache ``cache``; 4.x ``past_key_values``
        past = (getattr(model_out, "cache", None) or getattr(model_out, "past_key_values", None)) if plan.kv_cache else None
        logits = out.pop("__logits__", None)
        return RunResult(activations={s.name: out[s.name] for s in plan.reads}, logits=logits, past_key_values=past)


def _capture(key: str, transform: Callable[[Tensor], Tensor] | None = None) -> Op:
    def op(value: Any, out: dict, scratch: dict) -> Any:
        x = _first(value)
        scratch[key] = transform(x) if transform is not None else x
        return value

    return op


def _read(name: str, rows: Tensor | None, cols: Tensor | None, z_heads: int | None = None) -> Op:
    def op(value: Any, out: dict, scratch: dict) -> Any:
        x = _first(value)
        if z_heads is not None:
            x = x.view(*x.shape[:-1], z_heads, x.shape[-1] // z_heads)
        out[name] = gather(x, rows, cols)
        return value

    return op


def _read_normed(name: str, writes: list[_Write], rows: Tensor | None, cols: Tensor | None) -> Op:
    def op(value: Any, out: dict, scratch: dict) -> Any:
        normed = scratch["normed"]
        for w in writes:
            normed = w.apply(normed)
        out[name] = gather(normed, rows, cols)
        return value

    return op


def _write(w: _Write) -> Op:
    def op(value: Any, out: dict, scratch: dict) -> Any:
        return _replace_first(value, w.apply(_first(value)))

    return op


def _write_z(w: _Write, n_heads: int) -> Op:
    def op(value: Any, out: dict, scratch: dict) -> Any:
        x = _first(value)
        z = x.view(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)
        return _replace_first(value, w.apply(z).reshape(x.shape))

    return op


def _write_mid(w: _Write, key: str) -> Op:
    """Write ``resid_mid`` by setting ``attn_out := value - resid_pre`` at the patched tokens."""

    def op(value: Any, out: dict, scratch: dict) -> Any:
        resid_pre = scratch[key]
        target = w.values.to(resid_pre.dtype)
        if w.add:  # resid_mid + v: attn_out + v
            delta = target
        elif w.rows is None:
            delta = target - resid_pre
        else:
            delta = target - resid_pre[w.rows, w.cols]
        attn = _Write(w.site, delta, w.rows, w.cols, None, w.add)
        return _replace_first(value, attn.apply(_first(value)))

    return op
