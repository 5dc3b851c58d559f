"""JSONL reading and writing of task records, with per-line errors and atomic writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator


@dataclass
class LineError:
    """A line that could not be read: 1-based line number and the problem."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | LineError]]:
    """Yield ``(line_number, record)`` for each non-blank line, or a :class:`LineError`.

    A line that is not JSON, or not a JSON object, yields a ``LineError`` and reading goes on.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    with open(path, encoding="utf-8") as f:
        for i, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as e:
                yield i, LineError(i, f"not valid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(rec, dict):
                yield i, LineError(i, f"expected a JSON object, got {type(rec).__name__}")
                continue
            yield i, rec


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write records as JSONL atomically (a temporary file renamed into place)."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably
    (:func:`activations.manifest.write_bytes_atomic`: a temporary file beside it, fsync, rename)."""
    from activations.manifest import write_bytes_atomic

    write_bytes_atomic(path, text.encode("utf-8"), fsync=True)
