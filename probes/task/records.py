"""Task records: a problem with one response, as written to and read from JSONL.

A record holds at least ``id, field, type, steps, prompt, response, answer, strategy`` (plus
``ops`` and ``given``, which make it self-contained). ``answer`` is the exact answer's word.
"""

from __future__ import annotations

import random
from typing import Any

from probes.task.field import UnknownFieldError
from probes.task.problems import TYPES, Problem, parse_prompt, random_problem
from probes.task.traces import STRATEGIES, make_trace


def make_record(problem: Problem, strategy: str) -> dict[str, Any]:
    """The record of ``problem`` answered by the correct ``strategy`` trace."""
    rec = problem.to_dict()
    rec["strategy"] = strategy
    rec["response"] = make_trace(problem, strategy)
    return rec


def sample_records(
    field: int, type: str, strategy: str, steps: int, n: int, seed: int
) -> list[dict[str, Any]]:
    """``n`` reproducible records (same arguments, same records).

    Raises:
        UnknownFieldError / ValueError: for a bad field, type, strategy or step count.
    """
    if type not in TYPES:
        raise ValueError(f"unknown type {type!r}: use one of {list(TYPES)}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {list(STRATEGIES)}")
    rng = random.Random(f"sample-{seed}-{field}-{type}-{strategy}-{steps}")
    return [make_record(random_problem(rng, field, type, steps), strategy) for _ in range(n)]


class RecordError(ValueError):
    """A record that cannot be checked; the message names the problem."""


def problem_of(rec: dict[str, Any]) -> Problem:
    """The problem a record poses, from ``field, type, ops, given`` or else from ``prompt``.

    Raises:
        RecordError: a field is missing or invalid (the message names it).
    """
    if "response" not in rec:
        raise RecordError("missing field 'response'")
    if not isinstance(rec["response"], str):
        raise RecordError("field 'response' must be a string")
    structured = ("field", "type", "ops", "given")
    try:
        if all(k in rec for k in structured):
            prob = Problem.from_dict(rec)
        elif "prompt" in rec:
            prob = parse_prompt(str(rec["prompt"]))
        else:
            missing = [k for k in structured if k not in rec]
            raise RecordError(f"missing field(s) {', '.join(repr(k) for k in missing)} (or 'prompt')")
    except UnknownFieldError as e:
        raise RecordError(str(e)) from None
    except (TypeError, ValueError, KeyError) as e:
        if isinstance(e, RecordError):
            raise
        raise RecordError(f"invalid problem: {e}") from None
    if "prompt" in rec and rec["prompt"] != prob.prompt:
        raise RecordError("field 'prompt' does not match the problem's fields")
    return prob
