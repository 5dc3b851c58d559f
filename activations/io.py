"""Files, the one way: atomic writes (bytes, text, JSON), canonical JSON, and JSONL with per-line errors.

Every file the project writes goes through :func:`write_bytes_atomic` (a temporary file beside the
target, optionally fsynced, then ``os.replace``: a reader, or a killed writer's successor, sees the
old file or the whole new one); JSON through :func:`write_json` (:func:`canonical_json` of
:func:`to_jsonable`: sorted keys, one-space indent, ASCII, numpy values as Python ones, NaN and
infinities as ``null`` since JSON has none).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
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
    """Write ``text`` (UTF-8) to ``path`` atomically and durably (:func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"), fsync=True)


def write_bytes_atomic(path: str | Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, then ``os.replace``.

    A reader (or a killed writer's successor) sees either the old file or the whole new one.
    ``fsync`` also flushes the data to disk before the rename (durability across a power loss).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_jsonable(obj: Any) -> Any:
    """``obj`` with numpy arrays and scalars as Python values, tuples as lists, keys as strings and
    non-finite floats as None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy arrays and scalars
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and fixed separators: equal objects give equal strings."""
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=True) + "\n"


def write_json(path: str | Path, obj: Any, fsync: bool = True) -> Path:
    """:func:`canonical_json` of :func:`to_jsonable` ``(obj)``, written atomically (fsynced unless
    told not to). Returns ``path``."""
    write_bytes_atomic(path, canonical_json(to_jsonable(obj)).encode(), fsync=fsync)
    return Path(path)
