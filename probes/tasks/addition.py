"""Multi-digit addition written digit by digit: the task interface's worked example.

A small, self-contained task with every member of :class:`probes.tasks.Task`, required and optional
(:class:`AdditionTask`, loadable as ``probes.tasks.addition:AdditionTask``). Numbers are base 10 and
written one digit per word, so a word-level tokenizer (:meth:`AdditionTask.vocabulary`) covers every
prompt and response.

Problems (:class:`AdditionProblem`). ``length`` (the difficulty, >= 1) bounds the operands:
``0 <= a, b < 10**length``, so ``c = a + b < 2 * 10**length``. Every number is written zero-padded to
``width = length + 1`` digits, most significant digit first, so that ``c`` always fits and every prompt
of one length has ``2 * width + 4`` words. Two types, as the finite-field task's evaluation and
inversion:

- ``sum``: given ``a`` and ``b``, find ``c = a + b``;
- ``missing``: given ``a`` and ``c = a + b``, find ``b`` (column subtraction ``c - a``).

The prompt is ``TYPE : A , G ?`` with ``A`` the digits of ``a`` and ``G`` those of the second given
number (``b`` for ``sum``, ``c`` for ``missing``); for ``a = 47``, ``b = 85`` (length 2, width 3)::

    sum : 0 4 7 , 0 8 5 ?          (answer 1 3 2)
    missing : 0 4 7 , 1 3 2 ?      (answer 0 8 5)

Twins. The two prompts above are *twins* (:meth:`AdditionProblem.twin`): the same numbers ``a, b, c``
posed as the other type. The template is the same for both types and every number has the same width,
so twins have exactly the same number of words and the same word at every position except the type
word (index 0) and those digits of the second operand where ``b`` and ``c`` differ. Counterfactual
patching can therefore align a problem with its twin word by word.

Strategies (the first response word names the strategy). Each executed step writes ``=`` followed by
its result; steps are separated by ``;`` and the trace ends with ``; ans`` and the answer's ``width``
digits (most significant first). Examples for the problems above:

- ``forward`` (first word ``R``): right-to-left column arithmetic, least significant column first.
  A step is ``X Y K = D K'``: the column's digits (``sum``: ``a_i b_i``; ``missing``: ``c_i a_i``,
  minuend first), the incoming carry ``c0``/``c1`` (``sum``) or borrow ``b0``/``b1`` (``missing``),
  then the result digit and the outgoing carry or borrow (the first step's is ``c0``/``b0``)::

    sum     : R 7 5 c0 = 2 c1 ; 4 8 c1 = 3 c1 ; 0 0 c1 = 1 c0 ; ans 1 3 2
    missing : R 2 7 b0 = 5 b1 ; 3 4 b1 = 8 b1 ; 1 0 b1 = 0 b0 ; ans 0 8 5

- ``backward`` (first word ``L``): left-to-right, most significant column first, keeping a running
  prefix result and fixing up earlier digits when a carry (or borrow) arrives. Step ``j`` (1-based)
  is ``X Y = D_1 .. D_j``: the column's digits (same order as forward), then the result over the top
  ``j`` columns, ``10 * previous + X + Y`` (``sum``) or ``10 * previous + X - Y`` (``missing``),
  written with exactly ``j`` digits (it always fits, and is never negative for ``missing``)::

    sum     : L 0 0 = 0 ; 4 8 = 1 2 ; 7 5 = 1 3 2 ; ans 1 3 2
    missing : L 1 0 = 1 ; 3 4 = 0 9 ; 2 7 = 0 8 5 ; ans 0 8 5

Both strategies have ``width`` steps on every problem. The natural (cheap) strategy is ``forward`` for
both types (:data:`NATURAL_STRATEGY`): schoolbook right-to-left arithmetic, whose steps are local (two
digits and a carry in, a digit and a carry out) and whose trace is shorter (``8 * width + 2`` words
against ``width * (width + 11) / 2 + 2``); the backward trace rewrites its growing prefix at every step.

The verifier (:func:`verify`) checks the strategy's grammar, every step's operand digits against the
problem, every carry/borrow-in against the previous step's written carry/borrow-out, every written
result against exact arithmetic on the written inputs, and the answer against both the last written
result and the exact answer. The labeller (:func:`label`) reads the strategy of any text from the
first word and the grammar alone (no arithmetic).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from probes.tasks import UNPARSEABLE, Verdict

TYPES: tuple[str, ...] = ("sum", "missing")
"""The problem types: ``sum`` (find ``a + b``) and ``missing`` (find ``b`` from ``a`` and ``a + b``)."""
STRATEGIES: tuple[str, ...] = ("forward", "backward")
STRATEGY_WORD: dict[str, str] = {"forward": "R", "backward": "L"}
"""The first response word of each strategy (``R``: right to left; ``L``: left to right)."""
WORD_STRATEGY: dict[str, str] = {w: s for s, w in STRATEGY_WORD.items()}
NATURAL_STRATEGY: dict[str, str] = {"sum": "forward", "missing": "forward"}
"""The cheap strategy of each type: schoolbook right-to-left column arithmetic for both (see the
module docstring)."""

DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
CARRY_WORDS: tuple[str, str] = ("c0", "c1")
"""Carry 0 and carry 1 (forward ``sum`` traces)."""
BORROW_WORDS: tuple[str, str] = ("b0", "b1")
"""Borrow 0 and borrow 1 (forward ``missing`` traces)."""
_FAMILY = {"sum": CARRY_WORDS, "missing": BORROW_WORDS}
_FLAG = {w: (fam, i) for fam in (CARRY_WORDS, BORROW_WORDS) for i, w in enumerate(fam)}

PROMPT_SLOTS: tuple[tuple[str, int], ...] = (
    ("type", 0), (":", 1), ("first operand top digit", 2), ("first operand next digit", 3),
    ("second operand tens digit", -3), ("second operand units digit", -2), ("?", -1),
)
"""Word roles at a fixed index in every prompt, as ``(name, word index)`` in prompt order (negative:
from the prompt's last word). A prompt is ``TYPE : A , G ?`` with ``A`` and ``G`` of ``length + 1 >= 2``
digits each: the first two digits of the first operand are at a fixed index from the start, the last
two of the second operand at a fixed index from the end (the first operand's units digit, the comma
and the second operand's top digit move with the length, so they are not slots). The top digit of
the first operand is always ``0`` (the padding); its next digit is the most significant digit of
``a`` as ``length`` digits."""


def _check_length(length: int) -> int:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be an int >= 1 (the number of digits of a and b), got {length!r}")
    return length


def _check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {list(STRATEGIES)}")
    return strategy


def digits_of(value: int, width: int) -> list[int]:
    """The ``width`` decimal digits of ``value``, most significant first (zero-padded).

    Raises:
        ValueError: ``value`` is negative or has more than ``width`` digits.
    """
    if value < 0 or value >= 10 ** width:
        raise ValueError(f"{value} does not fit in {width} digits")
    return [int(ch) for ch in str(value).zfill(width)]


def _words(value: int, width: int) -> list[str]:
    return [str(d) for d in digits_of(value, width)]


@dataclass(frozen=True)
class AdditionProblem:
    """One problem: the addends ``a`` and ``b`` of ``length`` digits at most, posed as a type.

    Attributes:
        type: ``"sum"`` (given ``a``, ``b``; find ``c = a + b``) or ``"missing"`` (given ``a``,
            ``c``; find ``b``).
        length: the difficulty, an int >= 1; ``0 <= a, b < 10**length``.
        a: the first addend (given in both types).
        b: the second addend (given for ``sum``, the answer for ``missing``).

    Both types store the addends, so a problem and its twin differ only in ``type``.

    Raises:
        ValueError: an unknown type, ``length < 1`` or an addend out of range.
    """

    type: str
    length: int
    a: int
    b: int

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"unknown problem type {self.type!r}: use one of {list(TYPES)}")
        _check_length(self.length)
        for name in ("a", "b"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 10 ** self.length:
                raise ValueError(f"{name} = {v!r} is not an int in [0, 10**{self.length}) (length {self.length})")

    @property
    def width(self) -> int:
        """The number of digits every number of the problem is written with (``length + 1``)."""
        return self.length + 1

    @property
    def c(self) -> int:
        """The sum ``a + b`` (fits in :attr:`width` digits)."""
        return self.a + self.b

    @property
    def given(self) -> int:
        """The second given number: ``b`` for ``sum``, ``c`` for ``missing``."""
        return self.b if self.type == "sum" else self.c

    @property
    def answer(self) -> int:
        """The exact answer: ``c`` for ``sum``, ``b`` for ``missing``."""
        return self.c if self.type == "sum" else self.b

    @property
    def answer_words(self) -> str:
        """The answer as the trace writes it: :attr:`width` digit words, most significant first."""
        return " ".join(_words(self.answer, self.width))

    @property
    def stratum(self) -> str:
        """``TYPE/kLENGTH``, e.g. ``sum/k2``."""
        return f"{self.type}/k{self.length}"

    @property
    def chain_id(self) -> str:
        """Stable id of the numbers (length, a, b), shared by the problem and its twin."""
        return hashlib.sha1(f"add|k{self.length}|{self.a}|{self.b}".encode()).hexdigest()[:10]

    @property
    def id(self) -> str:
        """Stable problem id, e.g. ``add-sum-k2-1a2b3c4d5e``: the same problem always has it."""
        return f"add-{self.type}-k{self.length}-{self.chain_id}"

    @property
    def prompt(self) -> str:
        """The prompt, ``TYPE : A , G ?`` (``2 * width + 4`` words; see the module docstring)."""
        w = self.width
        return " ".join([self.type, ":", *_words(self.a, w), ",", *_words(self.given, w), "?"])

    def twin(self) -> "AdditionProblem":
        """The same numbers posed as the other type (same length, same word count)."""
        return AdditionProblem("missing" if self.type == "sum" else "sum", self.length, self.a, self.b)

    def to_dict(self) -> dict:
        """A JSON-able record; :meth:`from_dict` reads ``type``, ``length``, ``a`` and ``b`` back."""
        return {
            "id": self.id,
            "type": self.type,
            "length": self.length,
            "a": self.a,
            "b": self.b,
            "stratum": self.stratum,
            "chain_id": self.chain_id,
            "prompt": self.prompt,
            "answer": self.answer_words,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "AdditionProblem":
        """Rebuild a problem from :meth:`to_dict` output (extra keys are ignored).

        Raises:
            KeyError: ``type``, ``length``, ``a`` or ``b`` is missing.
            ValueError: a value is invalid, or the record's ``id`` is not this problem's.
        """
        p = cls(type=str(d["type"]), length=int(d["length"]), a=int(d["a"]), b=int(d["b"]))
        if "id" in d and d["id"] != p.id:
            raise ValueError(f"record id {d['id']!r} does not match its numbers (expected {p.id!r})")
        return p


def parse_prompt(prompt: str) -> AdditionProblem:
    """The problem of a prompt (the inverse of :attr:`AdditionProblem.prompt`).

    Raises:
        ValueError: the text is not a prompt of this task (the message says why).
    """
    words = prompt.split()
    n = len(words)
    if n < 8 or (n - 4) % 2 or words[0] not in TYPES or words[1] != ":" or words[-1] != "?":
        raise ValueError(f"not an addition prompt (expected 'TYPE : A , G ?'): {prompt!r}")
    w = (n - 4) // 2
    A, comma, G = words[2:2 + w], words[2 + w], words[3 + w:-1]
    if comma != "," or not all(x in DIGITS for x in A + G):
        raise ValueError(f"not an addition prompt (operands must be {w} digit words each): {prompt!r}")
    a, g = int("".join(A)), int("".join(G))
    b = g if words[0] == "sum" else g - a
    try:
        p = AdditionProblem(words[0], w - 1, a, b)
    except ValueError as e:
        raise ValueError(f"prompt {prompt!r} has no valid problem: {e}") from None
    if p.prompt.split() != words:
        raise ValueError(f"prompt {prompt!r} is not zero-padded to {w} digits as the task writes it")
    return p


# --- traces -------------------------------------------------------------------------------------


def _columns(problem: AdditionProblem) -> list[tuple[int, int]]:
    """The operand digits of each column, most significant first: ``(a_i, b_i)`` for ``sum``,
    ``(c_i, a_i)`` (minuend first) for ``missing``."""
    w = problem.width
    a = digits_of(problem.a, w)
    if problem.type == "sum":
        return list(zip(a, digits_of(problem.b, w)))
    return list(zip(digits_of(problem.c, w), a))


def _column_op(ptype: str, x: int, y: int, k: int) -> tuple[int, int]:
    """One right-to-left column: ``(digit, carry-or-borrow out)`` of ``x + y + k`` or ``x - y - k``."""
    if ptype == "sum":
        t = x + y + k
        return t % 10, t // 10
    t = x - y - k
    return t % 10, int(t < 0)


def _prefix_op(ptype: str, prev: int, x: int, y: int) -> int:
    """One left-to-right step: the result over one more column."""
    return 10 * prev + (x + y if ptype == "sum" else x - y)


def make_trace(problem: AdditionProblem, strategy: str) -> str:
    """The correct trace of ``strategy`` on ``problem`` (whitespace-separated words).

    Raises:
        ValueError: an unknown strategy.
    """
    _check_strategy(strategy)
    cols = _columns(problem)
    segs: list[list[str]] = []
    if strategy == "forward":
        fam = _FAMILY[problem.type]
        k = 0
        for x, y in reversed(cols):
            d, k2 = _column_op(problem.type, x, y, k)
            segs.append([str(x), str(y), fam[k], "=", str(d), fam[k2]])
            k = k2
    else:
        v = 0
        for j, (x, y) in enumerate(cols, start=1):
            v = _prefix_op(problem.type, v, x, y)
            segs.append([str(x), str(y), "=", *_words(v, j)])
    words = [STRATEGY_WORD[strategy]]
    for seg in segs:
        words += seg + [";"]
    words += ["ans", *_words(problem.answer, problem.width)]
    return " ".join(words)


def step_positions(response: str) -> list[int]:
    """Word indices (0-based, within ``response.split()``) of the ``=`` of each step, in order.

    One index per ``;``-separated segment that contains an ``=`` (the first ``=`` of it); the
    step's result starts at index + 1. Works on any text (garbage gives the ``=`` it has).
    """
    words = response.split()
    out, start = [], 0
    for i, w in enumerate(words + [";"]):
        if w == ";":
            if "=" in words[start:i]:
                out.append(start + words[start:i].index("="))
            start = i + 1
    return out


# --- parser, labeller, verifier -----------------------------------------------------------------


class _ParseError(ValueError):
    pass


@dataclass
class ParsedTrace:
    """A trace's structure (nothing checked but the grammar).

    Attributes:
        strategy: ``forward`` or ``backward``.
        steps: forward: ``(x, y, k_in, digit, k_out)`` with carries/borrows as 0/1; backward:
            ``(x, y, value)`` with value the step's written result as an int.
        family: forward: the carry or borrow words used (``CARRY_WORDS``/``BORROW_WORDS``); else None.
        answer: the answer's digit words joined by spaces.
    """

    strategy: str
    steps: list[tuple[int, ...]]
    family: tuple[str, str] | None
    answer: str


def _digit(w: str) -> int:
    if w not in DIGITS:
        raise _ParseError(f"expected a digit, got {w!r}")
    return int(w)


def parse(text: str) -> ParsedTrace:
    """Parse a trace's grammar (see the module docstring); no arithmetic is checked.

    Raises:
        ValueError: the text follows no strategy's grammar (the message says where).
    """
    words = text.split()
    if not words or words[0] not in WORD_STRATEGY:
        raise _ParseError(f"the first word is not a strategy word ({' or '.join(WORD_STRATEGY)})")
    strategy = WORD_STRATEGY[words[0]]
    segs: list[list[str]] = [[]]
    for w in words[1:]:
        if w == ";":
            segs.append([])
        else:
            segs[-1].append(w)
    if len(segs) < 2:
        raise _ParseError("a trace needs at least one step and an answer")
    *mid, tail = segs
    if len(tail) < 2 or tail[0] != "ans":
        raise _ParseError("the trace must end with '; ans' and the answer's digits")
    answer = [_digit(w) for w in tail[1:]]
    if len(mid) != len(answer):
        raise _ParseError(f"{len(mid)} steps but a {len(answer)}-digit answer (one step per column)")
    steps: list[tuple[int, ...]] = []
    family = None
    for j, seg in enumerate(mid, start=1):
        if strategy == "forward":
            if len(seg) != 6 or seg[3] != "=" or seg[2] not in _FLAG or seg[5] not in _FLAG:
                raise _ParseError(f"bad forward step {' '.join(seg)!r} (expected 'X Y K = D K')")
            (f_in, k_in), (f_out, k_out) = _FLAG[seg[2]], _FLAG[seg[5]]
            if family is None:
                family = f_in
            if f_in != family or f_out != family:
                raise _ParseError("a forward trace mixes carry (c0/c1) and borrow (b0/b1) words")
            steps.append((_digit(seg[0]), _digit(seg[1]), k_in, _digit(seg[4]), k_out))
        else:
            if len(seg) != 3 + j or seg[2] != "=":
                raise _ParseError(f"bad backward step {j} {' '.join(seg)!r} (expected 'X Y = ' and {j} digits)")
            value = int("".join(str(_digit(w)) for w in seg[3:]))
            steps.append((_digit(seg[0]), _digit(seg[1]), value))
    return ParsedTrace(strategy, steps, family, " ".join(tail[1:]))


def label(text: str) -> str:
    """The strategy of any text: ``forward``, ``backward`` or ``unparseable`` (empty text, garbage,
    a first word other than ``R``/``L``, or a trace that breaks the strategy's grammar)."""
    try:
        return parse(text).strategy
    except _ParseError:
        return UNPARSEABLE


def verify(problem: AdditionProblem, text: str) -> Verdict:
    """Check ``text`` as a response to ``problem`` against exact integer arithmetic.

    Never raises on bad text: text that does not parse gives ``strategy="unparseable"``.
    """
    try:
        tr = parse(text)
    except _ParseError as e:
        return Verdict(UNPARSEABLE, False, error=str(e))
    bad = Verdict(tr.strategy, False, answer=tr.answer)
    if len(tr.steps) != problem.width:
        bad.error = f"{len(tr.steps)} steps written, {problem.width} expected (one per column)"
        return bad
    if tr.family is not None and tr.family != _FAMILY[problem.type]:
        bad.error = f"a forward trace on {problem.type} writes {'/'.join(_FAMILY[problem.type])}"
        return bad
    cols = _columns(problem)
    ok: list[bool] = []
    if tr.strategy == "forward":
        k, digits = 0, []
        for (x, y), (wx, wy, k_in, d, k_out) in zip(reversed(cols), tr.steps):
            ok.append((wx, wy) == (x, y) and k_in == k and (d, k_out) == _column_op(problem.type, wx, wy, k_in))
            k = k_out
            digits.append(d)
        last = int("".join(str(d) for d in reversed(digits)))
    else:
        v = 0
        for (x, y), (wx, wy, wv) in zip(cols, tr.steps):
            ok.append((wx, wy) == (x, y) and wv == _prefix_op(problem.type, v, wx, wy))
            v = wv
        last = v
    written = int(tr.answer.replace(" ", ""))
    answer_ok = written == problem.answer
    error = None
    if not all(ok):
        error = f"step {ok.index(False) + 1} is wrong"
    elif written != last:
        error = "the answer is not the last step's result"
    elif not answer_ok:
        error = "the answer is wrong"
    return Verdict(tr.strategy, True, ok, tr.answer, answer_ok, error is None, error)


# --- the task -----------------------------------------------------------------------------------


class AdditionTask:
    """Multi-digit addition and its inverse, digit by digit (see the module docstring).

    Attributes: as :class:`probes.tasks.Task`, with every optional member.
    """

    name = "multi-digit addition (base 10, one word per digit)"
    strategies = STRATEGIES
    strategy_words = STRATEGY_WORD
    types = TYPES
    natural_strategy = NATURAL_STRATEGY
    prompt_slots = PROMPT_SLOTS

    def sample_problems(self, n: int, seed: int, lengths: Sequence[int]) -> list[AdditionProblem]:
        """``n`` distinct problems drawn reproducibly from ``seed``: round-robin over the cells
        type x length (``lengths`` order, types inner), the addends uniform in ``[0, 10**length)``.

        Args:
            n: the number of problems (>= 0).
            seed: any int; the same arguments give the same list.
            lengths: the lengths (digits of the addends) to draw, each >= 1.

        Raises:
            ValueError: ``n < 0``, no lengths, a length < 1, or a cell asked for more problems than
                it holds (a length-``k`` cell holds ``100**k`` problems: 100 for length 1).
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        lengths = [_check_length(k) for k in lengths]
        if not lengths:
            raise ValueError("lengths is empty: give at least one length >= 1")
        cells = [(t, k) for k in lengths for t in TYPES]
        need = Counter(cells[i % len(cells)] for i in range(n))
        for (t, k), m in need.items():
            if m > 100 ** k:
                raise ValueError(f"cannot draw {n} distinct problems over lengths {list(lengths)}: cell {t}/k{k} "
                                 f"holds {100 ** k} problems and {m} are asked of it; ask for fewer problems or "
                                 "longer lengths")
        rng = random.Random(f"addition-eval-{seed}")
        out, seen = [], set()
        for i in range(n):
            t, k = cells[i % len(cells)]
            while True:  # terminates: the cell has an unseen problem (checked above)
                p = AdditionProblem(t, k, rng.randrange(10 ** k), rng.randrange(10 ** k))
                if p.id not in seen:
                    break
            seen.add(p.id)
            out.append(p)
        return out

    def problem_from_dict(self, d: dict) -> AdditionProblem:
        """:meth:`AdditionProblem.from_dict` (raises ``KeyError``/``ValueError`` on a bad record)."""
        return AdditionProblem.from_dict(d)

    def verify(self, problem: AdditionProblem, response: str) -> Verdict:
        """:func:`verify`: a :class:`Verdict` (``.correct``, ``.strategy``, ``.to_dict()``); never raises."""
        return verify(problem, response)

    def label(self, response: str) -> str:
        """:func:`label`: ``forward``, ``backward`` or ``unparseable``."""
        return label(response)

    def vocabulary(self) -> list[str]:
        """Every word of prompts and responses, in a stable order (no special tokens: those are
        the tokenizer's)."""
        vocab = [*TYPES, ":", ",", "?", *DIGITS, *STRATEGY_WORD.values(), "=", ";", "ans",
                 *CARRY_WORDS, *BORROW_WORDS]
        assert len(vocab) == len(set(vocab)), "duplicate word in the addition vocabulary"
        return vocab

    def surface_features(self, problem: AdditionProblem) -> dict[str, str]:
        """The prompt-surface baseline of the probes: ``{"type x length": "sum|k2"}``."""
        return {"type x length": f"{problem.type}|k{problem.length}"}

    def canonical_response(self, problem: AdditionProblem, strategy: str) -> str:
        """:func:`make_trace` (raises ``ValueError`` on an unknown strategy)."""
        return make_trace(problem, strategy)

    def twin(self, problem: AdditionProblem) -> AdditionProblem:
        """:meth:`AdditionProblem.twin`: the same numbers posed as the other type."""
        return problem.twin()

    def step_positions(self, response: str) -> list[int]:
        """:func:`step_positions`: the word index of each step's ``=``."""
        return step_positions(response)

    def max_response_words(self, length: int) -> int:
        """The number of words of the longer canonical trace at ``length`` (a generation budget).

        Raises:
            ValueError: ``length < 1``.
        """
        w = _check_length(length) + 1
        return max(8 * w + 2, w * (w + 11) // 2 + 2)

    def parse_prompt(self, prompt: str) -> AdditionProblem:
        """:func:`parse_prompt`: the problem a prompt poses."""
        return parse_prompt(prompt)

    def surface_identity(self, problem: AdditionProblem) -> str:
        """The control task's surface identity: the length and the units digits of the two given
        numbers (``k2|7,5``), which recur across problems."""
        return f"k{problem.length}|{problem.a % 10},{problem.given % 10}"

    def step_values(self, problem: AdditionProblem, strategy: str) -> list[int]:
        """The value each step of ``strategy``'s canonical trace writes after its ``=``: the result
        digit (forward) or the running prefix result read as a number (backward)."""
        words = make_trace(problem, strategy).split()
        out = []
        for i in step_positions(" ".join(words)):
            j = i + 1
            digits = []
            while j < len(words) and words[j].isdigit():
                digits.append(words[j])
                j += 1
            out.append(int("".join(digits)))
        return out
