"""Caching activations to a disk store: ``python -m activations.cache``.

::

    python -m activations.cache --model DIR --problems FILE.jsonl \\
        --sites 'blocks.*.hook_resid_post' --positions prompt_end --out DIR

``FILE`` is JSONL of task records with at least ``id`` and ``prompt``, optionally ``response``
(teacher-forced after the prompt, needed for ``--positions steps``) and ``key`` (the row key,
default ``id``; give distinct keys when one problem appears with several responses). See
``python -m probes.task sample``.

One forward pass per batch reads every site; only the rows at the requested positions are kept;
chunks of ``--chunk-size`` problems are written by a background thread while the next chunk
runs, so memory is bounded by the chunk, not the data set. An interrupted run (even by SIGKILL)
resumes from its finished chunks when rerun with the same arguments, and ends byte-identical to
an uninterrupted run. The last line printed is ``cached rows=R chunks=C sites=S out=DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from tqdm import tqdm

from activations.backends import BACKENDS, DEFAULT_BACKEND, Backend, make_backend
from activations.batch import PADDING_SIDES, PositionError, encode_batch
from activations.load import CheckpointError, dtype_name, load_checkpoint, parse_dtype
from activations.hashing import sha256_lines
from activations.positions import parse_positions, resolve_positions
from activations.sites import SiteError, expand_sites
from activations.store import ActivationStore, BackgroundWriter, ChunkRows, StoreError, StoreWriter

log = logging.getLogger(__name__)


class RecordsError(ValueError):
    """A problems file that cannot be cached; the message names the line and the field."""


@dataclass(frozen=True)
class CacheRecord:
    """One model input: its row ``key``, the problem ``id``, the ``prompt`` and an optional
    teacher-forced ``response``."""

    key: str
    id: str
    prompt: str
    response: str | None = None

    @classmethod
    def from_dict(cls, rec: dict[str, Any], where: str = "record") -> "CacheRecord":
        """Build from a task record (``id``, ``prompt``, optional ``response`` and ``key``).

        Raises:
            RecordsError: a missing or non-string field (named, with ``where``).
        """
        for field in ("id", "prompt"):
            if field not in rec:
                raise RecordsError(f"{where}: missing field {field!r}")
        for field in ("id", "prompt", "response", "key"):
            if rec.get(field) is not None and not isinstance(rec[field], str):
                raise RecordsError(f"{where}: field {field!r} must be a string")
        return cls(key=rec.get("key") or rec["id"], id=rec["id"], prompt=rec["prompt"],
                   response=rec.get("response"))


def read_records(path: str | Path) -> list[CacheRecord]:
    """Read a JSONL problems file into records, checking that row keys are unique.

    Raises:
        FileNotFoundError: no such file.
        RecordsError: a malformed line, a missing field, or a duplicate key (with line numbers).
    """
    from activations.io import LineError, read_jsonl

    out: list[CacheRecord] = []
    first_line: dict[str, int] = {}
    for lineno, rec in read_jsonl(path):
        if isinstance(rec, LineError):
            raise RecordsError(f"{path}: {rec}")
        r = CacheRecord.from_dict(rec, f"{path}: line {lineno}")
        if r.key in first_line:
            raise RecordsError(
                f"{path}: line {lineno}: key {r.key!r} already used on line {first_line[r.key]}; "
                "rows are keyed by problem id, so give each record a distinct 'key' field "
                "(e.g. id + ':' + strategy) when a problem appears more than once")
        first_line[r.key] = lineno
        out.append(r)
    if not out:
        raise RecordsError(f"{path}: no records")
    return out


def dataset_hash(records: Sequence[CacheRecord]) -> str:
    """SHA-256 of the records' keys, ids, prompts and responses, in order."""
    return sha256_lines(
        json.dumps([r.key, r.id, r.prompt, r.response], ensure_ascii=True) for r in records)


def _chunks(n: int, size: int) -> Iterable[tuple[int, int, int]]:
    for c in range(math.ceil(n / size)):
        yield c, c * size, min(n, (c + 1) * size)


def cache_activations(
    backend: Backend,
    records: Sequence[CacheRecord],
    sites: str | Sequence[str],
    positions: str | Sequence[str],
    out: str | Path,
    *,
    batch_size: int = 64,
    chunk_size: int = 1024,
    dtype: str | torch.dtype | None = None,
    padding_side: str = "left",
    overwrite: bool = False,
    progress: bool = True,
    chat: bool = False,
) -> ActivationStore:
    """Cache the activations of ``records`` at ``sites`` and ``positions`` into a store at ``out``.

    Args:
        backend: the backend to run (its checkpoint is the model).
        records: the inputs; rows are keyed by ``record.key``.
        sites: canonical site names or patterns (``blocks.*.hook_resid_post``).
        positions: position specs (``prompt_end``, ``steps``, ``all``, ``0,-1``).
        out: the store directory; an unfinished store there with the same inputs is resumed.
        batch_size: inputs per forward pass.
        chunk_size: problems per chunk file (memory is about two chunks of activations).
        dtype: the dtype to store (default: the model's).
        padding_side: ``"left"`` or ``"right"`` (activations do not depend on it beyond
            rounding; it is part of the store's identity so that resumed chunks match).
        overwrite: replace a store at ``out`` made from other inputs.
        progress: show a progress bar (tqdm, on stderr).
        chat: render the prompts in the tokenizer's chat template
            (:func:`activations.batch.render_prompt`; recorded in the manifest, so a store of
            plain prompts is not resumed as a chat one).

    Returns:
        The finished :class:`~activations.store.ActivationStore`.

    Raises:
        SiteError: an unknown site or layer out of range.
        ValueError: bad positions, batch or chunk size, dtype or padding side.
        PositionError: a record without a response asked for ``steps``, or an index out of range.
        ChatTemplateError: ``chat`` and the tokenizer has no chat template.
        StoreMismatchError: ``out`` holds a store made from other inputs (without ``overwrite``).
    """
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"unknown padding side {padding_side!r}: use one of {list(PADDING_SIDES)}")
    ckpt = backend.checkpoint
    site_list = expand_sites(sites, ckpt.dims.n_layers)
    specs = parse_positions(positions)
    store_dtype = parse_dtype(dtype) if dtype is not None else ckpt.dtype
    records = list(records)
    if not records:
        raise ValueError("no records to cache")
    n_chunks = math.ceil(len(records) / chunk_size)
    manifest = {
        "model": ckpt.describe(),
        "tokenizer": {"sha256": ckpt.tokenizer_hash, "size": len(ckpt.tokenizer)},
        "dataset": {"sha256": dataset_hash(records), "n_records": len(records)},
        "sites": [{"name": s.name, "shape": list(s.shape(ckpt.dims))} for s in site_list],
        "positions": [str(p) for p in specs],
        "dtype": dtype_name(store_dtype),
        "backend": backend.name,
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        "padding_side": padding_side,
        "n_chunks": n_chunks,
        **({"chat": True} if chat else {}),  # absent for plain prompts: stores made before chat existed stay valid
    }
    writer = StoreWriter(out, manifest, overwrite=overwrite)
    done = writer.finished
    todo = [c for c in _chunks(len(records), chunk_size) if c[0] not in done]
    n_done = sum(hi - lo for c, lo, hi in _chunks(len(records), chunk_size) if c in done)
    names = [s.name for s in site_list]
    tok = ckpt.tokenizer
    with tqdm(total=len(records), initial=n_done, unit="prompt", desc="caching", leave=False,
              disable=not progress, dynamic_ncols=True, file=sys.stderr) as bar, \
            BackgroundWriter(writer) as bg:
        for c, lo, hi in todo:
            parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
            rows = ChunkRows([], [], [])
            for start in range(lo, hi, batch_size):
                recs = records[start:min(hi, start + batch_size)]
                batch = encode_batch(tok, [r.prompt for r in recs], [r.response for r in recs],
                                     keys=[r.key for r in recs], padding_side=padding_side, chat=chat)
                at = resolve_positions(specs, batch)
                acts = backend.read(batch, site_list, at)
                for n in names:
                    parts[n].append(acts[n].to(device="cpu", dtype=store_dtype))
                rows.keys += [recs[i].key for i in at.rows.tolist()]
                rows.labels += at.labels
                rows.positions += at.positions.tolist()
                bar.update(len(recs))
            bg.submit(c, {n: torch.cat(parts[n]) for n in names}, rows)
    store = writer.finish()
    log.info("cached %d rows in %d chunks to %s", store.n_rows, n_chunks, out)
    return store


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m activations.cache", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, metavar="DIR", help="checkpoint directory (or Hub id)")
    ap.add_argument("--problems", required=True, metavar="FILE", help="JSONL records with id, prompt[, response, key]")
    ap.add_argument("--sites", required=True, nargs="+", metavar="SITE",
                    help="TransformerLens hook names; * for every layer, e.g. 'blocks.*.hook_resid_post'")
    ap.add_argument("--positions", required=True, nargs="+", metavar="POS",
                    help="prompt_end, steps, all, or token indices such as 0,-1")
    ap.add_argument("--out", required=True, metavar="DIR", help="the store directory")
    ap.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--chunk-size", type=int, default=1024, help="problems per chunk file")
    ap.add_argument("--dtype", default="float32", help="dtype to load the model in")
    ap.add_argument("--store-dtype", default=None, help="dtype to store (default: the model's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--padding-side", choices=PADDING_SIDES, default="left")
    ap.add_argument("--overwrite", action="store_true", help="replace a store made from other inputs")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        records = read_records(args.problems)
        ckpt = load_checkpoint(args.model, dtype=args.dtype, device=args.device)
        backend = make_backend(args.backend, ckpt)
        store = cache_activations(
            backend, records, args.sites, args.positions, args.out,
            batch_size=args.batch_size, chunk_size=args.chunk_size, dtype=args.store_dtype,
            padding_side=args.padding_side, overwrite=args.overwrite, progress=not args.no_progress,
        )
    except FileNotFoundError as e:
        print(f"error: no such file: {e.filename}", file=sys.stderr)
        return 2
    except (RecordsError, CheckpointError, SiteError, PositionError, StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"cached rows={store.n_rows} chunks={store.manifest['n_chunks']} "
          f"sites={len(store.sites)} out={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
