"""Chain-of-thought traces: the forward and backward strategies for both problem types.

Every response is a sequence of whitespace-separated words whose first word names the
strategy (``F`` forward, ``B`` backward), so the strategy choice has a logit-difference metric
at the first response token. Segments are separated by ``;``.

*Value traces* (the natural, cheap strategy of each type) carry one value step by step:

- forward on evaluation: ``F x = v0 ; add c1 = v1 ; mul c2 = v2 ; ans v2``
- backward on inversion (undo the operations last to first):
  ``B y = v0 ; div c2 = v1 ; sub c1 = v2 ; ans v2``

*Map traces* (the symbolic, longer strategy) compose an affine map ``z -> m*z + b`` and solve
at the end:

- forward on inversion composes ``f_k o ... o f_1`` first to last and solves ``m*x + b = y``:
  ``F m = 1 b = 0 ; add c1 = m m1 b b1 ; ... ; y = v ; sub bk = t ; div mk = x ; ans x``
- backward on evaluation composes the inverse map ``f_1^-1 o ... o f_k^-1`` last to first and
  solves ``m*y + b = x``: ``B m = 1 b = 0 ; div c2 = m .. b .. ; ... ; x = v ; sub b = t ;
  div m = y ; ans y``

(numerals are written as the field's symbols; ``1`` and ``0`` above stand for theirs).
"""

from __future__ import annotations

from activations.batch import register_step_words, word_char_offsets  # noqa: F401  (re-exported)

from probes.task.field import Field
from probes.task.problems import INVERSE_OP, Problem, apply_op, compose_affine
from probes.tasks import STRATEGIES  # noqa: F401  (every task's two strategy names, re-exported)

STRATEGY_TOKEN: dict[str, str] = {"forward": "F", "backward": "B"}
"""The first response word of each strategy."""
TOKEN_STRATEGY: dict[str, str] = {v: k for k, v in STRATEGY_TOKEN.items()}
NATURAL_STRATEGY: dict[str, str] = {"evaluation": "forward", "inversion": "backward"}
"""The cheap strategy of each problem type (a value trace rather than a map trace)."""


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {list(STRATEGIES)}")
    return strategy


def strategy_ops(problem: Problem, strategy: str) -> list[tuple[str, int]]:
    """The operations a strategy's trace applies, in trace order.

    Forward applies the chain first to last; backward applies the inverse operations last to
    first (to the value on inversion, to the output of the inverse map on evaluation).
    """
    check_strategy(strategy)
    if strategy == "forward":
        return list(problem.ops)
    return [(INVERSE_OP[op], c) for op, c in reversed(problem.ops)]


def uses_map(problem: Problem, strategy: str) -> bool:
    """True when the strategy composes a map (it is not the type's natural strategy)."""
    return NATURAL_STRATEGY[problem.type] != check_strategy(strategy)


def make_trace(problem: Problem, strategy: str) -> str:
    """The correct chain-of-thought trace of ``strategy`` on ``problem`` (plain text).

    Raises:
        ValueError: for an unknown strategy.
    """
    F: Field = problem.F
    s = F.sym
    words = [STRATEGY_TOKEN[check_strategy(strategy)]]
    ops = strategy_ops(problem, strategy)
    if not uses_map(problem, strategy):
        var = "x" if problem.type == "evaluation" else "y"
        v = problem.given
        words += [var, "=", s(v)]
        for op, c in ops:
            v = apply_op(F, op, c, v)
            words += [";", op, s(c), "=", s(v)]
        words += [";", "ans", s(v)]
        return " ".join(words)
    m, b = 1, 0
    words += ["m", "=", s(m), "b", "=", s(b)]
    for op, c in ops:
        m, b = compose_affine(F, op, c, m, b)
        words += [";", op, s(c), "=", "m", s(m), "b", s(b)]
    known = "y" if problem.type == "inversion" else "x"
    t = F.sub(problem.given, b)
    ans = F.div(t, m)
    words += [";", known, "=", s(problem.given)]
    words += [";", "sub", s(b), "=", s(t), ";", "div", s(m), "=", s(ans), ";", "ans", s(ans)]
    return " ".join(words)


def step_positions(response: str) -> list[int]:
    """Word indices (0-based, within ``response.split()``) of the ``=`` of each written step.

    One index per step segment of the trace in order: each operation step, and for map traces
    also the two solve steps (``sub b = t`` and ``div m = r``). The model predicts a step's
    result at its ``=``, so these are the positions where a step is *executed*; the result
    word is at index + 1. Segments without an ``=`` (the answer) and the start segment are not
    steps. Character offsets of the same words: :func:`word_char_offsets`.
    """
    words = response.split()
    out, seg_start = [], 0
    for i, w in enumerate(words + [";"]):
        if w == ";":
            seg = words[seg_start:i]
            if seg_start > 0 and "=" in seg and seg[0] not in ("x", "y"):
                out.append(seg_start + seg.index("="))
            seg_start = i + 1
    return out


# the steps position reads this task's traces, unless a run's task (probes.tasks.use_task) set its own
register_step_words(step_positions, replace=False)
