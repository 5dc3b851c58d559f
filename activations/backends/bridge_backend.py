"""The TransformerLens backend: canonical sites through a ``TransformerBridge`` (transformer_lens 4).

``TransformerBridge`` wraps a Hugging Face model in TransformerLens components whose hook points
carry the canonical names, so sites need no mapping. The bridge is built around an *already
loaded* model (``TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tok)``):
that reuses this package's loader (local directories, ``trust_remote_code`` off, the chosen dtype
and device) and never touches the Hub. The bridge rewrites the module tree it wraps and switches it
to eager attention, so it wraps an independent copy (:meth:`Checkpoint.fresh_model`), not the
checkpoint's own model.

Hooks are added with ``bridge.hooks(...)``, a context manager that removes them on exit, error or
not. Two sites need care to match the other backends:

- ``blocks.l.hook_resid_mid`` is the bridge's alias of ``ln2.hook_in``: writing there would
  change only the MLP's input, not the residual stream. Writes go through ``hook_attn_out``
  (``value - resid_pre``), as in every backend.
- ``ln_final.hook_normalized`` is hooked before the RMSNorm weight, as in the other backends; the
  bridge warns when it is edited (it recomputes the norm's output); that warning is silenced.

When no logits are asked for, the forward stops after the last site read (a private exception
raised from that hook), so the final norm and the unembedding are not computed.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any, Callable

import torch
from torch import Tensor

from activations.backends.base import Backend, RunResult, _Plan, _Write, gather
from activations.batch import TokenBatch
from activations.load import Checkpoint

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised from the last read hook to skip the rest of the forward pass."""


def build_bridge(checkpoint: Checkpoint) -> Any:
    """A ``TransformerBridge`` around an independent copy of the checkpoint's model.

    Raises:
        ValueError: transformer_lens has no adapter for the architecture (its message).
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = checkpoint.fresh_model()
    tokenizer = copy.deepcopy(checkpoint.tokenizer)
    # transformer_lens' setup_tokenizer (get_tokenizer_with_bos) reloads any tokenizer whose
    # init_kwargs lack add_bos_token=True with AutoTokenizer.from_pretrained(name_or_path): that
    # fails for a tokenizer built in memory (no name_or_path) and, under transformers 5, rebuilds
    # a qwen2 checkpoint's word-level tokenizer as Qwen's BPE (see load_tokenizer). Marking the
    # copy keeps it as it is; it still adds no BOS (the flag is only read from init_kwargs there),
    # and this backend feeds the bridge token ids, never text.
    tokenizer.init_kwargs.setdefault("name_or_path", checkpoint.source)
    tokenizer.init_kwargs["add_bos_token"] = True
    bridge = TransformerBridge.boot_transformers(
        checkpoint.source,
        hf_model=hf_model,
        tokenizer=tokenizer,
        device=checkpoint.device,
        dtype=checkpoint.dtype,
    )
    bridge.eval()
    return bridge


class BridgeBackend(Backend):
    """Reads and writes canonical sites through a TransformerLens ``TransformerBridge``.

    Args:
        checkpoint: the checkpoint to run.
        bridge: an existing bridge over the same weights (built with :func:`build_bridge`
            when None).
    """

    name = "bridge"

    def __init__(self, checkpoint: Checkpoint, bridge: Any = None):
        super().__init__(checkpoint)
        self.bridge = bridge if bridge is not None else build_bridge(checkpoint)

    def _hooks(self, plan: _Plan, out: dict, scratch: dict) -> list[tuple[str, Callable]]:
        rows, cols = plan.rows, plan.cols
        writes: list[tuple[str, Callable]] = []
        captures: list[tuple[str, Callable]] = []
        reads: list[tuple[str, Callable]] = []
        dtype = self.dtype
        for w in plan.writes:
            if w.site.hook == "hook_resid_mid":
                key = f"resid_pre.{w.site.layer}"
                captures.append((f"blocks.{w.site.layer}.hook_resid_pre", _capture(key, scratch)))
                writes.append((f"blocks.{w.site.layer}.hook_attn_out", _write_mid(w, key, scratch)))
            else:
                writes.append((w.site.name, _write(w)))
        for s in plan.reads:
            fn = _read(s.name, rows, cols, out, dtype)
            reads.append((s.name, fn))
        if not plan.logits and reads:
            last_name, last_fn = reads[-1]
            reads[-1] = (last_name, _then_stop(last_fn))
        # hooks on one hook point run in the order they were added
        return writes + captures + reads

    def _execute(self, batch: TokenBatch, plan: _Plan) -> RunResult:
        out: dict[str, Tensor] = {}
        scratch: dict[str, Tensor] = {}
        hooks = self._hooks(plan, out, scratch)
        inputs = batch.model_inputs(self.device)
        logits = None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*hook_scale/hook_normalized.*")
            warnings.filterwarnings("ignore", message=".*native.*autograd.*")
            with self.bridge.hooks(fwd_hooks=hooks):
                try:
                    logits = self.bridge(
                        inputs["input_ids"],
                        attention_mask=inputs["attention_mask"],
                        position_ids=inputs["position_ids"],
                        use_cache=False,
                        return_type="logits",
                    )
                except _StopForward:
                    logits = None
        if plan.logits:
            assert logits is not None
            at = plan.logits_at
            if at is not None:
                logits = logits[at.rows.to(logits.device), at.cols.to(logits.device)]
        return RunResult(activations={s.name: out[s.name] for s in plan.reads},
                         logits=logits if plan.logits else None)


def _read(name: str, rows: Tensor | None, cols: Tensor | None, out: dict, dtype: torch.dtype) -> Callable:
    def hook(act: Tensor, hook: Any) -> None:
        out[name] = gather(act, rows, cols).to(dtype)
        return None

    return hook


def _then_stop(fn: Callable) -> Callable:
    def hook(act: Tensor, hook: Any) -> None:
        fn(act, hook)
        raise _StopForward

    return hook


def _capture(key: str, scratch: dict) -> Callable:
    def hook(act: Tensor, hook: Any) -> None:
        scratch[key] = act
        return None

    return hook


def _write(w: _Write) -> Callable:
    def hook(act: Tensor, hook: Any) -> Tensor:
        return w.apply(act)

    return hook


def _write_mid(w: _Write, key: str, scratch: dict) -> Callable:
    def hook(act: Tensor, hook: Any) -> Tensor:
        resid_pre = scratch[key]
        target = w.values.to(resid_pre.dtype)
        delta = target if w.add else target - (resid_pre if w.rows is None else resid_pre[w.rows, w.cols])
        return _Write(w.site, delta, w.rows, w.cols, None, w.add).apply(act)

    return hook
