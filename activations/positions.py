"""Named token positions: where in each input to read or write activations.

A position spec is one of:

- ``prompt_end``: the last prompt token, whose logits predict the first response token (the
  strategy word ``F`` or ``B``), so the routing decision is read here;
- ``steps``: the token of each step's ``=`` in a teacher-forced trace, where the model computes
  the step's result (:func:`probes.task.traces.step_positions`); needs a response;
- ``all``: every real token;
- ``prompt``: every prompt token, ``0 .. prompt_end`` (what the model has read);
- ``response``: every token of the teacher-forced response (needs a response);
- ``words:i,j,...``: the last token of the task prompt's ``i``-th whitespace-separated word
  (negative counts from the prompt's last word), so that one label is the same word role in
  prompts of different lengths and tokenizations (``words:1`` the problem-type word, ``words:-1``
  the prompt's last word); labels ``word:i``;
- explicit indices, e.g. ``0,-1``: token indices within the unpadded input (negative counts from
  its end).

Positions are indices into the *unpadded* input and are converted to padded columns with the
batch's pad offsets, so they are the same under left and right padding. Resolving specs against a
:class:`~activations.batch.TokenBatch` gives a :class:`PositionIndex`: flat ``(row, column)``
pairs that backends gather from (read) or scatter into (write).

Example::

    >>> specs = parse_positions(["prompt_end", "steps"])
    >>> idx = resolve_positions(specs, batch)      # doctest: +SKIP
    >>> idx.labels[:3]                             # doctest: +SKIP
    ['prompt_end', 'step:0', 'step:1']
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from activations.batch import PositionError, TokenBatch

GROUPS = ("prompt", "prompt_end", "response", "steps", "all")
"""The named position groups: the positions of every path (cache, probes, patching cells) are these,
``words:i`` and token indices; this module is their one home."""
KINDS = GROUPS + ("index", "words")


@dataclass(frozen=True)
class PositionSpec:
    """One position spec: ``kind`` in :data:`KINDS`, and ``indices`` for ``kind == "index"``."""

    kind: str
    indices: tuple[int, ...] = ()

    def __str__(self) -> str:
        if self.kind == "words":
            return "words:" + ",".join(str(i) for i in self.indices)
        return ",".join(str(i) for i in self.indices) if self.kind == "index" else self.kind


def parse_positions(specs: str | Sequence[str]) -> tuple[PositionSpec, ...]:
    """Parse position specs (``"prompt_end"``, ``"steps"``, ``"all"``, ``"3,-1"``).

    Several specs may be given as a list or in one string separated by spaces; the rows of an
    input follow the order of the specs.

    Raises:
        ValueError: an unknown spec (the message lists the accepted ones), or no spec.
    """
    if isinstance(specs, str):
        specs = specs.split()
    out: list[PositionSpec] = []
    for s in specs:
        s = str(s).strip()
        if s in GROUPS:
            out.append(PositionSpec(s))
        elif re.fullmatch(r"words:-?\d+(,-?\d+)*", s):
            out.append(PositionSpec("words", tuple(int(x) for x in s[len("words:"):].split(","))))
        elif re.fullmatch(r"-?\d+(,-?\d+)*", s):
            out.append(PositionSpec("index", tuple(int(x) for x in s.split(","))))
        else:
            raise ValueError(
                f"unknown position {s!r}: use prompt_end, prompt, response, steps, all, prompt words such as words:1,-1, or "
                "token indices such as 0,-1 (within the unpadded input; negative from its end)"
            )
    if not out:
        raise ValueError("no positions given: use prompt_end, steps, all, or token indices")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate position specs in {[str(p) for p in out]}")
    return tuple(out)


@dataclass
class PositionIndex:
    """Flat token coordinates into a padded batch, one per activation row.

    Attributes:
        rows: ``Int[Tensor, "n"]`` batch row of each entry.
        cols: ``Int[Tensor, "n"]`` padded column of each entry.
        positions: ``Int[Tensor, "n"]`` token index within the unpadded input.
        labels: per entry, the spec it came from: ``"prompt_end"``, ``"step:{j}"``,
            ``"all"`` or ``"index:{i}"`` (``i`` as given, so negative indices keep their sign).
    """

    rows: Int[Tensor, " n"]
    cols: Int[Tensor, " n"]
    positions: Int[Tensor, " n"]
    labels: list[str]

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @classmethod
    def from_pairs(cls, batch: TokenBatch, rows: Sequence[int], positions: Sequence[int],
                   labels: Sequence[str] | None = None) -> "PositionIndex":
        """Build an index from ``(row, position within the unpadded input)`` pairs.

        Raises:
            PositionError: a position outside its input.
        """
        cols = []
        for r, p in zip(rows, positions):
            if not 0 <= p < int(batch.lengths[r]):
                raise PositionError(f"{batch.keys[r]}: position {p} is outside its {int(batch.lengths[r])} tokens")
            cols.append(batch.column(r, p))
        labels = list(labels) if labels is not None else ["index"] * len(cols)
        return cls(torch.tensor(list(rows), dtype=torch.long), torch.tensor(cols, dtype=torch.long),
                   torch.tensor(list(positions), dtype=torch.long), labels)


def group_positions(group: str, batch: TokenBatch, b: int) -> list[int]:
    """The positions (within the unpadded input) of ``group`` (one of :data:`GROUPS`) in row ``b``.

    Raises:
        ValueError: ``group`` is not one of :data:`GROUPS`.
        PositionError: ``response`` or ``steps`` in an input without a teacher-forced response, or
            ``steps`` when no task registered its step words (the message names the input's key).
    """
    n, end = int(batch.lengths[b]), int(batch.prompt_end[b])
    if group == "prompt_end":
        return [end]
    if group == "prompt":
        return list(range(end + 1))
    if group == "all":
        return list(range(n))
    if group not in ("response", "steps"):
        raise ValueError(f"unknown position group {group!r}: use one of {list(GROUPS)}")
    if group == "steps":
        from activations import batch as _batch

        if _batch._STEP_WORDS is None:
            raise PositionError("position 'steps' needs the task's step words: no task registered them "
                                "(activations.batch.register_step_words; importing probes.task does)")
    if not batch.has_response[b]:
        raise PositionError(f"{batch.keys[b]}: position {group!r} needs a teacher-forced response, and this record "
                            "has none (add a 'response' field)")
    return list(range(end + 1, n)) if group == "response" else list(batch.steps[b])


def resolve_positions(specs: Sequence[PositionSpec] | str | Sequence[str], batch: TokenBatch) -> PositionIndex:
    """The coordinates of ``specs`` in ``batch``: for each input in order, its rows for each spec
    in order.

    Raises:
        PositionError: ``steps`` for an input without a response, or an explicit index or
            prompt word outside an input (the message names the input's key).
    """
    if not specs or not isinstance(next(iter(specs)), PositionSpec):
        specs = parse_positions(specs)  # type: ignore[arg-type]
    rows: list[int] = []
    pos: list[int] = []
    labels: list[str] = []
    lengths = batch.lengths.tolist()
    for b in range(len(batch)):
        n = lengths[b]
        for spec in specs:
            if spec.kind in GROUPS:
                ps = group_positions(spec.kind, batch, b)
                rows += [b] * len(ps)
                pos += ps
                labels += [f"step:{j}" for j in range(len(ps))] if spec.kind == "steps" else [spec.kind] * len(ps)
            elif spec.kind == "words":
                tokens = batch.prompt_words[b] if batch.prompt_words else []
                for i in spec.indices:
                    if not -len(tokens) <= i < len(tokens):
                        raise PositionError(
                            f"{batch.keys[b]}: prompt word {i} is out of range for a prompt of {len(tokens)} words "
                            f"(use -{len(tokens)}..{len(tokens) - 1})")
                    rows.append(b)
                    pos.append(tokens[i])
                    labels.append(f"word:{i}")
            else:
                for i in spec.indices:
                    if not -n <= i < n:
                        raise PositionError(
                            f"{batch.keys[b]}: token index {i} is out of range for an input of "
                            f"{n} tokens (use -{n}..{n - 1})"
                        )
                    rows.append(b)
                    pos.append(i % n)
                    labels.append(f"index:{i}")
    r = torch.tensor(rows, dtype=torch.long)
    p = torch.tensor(pos, dtype=torch.long)
    return PositionIndex(rows=r, cols=batch.pad_offset[r] + p if len(rows) else p.clone(),
                         positions=p, labels=labels)
