"""Batched generation of responses, greedy or sampled, optionally with a forced first token.

Left padding, HF ``generate`` with the KV cache, a seed per batch so results are reproducible
for a given batch size. Returns response texts without special tokens.
"""

from __future__ import annotations

from typing import Sequence

from tqdm.auto import tqdm


def max_trace_words(steps: int) -> int:
    """An upper bound on a correct trace's length in words for a chain of ``steps``."""
    return 8 * steps + 26


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
) -> list[str]:
    """Generate one response per prompt.

    Args:
        prompts: task prompts (plain text); ``len(prompts) = N``.
        greedy: argmax decoding if True, else sampling at ``temperature`` (no top-k/top-p).
        prefix: words forced at the start of the response (e.g. ``"F"``); they are included in
            the returned text.
        max_new_tokens: generation budget per response, in tokens.
        batch_size: prompts per forward batch.
        seed: base seed; batch ``i`` samples with seed ``seed + i``.

    Returns:
        ``N`` response strings (special tokens removed).
    """
    import torch

    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    inputs = [p + (" " + prefix if prefix else "") for p in prompts]
    try:
        batches = range(0, len(inputs), batch_size)
        for bi, start in enumerate(tqdm(batches, desc=desc, disable=desc is None, leave=False)):
            chunk = inputs[start : start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            torch.manual_seed(seed + bi)
            kw = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_k=None, top_p=None)
            with torch.no_grad():
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **kw,
                )
            texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out += [((prefix + " ") if prefix else "") + t.strip() for t in texts]
    finally:
        tokenizer.padding_side = old_side
    return [t.strip() for t in out]


def first_token_probs(model, tokenizer, prompts: Sequence[str], batch_size: int = 256):
    """Temperature-1 probabilities of the first response token.

    Returns:
        ``(p_forward, p_backward, logit_diff)``: float arrays of shape ``[N]``; ``logit_diff`` is
        ``logit(F) - logit(B)`` in nats at the last prompt position.
    """
    import numpy as np
    import torch

    from probes.task.traces import STRATEGY_TOKEN

    f_id = tokenizer.convert_tokens_to_ids(STRATEGY_TOKEN["forward"])
    b_id = tokenizer.convert_tokens_to_ids(STRATEGY_TOKEN["backward"])
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pf, pb, ld = [], [], []
    try:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            with torch.no_grad():
                logits = model(**enc).logits[:, -1, :].float()
            p = logits.softmax(-1)
            pf.append(p[:, f_id].cpu().numpy())
            pb.append(p[:, b_id].cpu().numpy())
            ld.append((logits[:, f_id] - logits[:, b_id]).cpu().numpy())
    finally:
        tokenizer.padding_side = old_side
    return np.concatenate(pf), np.concatenate(pb), np.concatenate(ld)
