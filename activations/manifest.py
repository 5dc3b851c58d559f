"""Manifests: deterministic JSON that says what produced a file, and how two of them differ.

Manifests hold no timestamps or durations, so that the same inputs give byte-identical files
(a store resumed after a crash equals one written in a single run). They are written with
:func:`activations.io.write_json` (atomic).
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any, Mapping


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
