"""The verifier and the labeller of chain-of-thought traces.

- :func:`label` reads the strategy of any text: ``forward``, ``backward`` or ``unparseable``
  (the text must start with a strategy word and follow the trace grammar of
  :mod:`probes.task.traces`; the arithmetic is not checked).
- :func:`verify` checks a response against its problem: the strategy's grammar, every
  operation and constant against the chain, every intermediate value against exact GF(p)
  arithmetic applied to the previous written value, and the final answer against the exact
  answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from probes.task.field import SYMBOL_POOL
from probes.task.problems import Problem, apply_op, compose_affine
from probes.task.traces import STRATEGY_TOKEN, TOKEN_STRATEGY, strategy_ops, uses_map
from probes.tasks import UNPARSEABLE, Verdict, first_word_strategy

_SYMBOLS = frozenset(SYMBOL_POOL)
_STEP_OPS = frozenset({"add", "sub", "mul", "div"})


class _ParseError(ValueError):
    pass


def _segments(words: list[str]) -> list[list[str]]:
    segs, cur = [], []
    for w in words:
        if w == ";":
            segs.append(cur)
            cur = []
        else:
            cur.append(w)
    segs.append(cur)
    return segs


def _sym(w: str) -> str:
    if w not in _SYMBOLS:
        raise _ParseError(f"expected a numeral, got {w!r}")
    return w


def _expect(seg: list[str], pattern: list[str | None]) -> list[str]:
    """Match ``seg`` against ``pattern`` (None = a numeral); return the numerals."""
    if len(seg) != len(pattern):
        raise _ParseError(f"segment {' '.join(seg)!r} has {len(seg)} words, expected {len(pattern)}")
    out = []
    for w, p in zip(seg, pattern):
        if p is None:
            out.append(_sym(w))
        elif w != p:
            raise _ParseError(f"expected {p!r}, got {w!r}")
    return out


@dataclass
class ParsedTrace:
    """A trace's structure: strategy, kind (``value`` or ``map``) and its numerals as words."""

    strategy: str
    kind: str
    start: list[str]
    steps: list[tuple[str, str, list[str]]]  # (op, constant, written results)
    solve: tuple[str, str, str, str, str, str] | None  # known, sub-const, t, div-const, result, var
    known_var: str
    answer: str


def parse(text: str) -> ParsedTrace:
    """Parse a trace's structure (no arithmetic is checked).

    Raises:
        ValueError: with the reason, when the text does not follow the trace grammar.
    """
    words = text.split()
    if not words or words[0] not in TOKEN_STRATEGY:
        raise _ParseError("the first word is not a strategy word (F or B)")
    strategy = TOKEN_STRATEGY[words[0]]
    segs = _segments(words[1:])
    if len(segs) < 3:
        raise _ParseError("a trace needs a start, at least one step and an answer")
    head, *mid, tail = segs
    answer = _expect(tail, ["ans", None])[0]
    if head[:1] in (["x"], ["y"]):
        start = _expect(head, [head[0], "=", None])
        steps = []
        for seg in mid:
            if len(seg) != 4 or seg[0] not in _STEP_OPS:
                raise _ParseError(f"bad value step {' '.join(seg)!r}")
            c, v = _expect(seg, [seg[0], None, "=", None])
            steps.append((seg[0], c, [v]))
        return ParsedTrace(strategy, "value", start, steps, None, head[0], answer)
    start = _expect(head, ["m", "=", None, "b", "=", None])
    if len(mid) < 4:
        raise _ParseError("a map trace needs at least one step and a solve")
    *map_segs, known_seg, sub_seg, div_seg = mid
    steps = []
    for seg in map_segs:
        if len(seg) != 7 or seg[0] not in _STEP_OPS:
            raise _ParseError(f"bad map step {' '.join(seg)!r}")
        c, m, b = _expect(seg, [seg[0], None, "=", "m", None, "b", None])
        steps.append((seg[0], c, [m, b]))
    if known_seg[:1] not in (["x"], ["y"]):
        raise _ParseError("a map trace must restate the known value before solving")
    (known,) = _expect(known_seg, [known_seg[0], "=", None])
    bc, t = _expect(sub_seg, ["sub", None, "=", None])
    mc, r = _expect(div_seg, ["div", None, "=", None])
    return ParsedTrace(strategy, "map", start, steps, (known, bc, t, mc, r, known_seg[0]), known_seg[0], answer)


def label(text: str) -> str:
    """The strategy of any response text: ``forward``, ``backward`` or ``unparseable``."""
    try:
        return parse(text).strategy
    except _ParseError:
        return UNPARSEABLE


def first_token_strategy(text: str) -> str:
    """The strategy named by the first word alone (``unparseable`` if it names none;
    :func:`probes.tasks.first_word_strategy` with this task's words)."""
    return first_word_strategy(STRATEGY_TOKEN, text)


def verify(problem: Problem, text: str) -> Verdict:
    """Check ``text`` as a response to ``problem`` against exact GF(p) arithmetic.

    Never raises on bad text: a response that does not parse gives ``parseable=False``.
    """
    try:
        tr = parse(text)
    except _ParseError as e:
        return Verdict(UNPARSEABLE, False, error=str(e))
    F = problem.F
    bad = Verdict(tr.strategy, False, answer=tr.answer)
    want_map = uses_map(problem, tr.strategy)
    if (tr.kind == "map") != want_map:
        bad.error = f"a {tr.strategy} trace on {problem.type} must be a {'map' if want_map else 'value'} trace"
        return bad
    expected = strategy_ops(problem, tr.strategy)
    if len(tr.steps) != len(expected):
        bad.error = f"{len(tr.steps)} steps written, {len(expected)} expected"
        return bad
    if not all(F.is_symbol(w) for w in _numerals(tr)):
        bad.error = f"a numeral is not a symbol of GF({F.p})"
        return bad
    val = F.val
    ok: list[bool] = []
    errors: list[str] = []

    def mark(cond: bool, msg: str) -> None:
        ok.append(cond)
        if not cond:
            errors.append(msg)

    known_var = "x" if problem.type == "evaluation" else "y"
    if tr.kind == "value":
        start_ok = tr.known_var == known_var and val(tr.start[0]) == problem.given
        cur = val(tr.start[0])
        for i, ((op, c), (wop, wc, (wv,))) in enumerate(zip(expected, tr.steps)):
            right_op = wop == op and val(wc) == c
            mark(right_op and val(wv) == apply_op(F, op, c, cur), f"step {i + 1} is wrong")
            cur = val(wv)
        last = cur
    else:
        start_ok = val(tr.start[0]) == 1 and val(tr.start[1]) == 0
        m, b = val(tr.start[0]), val(tr.start[1])
        for i, ((op, c), (wop, wc, (wm, wb))) in enumerate(zip(expected, tr.steps)):
            right_op = wop == op and val(wc) == c
            mark(right_op and (val(wm), val(wb)) == compose_affine(F, op, c, m, b), f"step {i + 1} is wrong")
            m, b = val(wm), val(wb)
        known, bc, t, mc, r, var = tr.solve
        start_ok = start_ok and var == known_var and val(known) == problem.given
        mark(val(bc) == b and val(t) == F.sub(val(known), b), "solve: subtraction is wrong")
        mark(val(mc) == m and m != 0 and val(r) == F.div(val(t), m), "solve: division is wrong")
        last = val(r)
    if not start_ok:
        errors.insert(0, "the start of the trace is wrong")
    answer_ok = val(tr.answer) == problem.answer
    if val(tr.answer) != last:
        errors.append("the answer is not the last value")
    elif not answer_ok:
        errors.append("the answer is wrong")
    correct = start_ok and all(ok) and answer_ok and val(tr.answer) == last
    return Verdict(
        strategy=tr.strategy,
        parseable=True,
        steps_correct=ok,
        answer=tr.answer,
        answer_correct=answer_ok,
        correct=correct,
        error=errors[0] if errors else None,
    )


def _numerals(tr: ParsedTrace) -> list[str]:
    out = list(tr.start) + [tr.answer]
    for _, c, vals in tr.steps:
        out += [c, *vals]
    if tr.solve:
        out += [tr.solve[i] for i in range(5)]
    return out
