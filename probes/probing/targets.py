"""What the probes predict: per-problem labels and the targets built from them.

Labels come from a behaviour file (the per-problem JSONL that ``python -m probes.behaviour``
writes next to its summary, rows of :meth:`probes.behaviour.evaluate.ProblemBehaviour.to_dict`) or
from plain task records (``id`` and ``prompt``; only the targets that need no behaviour are then
available). Targets (:data:`TARGETS`):

- ``strategy``: the strategy of the greedy response (``forward`` = 1, ``backward`` = 0);
  unparseable responses are left out.
- ``propensity``: the model's own ``log P(F) / P(B)`` at the first response token, in nats
  (the logit difference; continuous, probed by ridge regression with R^2; the logit rather than
  ``P(forward)`` itself because it is what a linear read-out of the residual stream produces).
- ``type``: the problem type (``inversion`` = 1, ``evaluation`` = 0).
- ``correct``: whether the greedy response is correct (1) or not (0).
- ``step_value``: at row ``step:j`` of a teacher-forced trace, the value the step computes
  (an element of GF(p), ``p`` classes; the first numeral after the step's ``=``: the carried
  value of a value trace, ``m`` of a map trace's composition step, the result of a solve step).

The control task (Hewitt and Liang 2019, arXiv 1909.03368) gives each chain's surface identity,
the field and the sequence of operation names (``p13:add,mul,sub``), a random label by a
deterministic hash, balanced to the target's class shares: a probe can only learn it by
memorising surface identities that recur across chains.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from probes.tasks import TaskProblem as Problem
from probes.tasks import current_task, has
from probes.tasks import surface_identity as _surface_identity

TARGETS: tuple[str, ...] = ("strategy", "propensity", "type", "correct", "step_value")
"""Probe targets (see the module docstring)."""
CLASS_NAMES: dict[str, list[str]] = {
    "strategy": ["backward", "forward"],
    "type": ["evaluation", "inversion"],
    "correct": ["incorrect", "correct"],
}


class LabelsError(ValueError):
    """A labels file that cannot be used; the message names the line and the field."""


@dataclass
class ProblemLabels:
    """What is known of one problem. ``strategy`` is ``forward``/``backward``/``unparseable`` or
    None (no behaviour); ``logit_diff`` is ``logit(F) - logit(B)`` in nats; ``p_forward`` is
    ``P(F)`` at temperature 1; ``samples`` the strategies of the model's temperature-1 samples
    (``forward``/``backward``/``unparseable``), or None."""

    problem: Problem
    strategy: str | None = None
    correct: bool | None = None
    logit_diff: float | None = None
    p_forward: float | None = None
    samples: list[str] | None = None

    @property
    def id(self) -> str:
        return self.problem.id


@dataclass
class Labels:
    """Per-problem labels keyed by problem id (and the trace strategy for ``step_value``).

    Attributes:
        by_id: problem id -> :class:`ProblemLabels`.
        trace_strategy: strategy of the teacher-forced traces the store's ``step:j`` rows were
            cached on (``natural``: each type's natural strategy, as the cache tests use).
    """

    by_id: dict[str, ProblemLabels] = field(default_factory=dict)
    trace_strategy: str = "natural"

    def __len__(self) -> int:
        return len(self.by_id)

    def __contains__(self, key: str) -> bool:
        return key in self.by_id

    def __getitem__(self, key: str) -> ProblemLabels:
        return self.by_id[key]


def labels_from_rows(rows: Iterable[Mapping], trace_strategy: str = "natural", where: str = "rows") -> Labels:
    """Labels from dict rows (behaviour rows or task records).

    Each row needs ``prompt`` (or ``field``, ``type``, ``ops``, ``given``); ``greedy_strategy``,
    ``greedy_correct``, ``logit_diff``, ``pi`` and ``sample_strategy`` are read when present.

    Raises:
        LabelsError: a row without a problem, or whose ``id`` disagrees with its prompt.
    """
    out = Labels(trace_strategy=trace_strategy)
    task = current_task()
    for i, r in enumerate(rows):
        try:
            if "problem" in r:  # behaviour rows carry their problem (probes.behaviour.evaluate)
                p = task.problem_from_dict(r["problem"])
            elif "prompt" in r and has(task, "parse_prompt"):
                p = task.parse_prompt(r["prompt"])
            else:
                p = task.problem_from_dict(r)
        except (KeyError, ValueError) as e:
            raise LabelsError(f"{where} {i + 1}: no problem in the row ({e})") from None
        if "id" in r and r["id"] != p.id:
            raise LabelsError(f"{where} {i + 1}: id {r['id']!r} does not match its prompt ({p.id})")
        pi = r.get("pi")
        out.by_id[p.id] = ProblemLabels(
            problem=p,
            strategy=r.get("greedy_strategy"),
            correct=None if r.get("greedy_correct") is None else bool(r["greedy_correct"]),
            logit_diff=None if r.get("logit_diff") is None else float(r["logit_diff"]),
            p_forward=None if pi is None else float(pi[0]),
            samples=None if r.get("sample_strategy") is None else [str(x) for x in r["sample_strategy"]],
        )
    return out


def load_labels(path: str | Path, trace_strategy: str = "natural") -> Labels:
    """Read labels from a JSONL file (behaviour rows or task records; see the module docstring).

    Raises:
        LabelsError: a line that is not JSON or holds no problem (the message names the line).
        FileNotFoundError: no such file.
    """
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise LabelsError(f"{path}:{i + 1}: not JSON ({e})") from None
    return labels_from_rows(rows, trace_strategy, where=str(path) + " line")


def step_values(problem: Problem, strategy: str) -> list[int] | None:
    """The value each step of ``strategy``'s trace on ``problem`` computes, in step order (the
    current task's ``step_values``; see the module docstring), or None when the task has none."""
    task = current_task()
    return task.step_values(problem, strategy) if has(task, "step_values") else None


@dataclass
class Target:
    """One probe target over the rows of a store.

    Attributes:
        name: one of :data:`TARGETS` (or ``control:NAME`` / ``shuffled:NAME``).
        kind: ``binary``, ``multiclass`` or ``continuous``.
        y: ``[n]`` values (ints for classes; NaN / -1 where ``valid`` is False).
        valid: ``[n]`` bool: rows where the target is defined.
        classes: class names (index = class id) for classification targets.
        skipped: the reason the target cannot be probed (one class, no rows), or None.
    """

    name: str
    kind: str
    y: np.ndarray
    valid: np.ndarray
    classes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def class_counts(self) -> dict[str, int]:
        if self.kind == "continuous":
            return {}
        vals = self.y[self.valid].astype(int)
        return {(self.classes[c] if c < len(self.classes) else str(c)): int((vals == c).sum())
                for c in np.unique(vals)}


def build_target(name: str, keys: Sequence[str], positions: Sequence[str], labels: Labels) -> Target:
    """The target ``name`` for store rows with problem ids ``keys`` and position labels
    ``positions`` (``prompt_end``, ``step:j``).

    Rows whose problem is not in ``labels``, whose label is missing (no behaviour, an
    unparseable response) or whose position does not fit the target (``step_value`` needs
    ``step:j`` rows, the others ``prompt_end`` rows) are not valid. A target left with one class
    or no valid rows has ``skipped`` set (never raised).

    Raises:
        ValueError: an unknown target name (the message lists :data:`TARGETS`).
    """
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}: use one of {list(TARGETS)}")
    n = len(keys)
    y = np.full(n, np.nan)
    task = current_task()
    if name == "step_value" and not (has(task, "step_values") and (has(task, "natural_strategy")
                                                                   or labels.trace_strategy != "natural")):
        return Target(name, "multiclass", np.full(n, -1, dtype=np.int64), np.zeros(n, bool), [],
                      skipped="the task has no step_values (and natural_strategy)")
    for i, (k, pos) in enumerate(zip(keys, positions)):
        lab = labels.by_id.get(k)
        if lab is None:
            continue
        if name == "step_value":
            if not str(pos).startswith("step:"):
                continue
            j = int(str(pos).split(":")[1])
            strat = (task.natural_strategy[lab.problem.type] if labels.trace_strategy == "natural"
                     else labels.trace_strategy)
            vals = step_values(lab.problem, strat)
            if vals is not None and j < len(vals):
                y[i] = vals[j]
            continue
        if pos != "prompt_end":
            continue
        if name == "strategy" and lab.strategy in ("forward", "backward"):
            y[i] = float(lab.strategy == "forward")
        elif name == "type":
            y[i] = float(lab.problem.type == task.types[1])
        elif name == "correct" and lab.correct is not None:
            y[i] = float(lab.correct)
        elif name == "propensity" and lab.logit_diff is not None and np.isfinite(lab.logit_diff):
            y[i] = lab.logit_diff
    valid = np.isfinite(y)
    kind = "continuous" if name == "propensity" else ("multiclass" if name == "step_value" else "binary")
    classes = list(task.types[:2]) if name == "type" else CLASS_NAMES.get(name, [])
    if name == "step_value":
        classes = [str(v) for v in range(int(np.nanmax(y)) + 1 if valid.any() else 0)]
    t = Target(name, kind, y, valid, classes)
    if not valid.any():
        t.skipped = f"no rows with a {name} label (missing behaviour, or no matching positions)"
    elif kind == "continuous":
        if np.ptp(y[valid]) == 0:
            t.skipped = f"{name} is constant on every row"
    else:
        present = np.unique(y[valid])
        if len(present) < 2:
            what = classes[int(present[0])] if classes and int(present[0]) < len(classes) else present[0]
            t.skipped = f"one class only: every valid row is {what!r} ({int(valid.sum())} rows)"
        t.y = np.where(valid, y, -1).astype(np.int64)
    return t


def surface_identity(problem: Problem) -> str:
    """The problem's surface identity for the control task (the current task's; the finite-field
    task: the field and the operation names in order, ``p13:add,mul,sub``)."""
    return _surface_identity(current_task(), problem)


def control_labels(keys: Sequence[str], labels: Labels, target: Target, seed: int = 0) -> Target:
    """The control task of ``target`` (Hewitt and Liang 2019): a random class per surface
    identity (:func:`surface_identity`), a deterministic function of the identity and ``seed``,
    with the target's class shares (identities are sorted by hash and filled class by class up to
    each class's row share). Valid where ``target`` is valid.

    Raises:
        ValueError: a continuous target (the control task is defined for classes).
    """
    if target.kind == "continuous":
        raise ValueError("the control task is defined for classification targets")
    idents = np.array([surface_identity(labels.by_id[k].problem) if k in labels.by_id else "" for k in keys])
    v = target.valid
    y = np.full(len(keys), -1, dtype=np.int64)
    if v.any():
        ids, counts = np.unique(idents[v], return_counts=True)
        h = [hashlib.sha1(f"{seed}|{s}".encode()).hexdigest() for s in ids]
        order = np.argsort(h)
        classes, class_n = np.unique(target.y[v], return_counts=True)
        quota = np.cumsum(class_n) / class_n.sum()
        assigned = {}
        done = 0
        for j in order:
            frac = (done + counts[j] / 2) / counts.sum()
            assigned[ids[j]] = int(classes[np.searchsorted(quota, frac, side="right").clip(0, len(classes) - 1)])
            done += counts[j]
        y[v] = [assigned[s] for s in idents[v]]
    t = Target(f"control:{target.name}", target.kind, y, v.copy(), target.classes)
    if len(np.unique(y[v])) < 2:
        t.skipped = "the control task has one class (too few surface identities)"
    return t


def shuffled_labels(target: Target, groups: np.ndarray, seed: int = 0) -> Target:
    """The shuffled-label null: the target's valid labels permuted across rows (a seeded
    permutation), so no activation can carry them; a probe should score at chance."""
    rng = np.random.default_rng(seed)
    y = target.y.copy()
    idx = np.nonzero(target.valid)[0]
    y[idx] = y[idx][rng.permutation(idx.size)]
    return Target(f"shuffled:{target.name}", target.kind, y, target.valid.copy(), target.classes, target.skipped)
