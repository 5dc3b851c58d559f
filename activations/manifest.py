"""Manifests: deterministic JSON that says what produced a file, and how two of them differ.

Manifests hold no timestamps or durations, so that the same inputs give byte-identical files
(a store resumed after a crash equals one written in a single run). Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

VERSIONED_PACKAGES: tuple[str, ...] = (
    "rl-probes", "torch", "transformers", "tokenizers", "nnsight", "transformer-lens", "safetensors",
    "numpy",
)


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages that shape activations and stores."""
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and fixed separators: equal objects give equal strings."""
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=True) + "\n"


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


def write_json_atomic(path: str | Path, obj: Any, fsync: bool = True) -> None:
    """:func:`canonical_json` of ``obj`` written atomically (and fsynced unless told not to)."""
    write_bytes_atomic(path, canonical_json(obj).encode(), fsync=fsync)


def sha256_of_lines(lines: Iterable[str]) -> str:
    """SHA-256 of the given lines, each terminated by a newline."""
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The dotted path of the first place where two JSON-like values differ, or None if equal.

    Keys are visited in sorted order; lists are compared element by element.
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                return path
            sub = first_difference(a[key], b[key], path)
            if sub is not None:
                return sub
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{prefix} (length {len(a)} vs {len(b)})"
        for i, (x, y) in enumerate(zip(a, b)):
            sub = first_difference(x, y, f"{prefix}[{i}]")
            if sub is not None:
                return sub
        return None
    return None if a == b else (prefix or "<root>")


def lookup(obj: Any, dotted: str) -> Any:
    """The value at a path returned by :func:`first_difference` (None if absent)."""
    cur = obj
    for part in dotted.split(" ")[0].replace("]", "").replace("[", ".").split("."):
        if isinstance(cur, Mapping):
            cur = cur.get(part)
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur
