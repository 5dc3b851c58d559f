"""Patching metrics: what a patched forward pass is scored by, per problem, in nats.

Two metrics in the behaviour's units (the verdict's, :mod:`probes.patching.mechanistic`):

- :class:`StrategyProbs` (routing): ``pi(s|x)``, the softmax probability at the last prompt token
  of each strategy's first response token (probability, ``[N, S]`` per pass);
- :class:`TraceLogProb` (execution): ``log P(canonical trace, end token | prompt, strategy word)``
  of a teacher-forced trace (nats, <= 0; ``exp`` of it is the exact forced accuracy ``a(s|x)``
  where the correct response is unique, :mod:`probes.behaviour.exact`).

Two secondary metrics in nats (the verdict before issue 17; kept as secondary evidence):

- :class:`StrategyLogitDiff` (routing): ``logit(F) - logit(B)`` at the last prompt token, the
  position whose logits predict the first response token, which names the strategy. Nats; > 0
  favours forward. Only the prompt matters (the model is causal), so routing batches hold prompts
  alone.
- :class:`StepLogProb` (execution): on a teacher-forced trace of a fixed strategy, the mean
  log-probability (nats per token, <= 0) of the *correct* result tokens of every step and of the
  answer. A step's result is predicted at its ``=`` (value steps and the two solve steps of a map
  trace: the word after ``=``); a map step ``op c = m M b B`` has two results, ``M`` and ``B``,
  predicted at the words ``m`` and ``b`` (:func:`probes.task.traces.step_positions` gives the
  ``=`` of each step). The answer is the trace's last word, predicted at ``ans``.

A metric is used in two steps: :meth:`Metric.plan` locates, once per batch, the logit
coordinates it needs (a :class:`MetricPlan`); :meth:`MetricPlan.reduce` turns the logits
gathered there into one value per row. A plan can be *tiled* over a batch repeated ``m`` times
(one copy per patch configuration of a sweep, :mod:`probes.patching.sweep`), so one forward pass
scores ``m`` configurations at once.

Example::

    >>> metric = StrategyLogitDiff()
    >>> plan = metric.plan(batch)                               # doctest: +SKIP
    >>> logits = backend.patch(batch, [], logits=plan.index)    # doctest: +SKIP
    >>> plan.reduce(logits)                                     # [1, batch] nats  # doctest: +SKIP
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from activations.batch import (EndTokenError, PositionError, TokenBatch, model_text, render_prompt, response_end,
                               response_separator, response_token_id, tokenize)
from activations.positions import PositionIndex
from activations.batch import word_char_offsets
from probes.tasks import STRATEGIES, current_task, has

METRIC_PARTS: tuple[str, ...] = ("steps", "answer")
"""What :class:`StepLogProb` can score: the step results, the answer, or both."""


class MetricError(ValueError):
    """A metric that cannot be computed on a batch; the message names the row and the fix."""


@dataclass
class MetricPlan:
    """Where a metric reads the logits of one batch, and how it reduces them.

    Attributes:
        index: the logit coordinates in the base batch (``n`` entries).
        n_rows: rows of the base batch (``N``).
        kind: ``"diff"`` (``logits[:, plus] - logits[:, minus]``, one entry per row),
            ``"logprob"`` (mean ``log_softmax(logits)[target]`` over each row's entries),
            ``"logprob_sum"`` (their sum: the log-probability of the row's target sequence) or
            ``"probs"`` (``softmax(logits)[token_ids]``, one entry per row, ``S`` values each).
        plus, minus: token ids of a ``"diff"`` plan.
        targets: ``Int[Tensor, "n"]`` target token id of each entry of a ``"logprob"`` or
            ``"logprob_sum"`` plan.
        token_ids: the ``S`` token ids of a ``"probs"`` plan.
    """

    index: PositionIndex
    n_rows: int
    kind: str
    plus: int = -1
    minus: int = -1
    targets: Tensor | None = None
    token_ids: tuple[int, ...] = ()

    def tiled(self, m: int) -> PositionIndex:
        """The coordinates in the base batch repeated ``m`` times along the batch (copy ``j``
        occupies rows ``j*N .. j*N + N - 1``): ``m * n`` entries, copy-major."""
        if m == 1:
            return self.index
        offs = (torch.arange(m) * self.n_rows).repeat_interleave(len(self.index))
        return PositionIndex(
            rows=self.index.rows.repeat(m) + offs,
            cols=self.index.cols.repeat(m),
            positions=self.index.positions.repeat(m),
            labels=self.index.labels * m,
        )

    def reduce(self, logits: Float[Tensor, "mn vocab"], m: int = 1) -> Float[Tensor, "m batch *s"]:
        """Per-row metric values from logits gathered at :meth:`tiled` ``(m)`` (in float32, or
        float64 for float64 logits).

        Returns:
            ``[m, N]`` (``[m, N, S]`` for a ``"probs"`` plan): row ``j`` holds the values of copy
            ``j`` of the batch.

        Raises:
            MetricError: the logits do not have ``m * n`` rows.
        """
        n = len(self.index)
        if logits.shape[0] != m * n:
            raise MetricError(f"expected logits at {m} x {n} coordinates, got {tuple(logits.shape)}")
        x = logits if logits.dtype == torch.float64 else logits.float()
        if self.kind == "diff":
            return (x[:, self.plus] - x[:, self.minus]).reshape(m, self.n_rows)
        if self.kind == "probs":
            ids = torch.tensor(self.token_ids, dtype=torch.long, device=x.device)
            return torch.softmax(x, dim=-1)[:, ids].reshape(m, self.n_rows, len(self.token_ids))
        assert self.targets is not None
        lp = torch.log_softmax(x, dim=-1).gather(1, self.targets.to(x.device).repeat(m)[:, None])[:, 0]
        rows = self.index.rows.to(x.device)
        sums = torch.zeros(m, self.n_rows, dtype=lp.dtype, device=x.device)
        sums.index_add_(1, rows, lp.reshape(m, n))
        if self.kind == "logprob_sum":
            return sums
        counts = torch.bincount(rows, minlength=self.n_rows).to(lp.dtype)
        return sums / counts


class Metric(ABC):
    """A per-problem score of a forward pass (see the module docstring).

    Attributes:
        name: a short name used in results (``"strategy_logit_diff"``...).
        unit: the unit of its values (``"nats"``, ``"nats/token"``).
    """

    name: str = "metric"
    unit: str = "nats"

    @abstractmethod
    def plan(self, batch: TokenBatch) -> MetricPlan:
        """Locate the logit coordinates this metric needs in ``batch``.

        Raises:
            MetricError: a row lacks what the metric needs (the message names it).
        """

    def describe(self) -> dict[str, Any]:
        """The JSON-able description written into results."""
        return {"name": self.name, "unit": self.unit}


def single_token_id(tokenizer: Any, word: str, chat: bool = False) -> int:
    """The id of the one token that ``word`` becomes as the first word of a response
    (:func:`activations.batch.response_token_id`: after a space, or after the chat template's
    generation prompt with ``chat``), right for the task's word-level tokenizer (``"F"``) and for
    byte-level BPE (``"ĠF"`` after a space, ``"F"`` after ``assistant\\n``) alike.

    Raises:
        MetricError: ``word`` is not exactly one token there.
    """
    try:
        return response_token_id(tokenizer, word, chat)
    except PositionError as e:
        raise MetricError(str(e)) from None


class StrategyLogitDiff(Metric):
    """Routing metric: ``logit(F) - logit(B)`` at ``prompt_end`` (nats; > 0 favours forward).

    Args:
        tokenizer: the checkpoints' tokenizer (to find the ids of ``F`` and ``B``), or None to
            take the ids from ``ids``.
        ids: ``(id_F, id_B)`` when no tokenizer is given.
        chat: the prompts are rendered in the chat template (the response's first token follows
            the generation prompt without a space).

    Raises:
        MetricError: a strategy word is not a single token.
        ValueError: neither a tokenizer nor ids given.
    """

    name = "strategy_logit_diff"
    unit = "nats"

    def __init__(self, tokenizer: Any = None, ids: tuple[int, int] | None = None, chat: bool = False):
        if ids is None:
            if tokenizer is None:
                raise ValueError("StrategyLogitDiff needs a tokenizer or ids=(id_F, id_B)")
            words = current_task().strategy_words
            ids = (single_token_id(tokenizer, words["forward"], chat), single_token_id(tokenizer, words["backward"], chat))
        self.forward_id, self.backward_id = int(ids[0]), int(ids[1])

    def plan(self, batch: TokenBatch) -> MetricPlan:
        ends = batch.prompt_end
        rows = torch.arange(len(batch))
        index = PositionIndex(rows=rows, cols=batch.pad_offset + ends, positions=ends.clone(),
                              labels=["prompt_end"] * len(batch))
        return MetricPlan(index=index, n_rows=len(batch), kind="diff",
                          plus=self.forward_id, minus=self.backward_id)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "position": "prompt_end",
                "tokens": {current_task().strategy_words["forward"]: self.forward_id,
                           current_task().strategy_words["backward"]: self.backward_id}}


def _target_plan(batch: TokenBatch, targets: Sequence[Sequence[tuple[int, int]]], kind: str) -> MetricPlan:
    """The plan of a metric that scores ``(predicting position, target id)`` pairs per row.

    Raises:
        MetricError: the batch does not have one row per target list.
    """
    if len(batch) != len(targets):
        raise MetricError(f"the metric was built for {len(targets)} inputs, the batch has {len(batch)}")
    rows = [r for r, pairs in enumerate(targets) for _ in pairs]
    pos = [p for pairs in targets for p, _ in pairs]
    tgt = [t for pairs in targets for _, t in pairs]
    index = PositionIndex.from_pairs(batch, rows, pos, labels=["target"] * len(rows))
    return MetricPlan(index=index, n_rows=len(batch), kind=kind, targets=torch.tensor(tgt, dtype=torch.long))


class StrategyProbs(Metric):
    """Routing metric in the behaviour's units: ``pi(s|x)``, the temperature-1 probability of each
    strategy's first response token at ``prompt_end`` (probability; ``[N, S]`` per pass, ``S`` =
    :data:`probes.task.traces.STRATEGIES` in order). The same quantity as the behaviour stage's
    ``pi`` (:func:`probes.behaviour.generate.first_token_probs`); mass on other tokens is no strategy.

    Args:
        tokenizer: the checkpoints' tokenizer, or None to take the ids from ``ids``.
        ids: the strategies' first-token ids when no tokenizer is given.
        chat: the prompts are rendered in the chat template.

    Raises:
        MetricError: a strategy word is not a single token.
        ValueError: neither a tokenizer nor ids given.
    """

    name = "strategy_probs"
    unit = "probability"

    def __init__(self, tokenizer: Any = None, ids: Sequence[int] | None = None, chat: bool = False):
        if ids is None:
            if tokenizer is None:
                raise ValueError("StrategyProbs needs a tokenizer or ids")
            ids = [single_token_id(tokenizer, current_task().strategy_words[s], chat) for s in STRATEGIES]
        self.ids = tuple(int(i) for i in ids)

    def plan(self, batch: TokenBatch) -> MetricPlan:
        ends = batch.prompt_end
        index = PositionIndex(rows=torch.arange(len(batch)), cols=batch.pad_offset + ends, positions=ends.clone(),
                              labels=["prompt_end"] * len(batch))
        return MetricPlan(index=index, n_rows=len(batch), kind="probs", token_ids=self.ids)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "position": "prompt_end",
                "tokens": dict(zip(STRATEGIES, self.ids))}


class TraceLogProb(Metric):
    """Execution metric in the behaviour's units: the log-probability of the whole canonical
    response after its strategy word, the end token included (nats, <= 0), on teacher-forced
    inputs ``prompt + sep + response + eos``. ``exp`` of it is the probability that sampling at
    temperature 1 after the forced strategy word writes exactly this response and stops: the exact
    forced-strategy accuracy ``a(s|x)`` when the correct response is unique
    (:mod:`probes.behaviour.exact`).

    Every token after the strategy word's token is a target, scored at the token before it; the
    strategy word itself is forced, not scored. The end token is the one SFT teaches and
    generation stops at (:func:`activations.batch.response_end`: the ``eos_token`` for plain
    prompts, the chat template's end of an assistant turn with ``chat``).

    Args:
        tokenizer: the checkpoints' fast tokenizer (offsets are needed) with an end token.
        prompts: the task prompts (plain text), one per batch row.
        responses: the canonical responses (plain text, starting with the strategy word), without
            the end token (it is appended here, as SFT data writes it: :meth:`response_texts`).
        chat: the prompts are rendered in the chat template.

    Raises:
        MetricError: no end token (:class:`activations.batch.EndTokenError`), a response whose first
            word shares a token with the rest, or an input that does not end in the end token.
    """

    name = "trace_logprob"
    unit = "nats"

    def __init__(self, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], chat: bool = False):
        if len(prompts) != len(responses):
            raise MetricError(f"{len(prompts)} prompts but {len(responses)} responses")
        try:
            end = response_end(tokenizer, chat)
        except EndTokenError as e:
            raise MetricError(f"the exact forced accuracy scores the end of the response: {e}") from None
        self.tokenizer = tokenizer
        self.chat = chat
        self.eos = end.text
        self.eos_id = end.token_id
        self.prompts = list(prompts)
        self.responses = list(responses)
        self._targets = [self._row_targets(p, r) for p, r in zip(self.prompts, self.responses)]

    def response_texts(self) -> list[str]:
        """The teacher-forced responses: each canonical response followed by its end (``" <|im_end|>"``...)."""
        return [r + self.eos for r in self.responses]

    def _row_targets(self, prompt: str, response: str) -> list[tuple[int, int]]:
        rendered = render_prompt(self.tokenizer, prompt, self.chat)
        text = model_text(rendered, response + self.eos, self.chat)
        enc = tokenize(self.tokenizer, text, self.chat, return_offsets_mapping=True)
        ids, offs = enc["input_ids"], enc["offset_mapping"]
        base = len(rendered) + len(response_separator(self.chat))
        first = response.split()[0] if response.split() else ""
        word_end = base + response.index(first) + len(first) if first else base
        if not ids or ids[-1] != self.eos_id:
            raise MetricError(f"{prompt!r}: the input does not end in the end token {self.eos!r} "
                              f"(id {self.eos_id}) after tokenization")
        out = []
        for t, (a, b) in enumerate(offs):
            if a < word_end < b:
                raise MetricError(f"{prompt!r}: a token spans the strategy word {first!r} and the rest of the response")
            if a >= word_end and t > 0:
                out.append((t - 1, int(ids[t])))
        if not out or out[-1][1] != self.eos_id:
            raise MetricError(f"{prompt!r}: no response token after the strategy word {first!r}")
        return out

    def plan(self, batch: TokenBatch) -> MetricPlan:
        return _target_plan(batch, self._targets, "logprob_sum")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "end_token": self.eos,
                "targets_per_input": [len(t) for t in self._targets]}


def target_words(response: str, parts: Sequence[str] = METRIC_PARTS) -> list[int]:
    """Word indices (within ``response.split()``) of the correct tokens :class:`StepLogProb` scores.

    ``"steps"``: the result word(s) of each step (``=`` + 1; ``=`` + 2 and + 4 for map steps,
    whose results are ``m M b B``; the current task's ``step_positions``, none without them);
    ``"answer"``: the words after the last ``ans`` (the finite-field task's one numeral).

    Raises:
        MetricError: an unknown part, or a response without steps or answer.
    """
    bad = [p for p in parts if p not in METRIC_PARTS]
    if bad or not parts:
        raise MetricError(f"unknown metric parts {bad or list(parts)}: use a subset of {list(METRIC_PARTS)}")
    words = response.split()
    out: list[int] = []
    task = current_task()
    if "steps" in parts and has(task, "step_positions"):
        for i in task.step_positions(response):
            if i + 1 < len(words) and words[i + 1] == "m":
                out += [i + 2, i + 4]
            else:
                out.append(i + 1)
    if "answer" in parts:
        k = len(words) - 1 - words[::-1].index("ans") if "ans" in words else len(words)
        if k >= len(words) - 1:
            raise MetricError(f"response {response!r} does not end with 'ans VALUE'")
        out += list(range(k + 1, len(words)))
    if not out or max(out) >= len(words):
        raise MetricError(f"response {response!r} has no scorable step or answer tokens")
    return sorted(set(out))


class StepLogProb(Metric):
    """Execution metric: mean log-probability of the correct step results and answer of a
    teacher-forced trace (nats per token, <= 0).

    Each target word's tokens are scored at the token before each (next-token prediction), so a
    word that a BPE tokenizer splits contributes all its tokens.

    Args:
        tokenizer: the checkpoints' tokenizer (fast: offsets are needed).
        prompts, responses: the texts the batch was encoded from (``batch`` rows in order).
        parts: ``("steps", "answer")`` (default), or one of them.
        chat: the prompts were rendered in the chat template (``encode_batch(..., chat=True)``).

    Raises:
        MetricError: a row without a response, or a target word no token covers.
    """

    name = "step_logprob"
    unit = "nats/token"

    def __init__(self, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str],
                 parts: Sequence[str] = METRIC_PARTS, chat: bool = False):
        if len(prompts) != len(responses):
            raise MetricError(f"{len(prompts)} prompts but {len(responses)} responses")
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.responses = list(responses)
        self.parts = tuple(parts)
        self.chat = chat
        self._targets = [self._row_targets(p, r) for p, r in zip(self.prompts, self.responses)]

    def _row_targets(self, prompt: str, response: str) -> list[tuple[int, int]]:
        """``(position of the predicting token, target token id)`` pairs of one input."""
        if response is None:
            raise MetricError(f"{prompt!r}: the execution metric needs a teacher-forced response")
        prompt = render_prompt(self.tokenizer, prompt, self.chat)
        text = model_text(prompt, response, self.chat)
        enc = tokenize(self.tokenizer, text, self.chat, return_offsets_mapping=True)
        ids, offs = enc["input_ids"], enc["offset_mapping"]
        base = len(prompt) + len(response_separator(self.chat))
        words = word_char_offsets(response)
        out = []
        for w in target_words(response, self.parts):
            s, e = base + words[w][0], base + words[w][1]
            toks = [t for t, (a, b) in enumerate(offs) if b > a and a < e and b > s]
            if not toks or toks[0] == 0:
                raise MetricError(f"{prompt!r}: no predictable token covers response word {w}")
            out += [(t - 1, int(ids[t])) for t in toks]
        return out

    def plan(self, batch: TokenBatch) -> MetricPlan:
        return _target_plan(batch, self._targets, "logprob")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "parts": list(self.parts),
                "targets_per_input": [len(t) for t in self._targets]}


def evaluate(backend: Any, batch: TokenBatch, metric: Metric, patches: Sequence[Any] = ()) -> Float[Tensor, " batch"]:
    """The metric of one forward pass of ``batch`` through ``backend`` (with ``patches``), ``[N]``."""
    plan = metric.plan(batch)
    logits = backend.run(batch, patches=list(patches), logits=plan.index).logits
    return plan.reduce(logits)[0].detach().cpu()

