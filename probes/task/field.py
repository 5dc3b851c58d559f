"""Prime-field arithmetic GF(p) with numerals relabelled by a seeded bijection.

The task of "Select and Improve" (arXiv 2606.13125) relabels numerals with abstract
symbols so that no prior arithmetic knowledge helps. Here every value ``v`` in
``{0, ..., p-1}`` is written as one word from :data:`SYMBOL_POOL`; the map from values to
words is a permutation drawn from a seeded generator, one per field, so that the same
symbol names different values in GF(11) and GF(13).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

SUPPORTED_FIELDS: tuple[int, ...] = (11, 13)
"""Field sizes the task supports (both prime)."""

SYMBOL_POOL: tuple[str, ...] = (
    "zo", "ke", "ru", "pa", "li", "mu", "te", "vo", "sa", "ni", "gu", "da", "fe",
)
"""Abstract numeral words; GF(p) uses ``p`` of them (a seeded permutation of the pool)."""

DEFAULT_SYMBOL_SEED = 2606


class UnknownFieldError(ValueError):
    """Raised for a field size outside :data:`SUPPORTED_FIELDS`."""


def check_field(p: int) -> int:
    """Return ``p`` if it is a supported field size, else raise :class:`UnknownFieldError`."""
    if p not in SUPPORTED_FIELDS:
        raise UnknownFieldError(
            f"unknown field size {p!r}: supported field sizes are {list(SUPPORTED_FIELDS)}"
        )
    return p


@dataclass(frozen=True)
class Field:
    """GF(p) with its symbol bijection.

    Attributes:
        p: the prime modulus (11 or 13).
        symbols: ``symbols[v]`` is the word for value ``v``.

    Raises:
        UnknownFieldError: for an unsupported ``p``.
    """

    p: int
    symbols: tuple[str, ...]
    _values: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_field(self.p)
        if len(self.symbols) != self.p or len(set(self.symbols)) != self.p:
            raise ValueError(f"GF({self.p}) needs {self.p} distinct symbols, got {self.symbols}")
        self._values.update({s: v for v, s in enumerate(self.symbols)})

    @property
    def token(self) -> str:
        """The prompt word naming this field, e.g. ``p13``."""
        return f"p{self.p}"

    def sym(self, v: int) -> str:
        """The word for value ``v`` (taken mod p)."""
        return self.symbols[v % self.p]

    def val(self, s: str) -> int:
        """The value of word ``s``; raises ``KeyError`` if ``s`` is not a numeral of this field."""
        return self._values[s]

    def is_symbol(self, s: str) -> bool:
        return s in self._values

    def add(self, a: int, b: int) -> int:
        return (a + b) % self.p

    def sub(self, a: int, b: int) -> int:
        return (a - b) % self.p

    def mul(self, a: int, b: int) -> int:
        return (a * b) % self.p

    def inv(self, a: int) -> int:
        """Multiplicative inverse; raises ``ZeroDivisionError`` for ``a == 0 (mod p)``."""
        if a % self.p == 0:
            raise ZeroDivisionError(f"0 has no inverse in GF({self.p})")
        return pow(a, self.p - 2, self.p)

    def div(self, a: int, b: int) -> int:
        return self.mul(a, self.inv(b))


@lru_cache(maxsize=None)
def get_field(p: int, symbol_seed: int = DEFAULT_SYMBOL_SEED) -> Field:
    """The field GF(p) with its seeded numeral bijection (cached: same seed, same object).

    Raises:
        UnknownFieldError: for an unsupported ``p``.
    """
    check_field(p)
    rng = random.Random(f"symbols-{symbol_seed}-{p}")
    pool = list(SYMBOL_POOL)
    rng.shuffle(pool)
    return Field(p=p, symbols=tuple(pool[:p]))
