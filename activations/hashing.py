"""Content hashes, the one way: SHA-256 of bytes, lines, canonical JSON, files and weights.

Every hash the project records or compares (stage input hashes, checkpoint identities, the
weights of a checkpoint on disk or in memory, an activation store's dataset and chunk files,
training data in checkpoint cards, the behaviour cache's keys) is computed here, so two places
that hash the same thing agree by construction. Each function's algorithm is fixed: stored hashes
(checkpoint cards, store manifests, run-folder markers) stay valid across versions.

Seeds derived from names (``probes.synth``, the problems' ids, the probes' splits) are not content
hashes and are not here: they pick random numbers, and changing them would change results.

Example::

    >>> sha256_json({"b": 1, "a": [1, 2]}) == sha256_json({"a": [1, 2], "b": 1})
    True
    >>> sha256_lines(["x"]) == sha256_bytes(b"x\\n")
    True
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

_BLOCK = 1 << 22
"""Bytes read per call when hashing a file (4 MiB)."""


def sha256_chunks(chunks: Iterable[bytes | memoryview]) -> str:
    """Hex SHA-256 of the concatenation of ``chunks``."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def sha256_bytes(data: bytes | memoryview) -> str:
    """Hex SHA-256 of ``data``."""
    return sha256_chunks([data])


def sha256_lines(lines: Iterable[str]) -> str:
    """Hex SHA-256 of the given lines, each UTF-8 encoded and terminated by a newline."""
    return sha256_chunks(x for line in lines for x in (line.encode(), b"\n"))


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of ``obj``'s JSON with sorted keys (values JSON cannot hold as ``str(value)``):
    equal objects, equal hashes, whatever their key order."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())


def sha256_json_rows(rows: Iterable[Any]) -> str:
    """Hex SHA-256 of the rows' sorted-key JSON, concatenated in order (training data in
    checkpoint cards)."""
    return sha256_chunks(json.dumps(r, sort_keys=True).encode() for r in rows)


def _file_blocks(paths: Iterable[str | Path]) -> Iterable[bytes]:
    for p in paths:
        with open(p, "rb") as f:
            yield from iter(lambda f=f: f.read(_BLOCK), b"")


def sha256_files(paths: Iterable[str | Path]) -> str:
    """Hex SHA-256 of the files' bytes, concatenated in the given order (one file: that file's
    ``sha256sum``).

    Raises:
        FileNotFoundError: a path that does not exist.
    """
    return sha256_chunks(_file_blocks(paths))


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of one file's bytes (what ``sha256sum`` prints)."""
    return sha256_files([path])


def weights_sha256(ckpt: str | Path) -> str:
    """The weights of a checkpoint on disk: :func:`sha256_files` of its ``*.safetensors`` files in
    name order (one file: that file's ``sha256sum``).

    Raises:
        FileNotFoundError: the directory holds no ``*.safetensors`` file.
    """
    files = sorted(Path(ckpt).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{ckpt}: no *.safetensors weights to hash")
    return sha256_files(files)


def state_dict_sha256(model: Any) -> str:
    """The weights of a model in memory, *as loaded*: SHA-256 over its ``state_dict``, each entry's
    name, dtype, shape and raw bytes, in name order. The same checkpoint loaded in another dtype
    hashes differently (manifests record the dtype beside it); tied weights appear under each name.
    Cost: one pass over the weights (about 1 s per GB)."""

    def parts() -> Iterable[bytes | memoryview]:
        import torch

        state = model.state_dict()
        for name in sorted(state):
            t = state[name].detach()
            if t.device.type != "cpu":
                t = t.cpu()
            t = t.contiguous()
            yield f"{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}\n".encode()
            if t.numel():
                yield t.view(torch.uint8).reshape(-1).numpy().data

    return sha256_chunks(parts())


def checkpoint_sha256(path: str | Path, patterns: Iterable[str]) -> str:
    """The identity of a checkpoint folder: :func:`sha256_json` of ``(name, sha256_file)`` for every
    file matching ``patterns`` (glob patterns, e.g. weights, config and tokenizer files). A Hub id
    or a path that is not a folder, or a folder with none of them: the string itself."""
    p = Path(path)
    if not p.is_dir():
        return str(path)
    files = sorted({f for pattern in patterns for f in p.glob(pattern) if f.is_file()})
    return sha256_json([(f.name, sha256_file(f)) for f in files]) if files else str(path)
