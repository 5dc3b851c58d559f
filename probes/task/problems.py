"""Problems: chains of invertible affine operations over GF(p).

A problem is a chain of ``k`` operations ``f_k o ... o f_1`` (``k`` = difficulty, the number of
steps) in GF(p), each ``add c``, ``sub c`` (``c != 0``) or ``mul c`` (``c`` not in {0, 1}).

- *evaluation*: given the input ``x``, find ``y = f_k(...f_1(x))``;
- *inversion*: given the output ``y``, find the ``x`` with ``f_k(...f_1(x)) = y``.

Prompts are plain whitespace-separated words. The evaluation and inversion prompts of the same
chain and the same given value have the same length and differ in exactly three words (the
type word and the two variable names), which makes them symmetric counterfactual pairs for
activation patching (Heimersheim and Nanda 2024, arXiv 2404.15255)::

    p13 eval : add ke , mul ru ; x = pa ; y = ?
    p13 inv : add ke , mul ru ; y = pa ; x = ?
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

from probes.task.field import Field, get_field

OPS: tuple[str, ...] = ("add", "sub", "mul")
"""Operations a problem's chain is built from."""
INVERSE_OP: dict[str, str] = {"add": "sub", "sub": "add", "mul": "div", "div": "mul"}
"""The operation that undoes each operation (``div c`` is multiplication by ``c^-1``)."""
TYPES: tuple[str, ...] = ("evaluation", "inversion")
TYPE_WORD: dict[str, str] = {"evaluation": "eval", "inversion": "inv"}
ProblemType = Literal["evaluation", "inversion"]


PROMPT_SLOTS: tuple[tuple[str, int], ...] = (
    ("field", 0), ("type", 1), (":", 2), ("last op", -10), ("its operand", -9), (";", -8), ("given var", -7),
    ("= (given)", -6), ("given value", -5), ("; (query)", -4), ("asked var", -3), ("= (asked)", -2), ("?", -1),
)
"""Word roles every task prompt has, as ``(name, word index)`` in prompt order (negative: from
the prompt's last word). A prompt is ``pF TYPE : op c , ... , op c ; v = V ; w = ?``: the first
three words and the last ten (the last operation and its operand, then the given and the asked
variable) are the same role whatever the chain length; for a one-step chain the two lists meet.
The position x layer probe map reads these positions (``activations.positions``, ``words:i``)."""

MAP_POSITIONS: str = "words:" + ",".join(str(i) for _, i in PROMPT_SLOTS)
"""The position spec of :data:`PROMPT_SLOTS` (labels ``word:i`` in an activation store)."""


def apply_op(F: Field, op: str, c: int, v: int) -> int:
    """Apply ``op c`` to the value ``v`` in GF(p).

    Raises:
        ValueError: for an unknown operation.
        ZeroDivisionError: for ``div 0``.
    """
    if op == "add":
        return F.add(v, c)
    if op == "sub":
        return F.sub(v, c)
    if op == "mul":
        return F.mul(v, c)
    if op == "div":
        return F.div(v, c)
    raise ValueError(f"unknown operation {op!r}: known operations are add, sub, mul, div")


def compose_affine(F: Field, op: str, c: int, m: int, b: int) -> tuple[int, int]:
    """Compose ``op c`` after the affine map ``z -> m*z + b``; returns the new ``(m, b)``."""
    if op in ("add", "sub"):
        return m, apply_op(F, op, c, b)
    return apply_op(F, op, c, m), apply_op(F, op, c, b)


@dataclass(frozen=True)
class Problem:
    """One problem: a field, a type, a chain of operations and the given value.

    Attributes:
        field: the prime p (11 or 13).
        type: ``"evaluation"`` (``given`` is x) or ``"inversion"`` (``given`` is y).
        ops: the chain, first operation first, as ``(op, c)`` pairs with values in GF(p).
        given: the known value (x for evaluation, y for inversion).
    """

    field: int
    type: str
    ops: tuple[tuple[str, int], ...]
    given: int

    def __post_init__(self) -> None:
        F = get_field(self.field)
        if self.type not in TYPES:
            raise ValueError(f"unknown problem type {self.type!r}: use one of {list(TYPES)}")
        if not self.ops:
            raise ValueError("a problem needs at least one operation (steps >= 1)")
        for op, c in self.ops:
            if op not in OPS:
                raise ValueError(f"unknown operation {op!r} in chain: use one of {list(OPS)}")
            if not 0 <= c < F.p or c == 0 or (op == "mul" and c == 1):
                raise ValueError(f"invalid constant {c} for {op} in GF({F.p})")
        if not 0 <= self.given < F.p:
            raise ValueError(f"given value {self.given} is outside GF({F.p})")

    @property
    def F(self) -> Field:
        return get_field(self.field)

    @property
    def steps(self) -> int:
        """The difficulty k: the number of operations."""
        return len(self.ops)

    @property
    def length(self) -> int:
        """The chain length (the task interface's name for :attr:`steps`)."""
        return len(self.ops)

    @property
    def stratum(self) -> str:
        """The problem's stratum, ``TYPE/kSTEPS/pFIELD`` (e.g. ``evaluation/k3/p11``)."""
        return f"{self.type}/k{self.steps}/p{self.field}"

    def forward_map(self) -> tuple[int, int]:
        """``(m, b)`` with ``f_k o ... o f_1 (x) = m*x + b``."""
        m, b = 1, 0
        for op, c in self.ops:
            m, b = compose_affine(self.F, op, c, m, b)
        return m, b

    @property
    def answer(self) -> int:
        """The exact answer in GF(p): y for evaluation, x for inversion."""
        F = self.F
        if self.type == "evaluation":
            v = self.given
            for op, c in self.ops:
                v = apply_op(F, op, c, v)
            return v
        v = self.given
        for op, c in reversed(self.ops):
            v = apply_op(F, INVERSE_OP[op], c, v)
        return v

    @property
    def chain_id(self) -> str:
        """Stable id of the chain and given value, shared by the evaluation and inversion twins."""
        key = f"{self.field}|" + ",".join(f"{o}{c}" for o, c in self.ops) + f"|{self.given}"
        return hashlib.sha1(key.encode()).hexdigest()[:10]

    @property
    def id(self) -> str:
        """Stable problem id, e.g. ``p13-inv-k3-1a2b3c4d5e``: the same problem always has it."""
        return f"p{self.field}-{TYPE_WORD[self.type]}-k{self.steps}-{self.chain_id}"

    @property
    def prompt(self) -> str:
        """The prompt text (whitespace-separated words; see the module docstring)."""
        F = self.F
        chain = " , ".join(f"{op} {F.sym(c)}" for op, c in self.ops)
        known, unknown = ("x", "y") if self.type == "evaluation" else ("y", "x")
        return (
            f"{F.token} {TYPE_WORD[self.type]} : {chain} ; "
            f"{known} = {F.sym(self.given)} ; {unknown} = ?"
        )

    def twin(self) -> "Problem":
        """The same chain and given value posed as the other problem type."""
        other = "inversion" if self.type == "evaluation" else "evaluation"
        return Problem(self.field, other, self.ops, self.given)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "field": self.field,
            "type": self.type,
            "steps": self.steps,
            "ops": [[op, c] for op, c in self.ops],
            "given": self.given,
            "prompt": self.prompt,
            "answer": self.F.sym(self.answer),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Problem":
        """Rebuild a problem from :meth:`to_dict` output (extra keys are ignored).

        Raises:
            KeyError: a required key (field, type, ops, given) is missing.
            ValueError / UnknownFieldError: a value is invalid.
        """
        return cls(
            field=int(d["field"]),
            type=str(d["type"]),
            ops=tuple((str(o), int(c)) for o, c in d["ops"]),
            given=int(d["given"]),
        )


def parse_prompt(prompt: str) -> Problem:
    """Rebuild the problem from its prompt text (the inverse of :attr:`Problem.prompt`).

    Raises:
        ValueError: the prompt does not follow the task's format (the message says where).
        UnknownFieldError: the field word names an unsupported field.
    """
    from probes.task.field import check_field

    words = prompt.split()
    if len(words) < 11 or not words[0].startswith("p") or not words[0][1:].isdigit():
        raise ValueError(f"not a task prompt (expected 'pP TYPE : ...'): {prompt!r}")
    F = get_field(check_field(int(words[0][1:])))
    types = {v: k for k, v in TYPE_WORD.items()}
    if words[1] not in types or words[2] != ":":
        raise ValueError(f"prompt type word {words[1]!r} is not one of {sorted(types)}")
    ptype = types[words[1]]
    try:
        semi = words.index(";")
        chain = words[3:semi]
        ops = []
        for i in range(0, len(chain), 3):
            op, c = chain[i], chain[i + 1]
            if i + 2 < len(chain) and chain[i + 2] != ",":
                raise ValueError
            ops.append((op, F.val(c)))
        tail = words[semi + 1 :]
        known, unknown = ("x", "y") if ptype == "evaluation" else ("y", "x")
        if tail[:2] != [known, "="] or tail[3:] != [";", unknown, "=", "?"]:
            raise ValueError
        given = F.val(tail[2])
    except (ValueError, IndexError, KeyError):
        raise ValueError(f"prompt does not follow the task format: {prompt!r}") from None
    return Problem(F.p, ptype, tuple(ops), given)


def random_problem(rng: random.Random, field: int, type: str, steps: int) -> Problem:
    """Draw one problem uniformly: operations, constants and the given value."""
    F = get_field(field)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ops = []
    for _ in range(steps):
        op = rng.choice(OPS)
        c = rng.randrange(2, F.p) if op == "mul" else rng.randrange(1, F.p)
        ops.append((op, c))
    return Problem(field, type, tuple(ops), rng.randrange(F.p))


def sample_problems(
    n: int,
    seed: int,
    fields: tuple[int, ...] = (11, 13),
    types: tuple[str, ...] = TYPES,
    steps: tuple[int, ...] = (1, 2, 3, 4),
    step_weights: tuple[float, ...] | None = None,
) -> list[Problem]:
    """``n`` problems drawn reproducibly from ``seed`` (same arguments, same list).

    Fields and types are drawn uniformly; steps by ``step_weights`` (uniform if None).
    """
    rng = random.Random(f"problems-{seed}")
    out = []
    for _ in range(n):
        k = rng.choices(steps, weights=step_weights)[0]
        out.append(random_problem(rng, rng.choice(fields), rng.choice(types), k))
    return out
