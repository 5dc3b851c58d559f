"""The activation store: activations streamed to disk in chunks, read back memory-mapped.

Layout of a store directory::

    manifest.json              what produced it: model and tokenizer hashes, dataset hash, sites
                               and their shapes, positions, dtype, chunking, versions, completion
    chunks/000000.safetensors  one tensor per site, [rows, *site_shape], rows of the chunk's problems
    chunks/000000.json         the chunk's record: row keys, labels and token positions, the file's
                               size and SHA-256, and a SHA-256 per tensor

Chunks are safetensors files (a JSON header and raw little-endian bytes; nothing is ever
unpickled). A chunk's data file is written atomically (temporary file, then ``os.replace``) and
its record after it, so a chunk is *finished* exactly when its record exists. A run killed at any
instant leaves finished chunks intact; rerunning resumes from them (:class:`StoreWriter`), and
since chunks are deterministic the result is byte-identical to an uninterrupted run. Only the
final manifest is fsynced: a chunk that a power loss damages fails its SHA-256 when the run is
resumed and is recomputed, so flushing every chunk to the platter would buy nothing.

Rows are keyed by problem id (the record's ``key``, default its ``id``) together with a position
label (``prompt_end``, ``step:{j}``...), so the stores of a pre-RL and a post-RL model on the same
problems align row for row (:func:`align_rows`), whatever order they were written in.

Reads are memory-mapped per site (and so per layer): :meth:`ActivationStore.site` maps only that
site's byte range of each chunk, after checking its SHA-256; a truncated or corrupted chunk
raises :class:`CorruptChunkError` naming the file, and its data is never returned.

Example::

    >>> store = ActivationStore("runs/x/cache/pre")                      # doctest: +SKIP
    >>> acts = store.site("blocks.3.hook_resid_post")                     # lazy, memory-mapped
    >>> acts.shape, acts[store.rows_of("p13-inv-k3-75801b3a35")].shape   # doctest: +SKIP
    ((8000, 256), torch.Size([1, 256]))
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from activations.io import canonical_json, write_bytes_atomic, write_json
from activations.hashing import sha256_bytes, sha256_file
from activations.manifest import first_difference, lookup, package_versions

log = logging.getLogger(__name__)

FORMAT = "rl-probes-activation-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNKS = "chunks"
NOT_IDENTITY = ("complete", "n_rows", "versions")
"""Manifest keys that may change when a store is resumed (everything else must match)."""

_ST_DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "F64": (np.dtype("<f8"), torch.float64),
    "F32": (np.dtype("<f4"), torch.float32),
    "F16": (np.dtype("<f2"), torch.float16),
    "BF16": (np.dtype("<u2"), torch.bfloat16),  # mapped as raw 16-bit words, viewed as bfloat16
    "I64": (np.dtype("<i8"), torch.int64),
}


class StoreError(Exception):
    """A store that cannot be written or read as asked; the message names the problem and fix."""


class StoreMismatchError(StoreError, ValueError):
    """The output directory holds a store made from other inputs (the message names the field)."""


class IncompleteStoreError(StoreError):
    """The store's run has not finished (some chunks are missing)."""


class CorruptChunkError(StoreError):
    """A chunk is truncated, corrupted or missing; the message names the file.

    Attributes:
        path: the chunk file (or record) that failed its check.
    """

    def __init__(self, path: Path, problem: str):
        self.path = Path(path)
        super().__init__(
            f"chunk {self.path.name} ({self.path}) {problem}; its data was not read. Delete "
            f"{self.path.stem}.safetensors and {self.path.stem}.json and rerun the cache command "
            "with the same arguments to recompute it"
        )


def chunk_stem(index: int) -> str:
    """File stem of chunk ``index`` (``000003``)."""
    return f"{index:06d}"


@dataclass
class ChunkRows:
    """The rows of one chunk: for each row, its key (problem id), position label and token
    position (index within the unpadded input)."""

    keys: list[str]
    labels: list[str]
    positions: list[int]

    def __len__(self) -> int:
        return len(self.keys)


def identity(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest without what a resumed run may change (:data:`NOT_IDENTITY`, and the model's
    ``source`` path: the weight hash identifies the model)."""
    out = {k: v for k, v in manifest.items() if k not in NOT_IDENTITY}
    if isinstance(out.get("model"), Mapping):
        out["model"] = {k: v for k, v in out["model"].items() if k != "source"}
    return out


def _parse_header(blob: bytes | memoryview) -> tuple[int, dict[str, Any]]:
    (n,) = struct.unpack("<Q", bytes(blob[:8]))
    return n, json.loads(bytes(blob[8:8 + n]))


def encode_chunk(tensors: Mapping[str, Tensor], rows: ChunkRows, index: int) -> tuple[bytes, dict[str, Any]]:
    """Serialise one chunk: the safetensors bytes and its record (hashes, rows).

    Args:
        tensors: per site name, ``[rows, *site_shape]`` on the CPU.
        rows: the chunk's rows (same length as every tensor's first dimension).
        index: the chunk's index.

    Raises:
        ValueError: a tensor whose first dimension is not the number of rows.
    """
    from safetensors.torch import save

    n = len(rows)
    for name, t in tensors.items():
        if t.shape[0] != n:
            raise ValueError(f"chunk {index}: {name} has {t.shape[0]} rows, expected {n}")
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})
    hlen, header = _parse_header(blob)
    base = 8 + hlen
    view = memoryview(blob)
    record = {
        "index": index,
        "file": f"{chunk_stem(index)}.safetensors",
        "size": len(blob),
        "sha256": sha256_bytes(view),
        "header_sha256": sha256_bytes(view[:base]),
        "tensors": {
            name: {
                "dtype": info["dtype"],
                "shape": info["shape"],
                "sha256": sha256_bytes(view[base + info["data_offsets"][0]: base + info["data_offsets"][1]]),
            }
            for name, info in sorted(header.items()) if name != "__metadata__"
        },
        "n_rows": n,
        "keys": list(rows.keys),
        "labels": list(rows.labels),
        "positions": [int(p) for p in rows.positions],
    }
    return blob, record


class StoreWriter:
    """Creates a store, or resumes one, and writes its chunks atomically.

    Args:
        root: the store directory (created if missing).
        manifest: the store's identity: everything that determines its content (model and
            tokenizer hashes, dataset hash, sites with shapes, positions, dtype, chunking, ...),
            including ``n_chunks``. ``format``, ``versions``, ``complete`` and ``n_rows`` are
            filled in here.
        overwrite: replace a store made from other inputs instead of raising.

    On opening an existing store with the same identity, finished chunks are checked (size and
    SHA-256); damaged ones and unfinished leftovers are deleted, to be recomputed. Their indices
    are :attr:`finished`.

    Raises:
        StoreMismatchError: ``root`` holds a store with another identity (the message names the
            first differing field) and ``overwrite`` is False, or ``root`` has a ``chunks/``
            folder without a manifest.
    """

    def __init__(self, root: str | Path, manifest: Mapping[str, Any], *, overwrite: bool = False):
        self.root = Path(root)
        self.chunk_dir = self.root / CHUNKS
        self.manifest: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION, **dict(manifest),
            "versions": package_versions(), "complete": False, "n_rows": None,
        }
        self.n_chunks = int(self.manifest["n_chunks"])
        self.records: dict[int, dict[str, Any]] = {}
        self._open(overwrite)

    @property
    def finished(self) -> set[int]:
        """Indices of the chunks already on disk and verified."""
        return set(self.records)

    def _open(self, overwrite: bool) -> None:
        path = self.root / MANIFEST
        old: dict[str, Any] | None = None
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise StoreMismatchError(f"{path} is not a readable manifest ({e}); use a new --out") from None
            diff = first_difference(identity(old), identity(self.manifest))
            if diff is not None:
                if not overwrite:
                    raise StoreMismatchError(
                        f"{self.root} already holds a store made from other inputs: {diff} is "
                        f"{lookup(old, diff)!r} there but {lookup(self.manifest, diff)!r} now. Use a "
                        "new --out, or pass --overwrite to replace it"
                    )
                log.warning("replacing the store in %s (%s differs)", self.root, diff)
                self._clear()
            elif old.get("versions") != self.manifest["versions"]:
                log.warning(
                    "resuming %s with other package versions (%s); activations of old and new "
                    "chunks may differ at rounding level", self.root,
                    first_difference(old.get("versions"), self.manifest["versions"]))
        elif self.chunk_dir.exists() and any(self.chunk_dir.iterdir()):
            raise StoreMismatchError(
                f"{self.chunk_dir} exists but {path} does not: not a store this code wrote; use an "
                "empty --out")
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        self._recover()
        if not (old is not None and old.get("complete") and len(self.records) == self.n_chunks
                and identity(old) == identity(self.manifest)):
            # a finished store reopened with the same inputs stays marked complete
            write_json(path, {**self.manifest, "complete": False, "n_rows": None}, fsync=False)

    def _clear(self) -> None:
        (self.root / MANIFEST).unlink(missing_ok=True)
        if self.chunk_dir.exists():
            shutil.rmtree(self.chunk_dir)

    def _recover(self) -> None:
        for tmp in self.chunk_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for rec_path in sorted(self.chunk_dir.glob("*.json")):
            data_path = rec_path.with_suffix(".safetensors")
            try:
                record = json.loads(rec_path.read_text())
                index = int(record["index"])
                ok = (index < self.n_chunks and data_path.name == record["file"]
                      and data_path.stat().st_size == record["size"]
                      and sha256_file(data_path) == record["sha256"])
            except (OSError, ValueError, KeyError, TypeError):
                ok = False
            if ok:
                self.records[index] = record
            else:
                log.warning("chunk %s is damaged or unfinished; it will be recomputed", data_path.name)
                rec_path.unlink(missing_ok=True)
                data_path.unlink(missing_ok=True)
        for data_path in self.chunk_dir.glob("*.safetensors"):
            if not data_path.with_suffix(".json").exists():  # killed between data and record
                data_path.unlink()
        if self.records:
            log.info("resuming %s: %d of %d chunks already on disk", self.root, len(self.records), self.n_chunks)

    def write_chunk(self, index: int, tensors: Mapping[str, Tensor], rows: ChunkRows) -> None:
        """Write chunk ``index`` (data file, then record, each atomically).

        Raises:
            ValueError: ``index`` out of range, the sites differ from the manifest's, or a tensor
                has the wrong number of rows.
        """
        if not 0 <= index < self.n_chunks:
            raise ValueError(f"chunk index {index} is out of range (0..{self.n_chunks - 1})")
        expected = [s["name"] for s in self.manifest["sites"]]
        if sorted(tensors) != sorted(expected):
            raise ValueError(f"chunk {index} has sites {sorted(tensors)}, the manifest {sorted(expected)}")
        blob, record = encode_chunk(tensors, rows, index)
        stem = chunk_stem(index)
        # not fsynced: os.replace makes them atomic for other processes and for a killed run,
        # and a chunk a power loss damages fails its SHA-256 on the next run and is recomputed
        write_bytes_atomic(self.chunk_dir / f"{stem}.safetensors", blob, fsync=False)
        write_bytes_atomic(self.chunk_dir / f"{stem}.json", canonical_json(record).encode(), fsync=False)
        self.records[index] = record

    def finish(self) -> "ActivationStore":
        """Mark the store complete (every chunk written) and open it for reading.

        Raises:
            IncompleteStoreError: some chunks were not written.
        """
        missing = sorted(set(range(self.n_chunks)) - set(self.records))
        if missing:
            raise IncompleteStoreError(f"{self.root}: chunks {missing[:5]} were not written")
        n_rows = sum(int(self.records[i]["n_rows"]) for i in range(self.n_chunks))
        write_json(self.root / MANIFEST, {**self.manifest, "complete": True, "n_rows": n_rows})
        return ActivationStore(self.root)


class BackgroundWriter:
    """Writes chunks on a background thread while the caller computes the next one.

    Serialising, hashing and writing a chunk overlap the next chunk's forward passes (hashing and
    file I/O release the GIL). At most ``max_pending`` chunks wait in the queue, so memory stays
    bounded by the chunk size. An error on the thread is raised at the next :meth:`submit` or
    at :meth:`close`. Use as a context manager::

        with BackgroundWriter(writer) as bg:
            bg.submit(index, tensors, rows)
    """

    def __init__(self, writer: StoreWriter, max_pending: int = 1):
        self.writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="activation-store-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self.writer.write_chunk(*item)
            except BaseException as e:  # surfaced in the caller's thread
                self._error = e
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, index: int, tensors: Mapping[str, Tensor], rows: ChunkRows) -> None:
        """Queue chunk ``index`` for writing (blocks while ``max_pending`` chunks wait)."""
        self._raise()
        self._queue.put((index, tensors, rows))

    def close(self) -> None:
        """Wait until every queued chunk is written; raise the thread's error if there was one."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # finish what is queued (finished chunks are kept), but report the first error
            try:
                self.close()
            except BaseException:
                log.exception("the store writer also failed")


class ActivationStore:
    """A finished store, opened for reading.

    Attributes:
        root: the store directory.
        manifest: the parsed ``manifest.json``.
        sites: the site names, in the order they were requested.
        keys: ``n_rows`` row keys (problem ids), in row order.
        labels: ``n_rows`` position labels (``prompt_end``, ``step:{j}``, ``all``, ``index:{i}``).
        positions: ``Int[ndarray, "n_rows"]`` token index of each row within its unpadded input.

    Args:
        root: the store directory.
        allow_incomplete: open a store whose run has not finished (only finished chunks are
            visible) instead of raising.

    Raises:
        StoreError: no manifest, or another format or version.
        IncompleteStoreError: the run has not finished (rerun the cache command to finish it).
        CorruptChunkError: a chunk record is missing or unreadable.
    """

    def __init__(self, root: str | Path, *, allow_incomplete: bool = False):
        self.root = Path(root)
        path = self.root / MANIFEST
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreError(f"no activation store at {self.root} ({MANIFEST} is missing)") from None
        except json.JSONDecodeError as e:
            raise StoreError(f"{path} is not valid JSON ({e})") from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{self.root} is not a version-{FORMAT_VERSION} {FORMAT} "
                f"(format {self.manifest.get('format')!r}, version {self.manifest.get('format_version')!r})")
        n_chunks = int(self.manifest["n_chunks"])
        chunk_dir = self.root / CHUNKS
        if not self.manifest.get("complete"):
            if not allow_incomplete:
                done = len(list(chunk_dir.glob("*.json")))
                raise IncompleteStoreError(
                    f"the store at {self.root} is incomplete ({done} of {n_chunks} chunks): rerun "
                    "the cache command with the same arguments to finish it")
            indices = sorted(int(p.stem) for p in chunk_dir.glob("[0-9]*.json"))
        else:
            indices = list(range(n_chunks))
        self._records: list[dict[str, Any]] = []
        for i in indices:
            rec_path = chunk_dir / f"{chunk_stem(i)}.json"
            try:
                self._records.append(json.loads(rec_path.read_text()))
            except FileNotFoundError:
                raise CorruptChunkError(rec_path, "is missing") from None
            except (OSError, json.JSONDecodeError) as e:
                raise CorruptChunkError(rec_path, f"has an unreadable record ({e})") from None
        self.sites: list[str] = [s["name"] for s in self.manifest["sites"]]
        self._shapes = {s["name"]: tuple(s["shape"]) for s in self.manifest["sites"]}
        self.keys: list[str] = [k for r in self._records for k in r["keys"]]
        self.labels: list[str] = [k for r in self._records for k in r["labels"]]
        self.positions = np.array([p for r in self._records for p in r["positions"]], dtype=np.int64)
        self._offsets = np.cumsum([0] + [int(r["n_rows"]) for r in self._records])
        self._verified: set[tuple[int, str]] = set()
        self._headers: dict[int, tuple[int, dict[str, Any]]] = {}
        self._index: dict[str, np.ndarray] | None = None

    # --- rows ---------------------------------------------------------------------------------

    @property
    def n_rows(self) -> int:
        return int(self._offsets[-1])

    def __len__(self) -> int:
        return self.n_rows

    @property
    def dtype(self) -> torch.dtype:
        """The dtype activations are stored in."""
        return getattr(torch, self.manifest["dtype"])

    def rows_of(self, key: str) -> np.ndarray:
        """Row indices of problem ``key`` (in row order).

        Raises:
            KeyError: no row has this key.
        """
        if self._index is None:
            groups: dict[str, list[int]] = {}
            for i, k in enumerate(self.keys):
                groups.setdefault(k, []).append(i)
            self._index = {k: np.array(v, dtype=np.int64) for k, v in groups.items()}
        if key not in self._index:
            raise KeyError(f"no rows with key {key!r} in {self.root}")
        return self._index[key]

    def row_keys(self) -> list[tuple[str, str]]:
        """``(key, label)`` of every row: the identity used to align two stores."""
        return list(zip(self.keys, self.labels))

    # --- activations ----------------------------------------------------------------------------

    def site(self, name: str) -> "SiteArray":
        """A lazy, memory-mapped view of one site's activations, ``[n_rows, *site_shape]``.

        Raises:
            KeyError: the store has no such site (the message lists its sites).
        """
        if name not in self._shapes:
            raise KeyError(f"the store at {self.root} has no site {name!r}; it has {self.sites}")
        return SiteArray(self, name)

    def __getitem__(self, name: str) -> Tensor:
        """All rows of one site as a tensor in memory (``[n_rows, *site_shape]``)."""
        return self.site(name).to_tensor()

    def _chunk_path(self, c: int) -> Path:
        return self.root / CHUNKS / self._records[c]["file"]

    def _chunk_tensor(self, c: int, name: str) -> Tensor:
        """Chunk ``c``'s tensor for site ``name``, memory-mapped after its hash check."""
        rec = self._records[c]
        path = self._chunk_path(c)
        if c not in self._headers:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise CorruptChunkError(path, "is missing") from None
            if size != rec["size"]:
                raise CorruptChunkError(path, f"is truncated or overwritten: {size} bytes, expected {rec['size']}")
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CorruptChunkError(path, "has no header")
                (hlen,) = struct.unpack("<Q", head)
                if hlen > size - 8:
                    raise CorruptChunkError(path, "has a corrupted header length")
                blob = head + f.read(hlen)
            if sha256_bytes(blob) != rec["header_sha256"]:
                raise CorruptChunkError(path, "has a corrupted header (SHA-256 mismatch)")
            self._headers[c] = _parse_header(blob)
        hlen, header = self._headers[c]
        info = header[name]
        np_dtype, torch_dtype = _ST_DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        count = (end - start) // np_dtype.itemsize
        mm = np.memmap(path, dtype=np_dtype, mode="c", offset=8 + hlen + start, shape=(count,))
        if (c, name) not in self._verified:
            if sha256_bytes(memoryview(mm).cast("B")) != rec["tensors"][name]["sha256"]:
                raise CorruptChunkError(path, f"fails the SHA-256 check of its {name!r} tensor (corrupted)")
            self._verified.add((c, name))
        t = torch.from_numpy(mm)
        if torch_dtype == torch.bfloat16:
            t = t.view(torch.bfloat16)
        return t.view(*info["shape"])

    def verify(self) -> None:
        """Check every chunk file in full (size and SHA-256).

        Raises:
            CorruptChunkError: naming the first damaged chunk.
        """
        for c, rec in enumerate(self._records):
            path = self._chunk_path(c)
            if not path.exists():
                raise CorruptChunkError(path, "is missing")
            if path.stat().st_size != rec["size"]:
                raise CorruptChunkError(path, f"is truncated: {path.stat().st_size} bytes, expected {rec['size']}")
            if sha256_file(path) != rec["sha256"]:
                raise CorruptChunkError(path, "fails its SHA-256 check (corrupted)")

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.root)!r}, rows={self.n_rows}, sites={len(self.sites)})"


class SiteArray:
    """One site of a store: ``[n_rows, *site_shape]``, memory-mapped chunk by chunk.

    Indexing (an int, a slice, or an array of row indices) returns a tensor holding just those
    rows; :meth:`chunks` yields the memory-mapped chunks themselves (no copy).
    """

    def __init__(self, store: ActivationStore, name: str):
        self.store = store
        self.name = name
        self.shape: tuple[int, ...] = (store.n_rows, *store._shapes[name])

    @property
    def dtype(self) -> torch.dtype:
        return self.store.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def chunks(self) -> Iterator[Tensor]:
        """The memory-mapped tensor of each chunk in row order (``[chunk_rows, *site_shape]``)."""
        for c in range(len(self.store._records)):
            yield self.store._chunk_tensor(c, self.name)

    def to_tensor(self) -> Tensor:
        """Every row, in memory."""
        parts = list(self.chunks())
        if not parts:
            return torch.empty(self.shape, dtype=self.dtype)
        return torch.cat(parts)

    def __getitem__(self, idx: int | slice | Sequence[int] | np.ndarray | Tensor) -> Tensor:
        if isinstance(idx, slice):
            rows = np.arange(len(self))[idx]
        elif isinstance(idx, (int, np.integer)):
            return self[np.array([int(idx)])][0]
        else:
            rows = np.asarray(idx.cpu() if isinstance(idx, Tensor) else idx, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {self.name} with {len(self)} rows")
        rows = rows % max(len(self), 1)
        out = torch.empty((rows.size, *self.shape[1:]), dtype=self.dtype)
        offsets = self.store._offsets
        which = np.searchsorted(offsets, rows, side="right") - 1
        for c in np.unique(which):
            sel = np.nonzero(which == c)[0]
            chunk = self.store._chunk_tensor(int(c), self.name)
            out[torch.from_numpy(sel)] = chunk[torch.from_numpy(rows[sel] - offsets[c])]
        return out

    def __repr__(self) -> str:
        return f"SiteArray({self.name!r}, shape={self.shape}, dtype={self.dtype})"


def align_rows(a: ActivationStore, b: ActivationStore) -> tuple[np.ndarray, np.ndarray]:
    """Row indices that pair the rows of two stores by ``(key, label)``.

    Row ``ia[i]`` of ``a`` and row ``ib[i]`` of ``b`` hold the same problem at the same named
    position, for every row of ``a``, in ``a``'s order.

    Raises:
        StoreError: the stores do not hold the same rows (the message names the first missing
            one), or a shared row sits at different token positions (different tokenizers).
    """
    where_b = {k: i for i, k in enumerate(b.row_keys())}
    keys_a = a.row_keys()
    if len(keys_a) != len(where_b):
        raise StoreError(f"{a.root} has {len(keys_a)} rows but {b.root} has {len(where_b)}")
    ib = np.empty(len(keys_a), dtype=np.int64)
    for i, k in enumerate(keys_a):
        if k not in where_b:
            raise StoreError(f"row {k} of {a.root} is not in {b.root}")
        ib[i] = where_b[k]
    ia = np.arange(len(keys_a), dtype=np.int64)
    if not np.array_equal(a.positions[ia], b.positions[ib]):
        i = int(np.nonzero(a.positions[ia] != b.positions[ib])[0][0])
        raise StoreError(
            f"row {keys_a[i]} is at token {a.positions[i]} in {a.root} but {b.positions[ib[i]]} in "
            f"{b.root}: the stores were tokenized differently")
    return ia, ib
