"""Greedy generation through a backend, with patches written at every step.

Every model run that reads or writes activations goes through a backend
(:class:`activations.backends.Backend`); generation is no exception. :func:`generate_greedy`
decodes greedily. Patches that write only at prompt positions and do not depend on the tokens
generated (a steering vector added at the prompt end, donor values held over the prompt) are written
once, in a prefill through the backend that returns its key/value cache; the tokens then decode from
that cache, as Hugging Face's ``generate`` does (``prompt_only=True``, on backends with
``supports_kv_cache``). Other patches (held at the response) are written at every step, re-running
the whole (left-padded) sequence without a cache, so that each step is one patched forward pass over
the tokens so far; that costs ``max_new_tokens`` full forwards per batch.

Example::

    >>> texts = generate_greedy(backend, tok, ["pF evaluation : add c ; x = a ; y = ?"],
    ...                         max_new_tokens=8)                        # doctest: +SKIP
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import replace
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from activations.backends.base import Backend, Patch
from activations.batch import TokenBatch, cut_at_stop, encode_batch, stop_token_ids
from activations.positions import PositionIndex

PatchFn = Callable[[TokenBatch, int], Sequence[Patch]]
"""``(batch so far, index of its first prompt in the call's prompts) -> patches`` for one step."""


def extend_batch(batch: TokenBatch, new_ids: torch.Tensor) -> TokenBatch:
    """``batch`` with one token appended to every row (left-padded batches only).

    Args:
        new_ids: ``Int[Tensor, "batch"]`` the token appended to each row.

    Raises:
        ValueError: a right-padded batch (its rows do not all end at the last column).
    """
    if batch.padding_side != "left":
        raise ValueError("generation extends left-padded batches only (encode with padding_side='left')")
    ids = torch.cat([batch.input_ids, new_ids.reshape(-1, 1).to(batch.input_ids.dtype)], 1)
    mask = torch.cat([batch.attention_mask, torch.ones(len(batch), 1, dtype=batch.attention_mask.dtype)], 1)
    pos = mask.cumsum(-1) - 1
    pos.masked_fill_(mask == 0, 1)
    return replace(batch, input_ids=ids, attention_mask=mask, position_ids=pos, lengths=batch.lengths + 1,
                   has_response=[True] * len(batch))


def generate_greedy(
    backend: Backend,
    tokenizer: Any,
    prompts: Sequence[str],
    patches: PatchFn | None = None,
    *,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    chat: bool = False,
    desc: str | None = None,
    return_ids: bool = False,
    prompt_only: bool = False,
) -> list[str] | list[list[int]]:
    """Greedy responses of ``backend``'s model to ``prompts``, with ``patches(batch, start)``
    written at every step (None: no patches).

    Args:
        backend: the model to run.
        tokenizer: its tokenizer; a response ends at an end token
            (:func:`activations.batch.stop_token_ids`).
        prompts: ``N`` task prompts (rendered in the chat template with ``chat``).
        patches: called before each forward with the batch so far (prompt, then the tokens
            generated; its prompt positions never move under left padding) and the index of the
            batch's first prompt in ``prompts``.
        max_new_tokens: decoding budget per response, in tokens.
        batch_size: prompts per batch.
        desc: progress bar label (None: no bar).
        return_ids: return the generated token ids (up to and including the end token).
        prompt_only: ``patches`` write only at prompt positions and do not depend on the tokens
            generated: they are written once, in a KV-cached prefill (backends with
            ``supports_kv_cache``; others re-run every step, with the same tokens).

    Returns:
        ``N`` response texts (special tokens removed, stripped), or ``N`` lists of token ids.

    Raises:
        As :meth:`activations.backends.Backend.run` (a patch of the wrong shape, a bad site).
    """
    stops = torch.tensor(stop_token_ids(tokenizer, chat))
    eos = int(stops[0])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    texts: list[str] = []
    ids_out: list[list[int]] = []
    bar = tqdm(total=len(prompts) * max_new_tokens, desc=desc, disable=desc is None, leave=False, unit="tok")
    try:
        for s in range(0, len(prompts), batch_size):
            batch = encode_batch(tokenizer, list(prompts[s:s + batch_size]), padding_side="left", chat=chat)
            done = torch.zeros(len(batch), dtype=torch.bool)
            gen: list[list[int]] = [[] for _ in range(len(batch))]
            cached = prompt_only and backend.supports_kv_cache
            past = None
            for _ in range(max_new_tokens):
                if past is None:
                    last = torch.full((len(batch),), batch.seq_len - 1, dtype=torch.long)
                    at = PositionIndex(rows=torch.arange(len(batch)), cols=last, positions=batch.lengths - 1,
                                       labels=["last"] * len(batch))
                    todo = list(patches(batch, s)) if patches is not None else []
                    res = backend.run(batch, patches=todo, logits=at, kv_cache=cached)
                    logits, past = res.logits, res.past_key_values
                else:  # decode one token from the patched prefill's cache
                    logits, past = _decode_step(backend, batch, past)
                nxt = logits.float().argmax(-1).cpu()
                nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
                for b in range(len(batch)):
                    if not done[b]:
                        gen[b].append(int(nxt[b]))
                done |= torch.isin(nxt, stops)
                bar.update(len(batch))
                if bool(done.all()):
                    break
                batch = extend_batch(batch, nxt)
            texts += [tokenizer.decode(cut_at_stop(g, stops.tolist()), skip_special_tokens=True).strip() for g in gen]
            ids_out += gen
    finally:
        bar.close()
    return ids_out if return_ids else texts


@functools.lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    """The keyword a model class's ``forward`` takes its key/value cache by (transformers 5:
    ``cache``; 4.x: ``past_key_values``), looked up once per class, not once per decoded token."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


@torch.no_grad()
def _decode_step(backend: Backend, batch: TokenBatch, past: Any) -> tuple[torch.Tensor, Any]:
    """Logits ``[batch, vocab]`` of ``batch``'s last token from the cache of the tokens before it,
    and the cache with it added (the model's own forward: nothing is read or written)."""
    model = backend.checkpoint.model
    name = _cache_argument(type(model))
    dev = backend.device
    out = model(input_ids=batch.input_ids[:, -1:].to(dev), attention_mask=batch.attention_mask.to(dev),
                position_ids=batch.position_ids[:, -1:].to(dev), use_cache=True, **{name: past})
    return out.logits[:, -1], getattr(out, "cache", None) or getattr(out, "past_key_values", None)
