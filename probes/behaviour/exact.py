"""Exact forced-strategy accuracy: the probability of the one correct response, in one forward pass.

On a task with canonical responses (:mod:`probes.tasks`, ``canonical_response``; the finite-field
task's traces, ``probes.task.traces.make_trace``) each strategy has exactly one correct response to a
problem (the verifier accepts no other text; ``tests/probes/test_exact.py`` checks this property
against the finite-field verifier). A task without canonical responses is measured by sampling.
Sampling at temperature 1 after the forced strategy word is then correct exactly when it writes
that trace's tokens and then the end token, so the forced-strategy accuracy is

    a(s|x) = P(trace tokens after the strategy word, then eos | prompt, strategy word)
           = exp(sum_t log p(token_t | tokens_<t))

one teacher-forced forward pass instead of Monte Carlo samples
(:class:`probes.patching.metrics.TraceLogProb`, the same metric patching uses).

**When it is exact.** The sum is over the canonical *token* sequence. With the task's word-level
tokenizer every text has one token sequence, so ``a`` is exact. A tokenizer that can spell a word
in several ways (byte-level BPE: ``" li"`` as one token or as ``" l" "i"``) can also write the
correct text through another token sequence, which sampling would count and this does not: there
``a`` is a lower bound, and :func:`forced_method` falls back to sampling. Special tokens that
generation emits and decoding drops (a stray ``<pad>`` mid-trace) are likewise not counted.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from probes.tasks import STRATEGIES, current_task, has
from probes.tasks import TaskProblem as Problem

METHODS: tuple[str, ...] = ("auto", "exact", "sampled")
"""``exact``: the teacher-forced probability; ``sampled``: the share of correct samples;
``auto``: exact where the correct response is unique as a token sequence, else sampled."""
AUTO_FALLBACK_SAMPLES = 2
"""Forced samples per problem and strategy when ``auto`` falls back to sampling and none were set."""


def unique_spelling_reason(tokenizer: Any) -> str | None:
    """Why the canonical token sequence might not be the only spelling of a correct response
    under ``tokenizer`` (None when it is the only one: every task word is one token after a space
    and as the first word of a response).
    """
    from probes.behaviour.generate import tokens_per_word

    n = tokens_per_word(tokenizer)
    if n > 1:
        return (f"a task word takes up to {n} tokens under this tokenizer, so a correct response has more than one "
                "token sequence and the probability of the canonical one is only a lower bound of a(s|x)")
    return None


def forced_method(requested: str, tokenizer: Any) -> tuple[str, str]:
    """The method ``requested`` resolves to for ``tokenizer``, and why.

    Raises:
        ValueError: an unknown method.
    """
    if requested not in METHODS:
        raise ValueError(f"unknown forced-accuracy method {requested!r}: use one of {list(METHODS)}")
    if not has(current_task(), "canonical_response"):
        return "sampled", "the task has no canonical responses (canonical_response), so forced accuracy is sampled"
    reason = unique_spelling_reason(tokenizer)
    if requested == "exact":
        return "exact", ("requested" if reason is None else f"requested, although {reason}")
    if requested == "sampled":
        return "sampled", "requested"
    if reason is None:
        return "exact", "each strategy has one correct response and the tokenizer spells it one way"
    return "sampled", reason


def by_steps(problems: Sequence[Problem]) -> list[list[int]]:
    """Indices of ``problems`` grouped by chain length, shortest first (one group batches with
    little padding: every trace of a chain length and strategy has the same number of words)."""
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(problems):
        groups.setdefault(p.length, []).append(i)
    return [groups[k] for k in sorted(groups)]


def trace_logprobs(backend: Any, tokenizer: Any, problems: Sequence[Problem], *, chat: bool = False,
                   batch_size: int = 64, strategies: Sequence[str] = STRATEGIES) -> np.ndarray:
    """``log a(s|x)``: the log-probability (nats) of each problem's canonical trace under each
    strategy, the strategy word forced and the end token included.

    Args:
        backend: the model's :class:`~activations.backends.base.Backend`.
        tokenizer: its fast tokenizer (with an ``eos_token``).
        problems: ``N`` problems.
        chat: prompts in the chat template.
        batch_size: rows per forward pass (problems of one chain length are batched together).
        strategies: ``S`` strategies (default: forward, backward).

    Returns:
        ``[N, S]`` float64, <= 0.

    Raises:
        MetricError: a tokenizer without an end token, or a strategy word that shares a token with
            the rest of the response.
    """
    from activations.batch import encode_batch
    from probes.patching.metrics import TraceLogProb

    make_trace = current_task().canonical_response
    out = np.zeros((len(problems), len(strategies)))
    for j, s in enumerate(strategies):
        for idx in by_steps(problems):
            for start in range(0, len(idx), batch_size):
                chunk = idx[start:start + batch_size]
                ps = [problems[i] for i in chunk]
                metric = TraceLogProb(tokenizer, [p.prompt for p in ps], [make_trace(p, s) for p in ps], chat=chat)
                batch = encode_batch(tokenizer, metric.prompts, metric.response_texts(), keys=[p.id for p in ps],
                                     chat=chat)
                plan = metric.plan(batch)
                logits = backend.run(batch, logits=plan.index).logits
                out[chunk, j] = plan.reduce(logits)[0].detach().cpu().double().numpy()
    return out


def exact_forced_accuracy(model: Any, tokenizer: Any, problems: Sequence[Problem], *, chat: bool = False,
                          batch_size: int = 64) -> np.ndarray:
    """``a(s|x)`` ``[N, S]`` (probabilities) of a Hugging Face causal LM: ``exp`` of
    :func:`trace_logprobs` through the default backend."""
    from activations.backends import make_backend
    from activations.load import Checkpoint

    backend = make_backend("nnsight", Checkpoint.from_model(model, tokenizer))
    return np.exp(trace_logprobs(backend, tokenizer, problems, chat=chat, batch_size=batch_size))
