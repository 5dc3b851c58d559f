"""Batched generation of responses, greedy or sampled, optionally with a forced first token.

Left padding, HF ``generate`` with the KV cache, a seed per batch so results are reproducible
for a given batch size. Returns response texts without special tokens.
"""

from __future__ import annotations

from typing import Sequence

from tqdm.auto import tqdm

from activations.batch import cut_at_stop, render_prompt, response_separator, stop_token_ids, tokenize
from probes.tasks import current_task, strategy_ids


def max_trace_words(steps: int) -> int:
    """An upper bound on a correct response's length in words for a problem of length ``steps``
    (the current task's ``max_response_words``, :func:`probes.tasks.current_task`)."""
    return int(current_task().max_response_words(steps))


def tokens_per_word(tokenizer) -> int:
    """The most tokens any task word takes after a space under ``tokenizer`` (1 for the task's
    word-level tokenizer; 1-3 for a byte-level BPE like Qwen's, where ``" li"`` or ``" ans"`` may
    split), the factor that turns a budget in words into one in tokens."""
    words = current_task().vocabulary()
    return max(len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in words)


def max_trace_tokens(tokenizer, steps: int, per_word: int | None = None) -> int:
    """A generation budget in tokens for a chain of ``steps``: :func:`max_trace_words` times
    :func:`tokens_per_word` (``per_word`` when the caller has it already), plus 8 (the
    end-of-sequence token and slack)."""
    return max_trace_words(steps) * (per_word or tokens_per_word(tokenizer)) + 8


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    greedy: bool,
    temperature: float = 1.0,
    prefix: str | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 128,
    seed: int = 0,
    desc: str | None = None,
    chat: bool = False,
) -> list[str]:
    """Generate one response per prompt.

    Args:
        prompts: task prompts (plain text); ``len(prompts) = N``.
        greedy: argmax decoding if True, else sampling at ``temperature`` (no top-k/top-p, no
            repetition penalty, whatever the checkpoint's ``generation_config`` says: the
            measured policy is the model's softmax).
        prefix: words forced at the start of the response (e.g. ``"F"``); they are included in
            the returned text.
        max_new_tokens: generation budget per response, in tokens.
        batch_size: prompts per forward batch.
        seed: base seed; batch ``i`` samples with seed ``seed + i``.
        chat: render each prompt in the tokenizer's chat template
            (:func:`activations.batch.render_prompt`); the response follows the template's
            generation prompt directly instead of after a space.

    Returns:
        ``N`` response strings, each up to its end token (special tokens removed).

    Generation stops at :func:`activations.batch.stop_token_ids` (the end token SFT teaches and
    the ``eos_token``).

    Raises:
        activations.batch.ChatTemplateError: ``chat`` and the tokenizer has no chat template.
        activations.batch.EndTokenError: no token ends a response.
    """
    import torch

    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    sep = response_separator(chat)
    stops = stop_token_ids(tokenizer, chat)
    inputs = [render_prompt(tokenizer, p, chat) + (sep + prefix if prefix else "") for p in prompts]
    try:
        batches = range(0, len(inputs), batch_size)
        for bi, start in enumerate(tqdm(batches, desc=desc, disable=desc is None, leave=False)):
            chunk = inputs[start : start + batch_size]
            enc = tokenize(tokenizer, chunk, chat, return_tensors="pt", padding=True).to(device)
            torch.manual_seed(seed + bi)
            kw = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=None, top_p=None)
            with torch.no_grad():
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    repetition_penalty=1.0,  # a checkpoint's generation_config (Qwen: 1.1) must not reshape the policy
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=stops,  # the end SFT taught (the chat turn's end with chat) and eos
                    **kw,
                )
            texts = tokenizer.batch_decode([cut_at_stop(g, stops) for g in gen[:, enc["input_ids"].shape[1]:].tolist()],
                                           skip_special_tokens=True)
            out += [((prefix + " ") if prefix else "") + t.strip() for t in texts]
    finally:
        tokenizer.padding_side = old_side
    return [t.strip() for t in out]


def first_token_probs(model, tokenizer, prompts: Sequence[str], batch_size: int = 256, chat: bool = False):
    """Temperature-1 probabilities of the first response token (prompts in the chat template
    with ``chat``).

    Returns:
        ``(p_forward, p_backward, logit_diff)``: float arrays of shape ``[N]``; ``logit_diff`` is
        ``logit(F) - logit(B)`` in nats at the last prompt position.
    """
    import numpy as np
    import torch

    f_id, b_id = strategy_ids(tokenizer, current_task(), chat)
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pf, pb, ld = [], [], []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = [render_prompt(tokenizer, p, chat) for p in prompts[start : start + batch_size]]
            enc = tokenize(tokenizer, chunk, chat, return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                logits = model(**enc).logits[:, -1, :].float()
            p = logits.softmax(-1)
            pf.append(p[:, f_id].cpu().numpy())
            pb.append(p[:, b_id].cpu().numpy())
            ld.append((logits[:, f_id] - logits[:, b_id]).cpu().numpy())
    finally:
        tokenizer.padding_side = old_side
    return np.concatenate(pf), np.concatenate(pb), np.concatenate(ld)
