"""Specification of the activation store: bit-exact round trips, hashes checked on read, resume."""

import json
import os

import numpy as np
import pytest
import torch

from activations.store import (
    ActivationStore,
    ChunkRows,
    CorruptChunkError,
    IncompleteStoreError,
    StoreError,
    StoreMismatchError,
    StoreWriter,
    align_rows,
)

pytestmark = pytest.mark.unit

SITES = [{"name": "blocks.0.hook_resid_post", "shape": [8]}, {"name": "blocks.0.attn.hook_z", "shape": [2, 4]}]


def manifest(n_chunks=3, dtype="float32", **extra):
    return {"sites": SITES, "dtype": dtype, "n_chunks": n_chunks, "dataset": {"sha256": "d0"},
            "model": {"source": "somewhere", "weight_sha256": "w0"}, **extra}


def chunk(c, dtype=torch.float32, rows=5, keys=None):
    g = torch.Generator().manual_seed(c)
    tensors = {"blocks.0.hook_resid_post": torch.randn(rows, 8, generator=g).to(dtype),
               "blocks.0.attn.hook_z": torch.randn(rows, 2, 4, generator=g).to(dtype)}
    keys = keys or [f"p{c}-{i}" for i in range(rows)]
    return tensors, ChunkRows(keys, ["prompt_end"] * rows, [3] * rows)


def write_store(root, n_chunks=3, dtype=torch.float32, keys=None):
    w = StoreWriter(root, manifest(n_chunks, str(dtype).removeprefix("torch.")))
    data = [chunk(c, dtype, keys=keys[c] if keys else None) for c in range(n_chunks)]
    for c, (t, r) in enumerate(data):
        w.write_chunk(c, t, r)
    return w.finish(), data


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_store_round_trips_bit_exactly(tmp_path, dtype):
    store, data = write_store(tmp_path / "s", dtype=dtype)
    assert store.n_rows == 15 and store.dtype == dtype
    for name in store.sites:
        want = torch.cat([t[name] for t, _ in data])
        got = store[name]
        assert got.dtype == dtype and torch.equal(got.view(torch.uint8), want.view(torch.uint8))
        rows = np.array([14, 0, 7, 7])
        assert torch.equal(store.site(name)[rows], want[torch.from_numpy(rows)])
        assert torch.equal(store.site(name)[3:9], want[3:9])
    assert store.keys == [k for _, r in data for k in r.keys]
    assert store.rows_of("p1-2").tolist() == [7]


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_chunks_are_memory_mapped_from_the_file_not_read_into_memory(tmp_path):
    store, data = write_store(tmp_path / "s")
    first = next(store.site("blocks.0.hook_resid_post").chunks())
    path = str((store.root / "chunks" / "000000.safetensors").resolve())
    assert path in open("/proc/self/maps").read()
    assert torch.equal(first, data[0][0]["blocks.0.hook_resid_post"])


def _tensor_range(store, c, name):
    """Byte range of a tensor in a chunk file (from its safetensors header)."""
    raw = (store.root / "chunks" / f"{c:06d}.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    start, end = json.loads(raw[8:8 + n])[name]["data_offsets"]
    return 8 + n + start, 8 + n + end


def test_a_corrupted_chunk_is_detected_by_name_and_its_site_is_never_returned(tmp_path):
    store, _ = write_store(tmp_path / "s")
    path = store.root / "chunks" / "000001.safetensors"
    start, _ = _tensor_range(store, 1, "blocks.0.attn.hook_z")
    raw = bytearray(path.read_bytes())
    raw[start + 3] ^= 0x01  # one bit of one value
    path.write_bytes(bytes(raw))
    fresh = ActivationStore(store.root)
    with pytest.raises(CorruptChunkError, match=r"chunk 000001.safetensors .*'blocks.0.attn.hook_z' tensor \(corrupted\)"):
        fresh["blocks.0.attn.hook_z"]
    with pytest.raises(CorruptChunkError, match="000001.safetensors"):
        fresh.site("blocks.0.attn.hook_z")[6]
    assert fresh["blocks.0.hook_resid_post"].shape == (15, 8)  # the other site's bytes are intact
    with pytest.raises(CorruptChunkError, match="000001.safetensors .*fails its SHA-256 check"):
        fresh.verify()


def test_a_truncated_chunk_is_detected_by_name(tmp_path):
    store, _ = write_store(tmp_path / "s")
    path = store.root / "chunks" / "000002.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptChunkError, match=r"chunk 000002.safetensors .*is truncated or overwritten: \d+ bytes, expected"):
        ActivationStore(store.root)["blocks.0.hook_resid_post"]


def test_a_corrupted_header_or_missing_chunk_is_detected_by_name(tmp_path):
    store, _ = write_store(tmp_path / "s")
    path = store.root / "chunks" / "000000.safetensors"
    raw = bytearray(path.read_bytes())
    raw[20] = ord("X") if raw[20] != ord("X") else ord("Y")
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunkError, match="000000.safetensors .*corrupted header"):
        ActivationStore(store.root)["blocks.0.hook_resid_post"]
    (store.root / "chunks" / "000001.safetensors").unlink()
    with pytest.raises(CorruptChunkError, match="000001.safetensors .*is missing"):
        ActivationStore(store.root).site("blocks.0.hook_resid_post")[7]


def test_an_unfinished_store_is_refused_unless_asked(tmp_path):
    w = StoreWriter(tmp_path / "s", manifest(3))
    w.write_chunk(0, *chunk(0))
    with pytest.raises(IncompleteStoreError, match=r"incomplete \(1 of 3 chunks\): rerun the cache command"):
        ActivationStore(tmp_path / "s")
    partial = ActivationStore(tmp_path / "s", allow_incomplete=True)
    assert partial.n_rows == 5


def test_resuming_keeps_finished_chunks_and_drops_damaged_or_unfinished_ones(tmp_path):
    root = tmp_path / "s"
    w = StoreWriter(root, manifest(3))
    w.write_chunk(0, *chunk(0))
    w.write_chunk(1, *chunk(1))
    (root / "chunks" / "000001.safetensors").write_bytes(b"damaged")       # bad hash
    (root / "chunks" / "000002.safetensors").write_bytes(b"no record yet")  # killed before its record
    (root / "chunks" / ".000002.safetensors.abc.tmp").write_bytes(b"tmp")  # killed mid-write
    before = (root / "chunks" / "000000.safetensors").stat().st_mtime_ns
    resumed = StoreWriter(root, manifest(3))
    assert resumed.finished == {0}
    assert sorted(p.name for p in (root / "chunks").iterdir()) == ["000000.json", "000000.safetensors"]
    assert (root / "chunks" / "000000.safetensors").stat().st_mtime_ns == before


def test_a_store_made_from_other_inputs_is_not_resumed_and_the_field_is_named(tmp_path):
    write_store(tmp_path / "s")
    other = manifest(3)
    other["dataset"] = {"sha256": "d1"}
    with pytest.raises(StoreMismatchError, match="dataset.sha256 is 'd0' there but 'd1' now.*--overwrite"):
        StoreWriter(tmp_path / "s", other)
    w = StoreWriter(tmp_path / "s", other, overwrite=True)
    assert w.finished == set()


def test_the_model_path_is_not_part_of_a_stores_identity(tmp_path):
    write_store(tmp_path / "s")
    moved = manifest(3)
    moved["model"] = {**moved["model"], "source": "elsewhere"}
    assert StoreWriter(tmp_path / "s", moved).finished == {0, 1, 2}


def test_stores_with_rows_in_different_orders_align_by_problem_id(tmp_path):
    keys = [[f"p{c}-{i}" for i in range(5)] for c in range(2)]
    a, _ = write_store(tmp_path / "a", n_chunks=2, keys=keys)
    b, _ = write_store(tmp_path / "b", n_chunks=2, keys=[list(reversed(keys[1])), list(reversed(keys[0]))])
    ia, ib = align_rows(a, b)
    assert [a.keys[i] for i in ia] == [b.keys[i] for i in ib]
    other, _ = write_store(tmp_path / "c", n_chunks=2, keys=[[f"q{c}-{i}" for i in range(5)] for c in range(2)])
    with pytest.raises(StoreError, match=r"row \('p0-0', 'prompt_end'\) of .* is not in"):
        align_rows(a, other)


def test_an_unknown_site_lists_the_stores_sites(tmp_path):
    store, _ = write_store(tmp_path / "s")
    with pytest.raises(KeyError, match="no site 'hook_embed'; it has"):
        store.site("hook_embed")


def test_no_store_at_a_path_says_so(tmp_path):
    with pytest.raises(StoreError, match="no activation store at"):
        ActivationStore(tmp_path)


@pytest.mark.parametrize("victim", ["manifest.json", "chunks/000001.json"])
def test_a_truncated_manifest_or_chunk_record_is_detected_by_name(tmp_path, victim):
    """Issue 19: every file of the store, not only the tensor chunks."""
    store, _ = write_store(tmp_path / "s")
    f = store.root / victim
    f.write_text(f.read_text()[:25])
    with pytest.raises(StoreError, match=victim.split("/")[-1]):
        ActivationStore(store.root)
