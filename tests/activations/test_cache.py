"""Specification of caching: the store equals a fresh forward pass, resumes, survives SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from activations.backends import make_backend
from activations.batch import PositionError, encode_batch
from activations.cache import CacheRecord, RecordsError, cache_activations, main, read_records
from activations.load import load_checkpoint
from activations.positions import resolve_positions
from activations.store import ActivationStore, StoreMismatchError, align_rows
from probes.task import NATURAL_STRATEGY, make_trace, sample_problems
from activations.io import write_jsonl as _write_jsonl

pytestmark = pytest.mark.integration


def write_jsonl(path: Path, records) -> Path:
    _write_jsonl(path, records)
    return path

REPO = Path(__file__).resolve().parents[2]
SITES = ["blocks.*.hook_resid_post", "blocks.1.attn.hook_z", "ln_final.hook_normalized"]


@pytest.fixture(scope="module")
def cache_records(records):
    return [CacheRecord.from_dict(r) for r in records]


def test_the_store_equals_a_fresh_forward_pass_of_each_problem_alone(tmp_path, nnsight_backend, cache_records):
    store = cache_activations(nnsight_backend, cache_records, SITES, ["prompt_end", "steps"], tmp_path / "s",
                              batch_size=3, chunk_size=5, progress=False)
    assert store.manifest["n_chunks"] == 2 and store.manifest["complete"] is True
    tok = nnsight_backend.checkpoint.tokenizer
    for r in cache_records:
        batch = encode_batch(tok, [r.prompt], [r.response], keys=[r.key])
        at = resolve_positions(["prompt_end", "steps"], batch)
        fresh = nnsight_backend.read(batch, SITES, at)
        rows = store.rows_of(r.key)
        assert [store.labels[i] for i in rows] == at.labels
        assert store.positions[rows].tolist() == at.positions.tolist()
        for site, value in fresh.items():
            torch.testing.assert_close(store.site(site)[rows], value, atol=1e-5, rtol=0)


def test_both_backends_cache_the_same_activations(tmp_path, nnsight_backend, bridge_backend, cache_records):
    a = cache_activations(nnsight_backend, cache_records, SITES, "prompt_end", tmp_path / "a", progress=False)
    b = cache_activations(bridge_backend, cache_records, SITES, "prompt_end", tmp_path / "b", progress=False)
    assert a.manifest["backend"] == "nnsight" and b.manifest["backend"] == "bridge"
    for site in a.sites:
        assert torch.equal(a[site], b[site])


def test_pre_and_post_rl_stores_align_row_for_row_by_problem_id(tmp_path, make_tiny_qwen2, nnsight_backend, cache_records):
    post = make_backend("nnsight", load_checkpoint(make_tiny_qwen2(tmp_path / "post", seed=5)))
    a = cache_activations(nnsight_backend, cache_records, SITES, ["prompt_end", "steps"], tmp_path / "pre", progress=False)
    b = cache_activations(post, list(reversed(cache_records)), SITES, ["prompt_end", "steps"], tmp_path / "post-store",
                          progress=False)
    ia, ib = align_rows(a, b)
    assert [a.row_keys()[i] for i in ia] == [b.row_keys()[i] for i in ib]
    assert a.manifest["model"]["weight_sha256"] != b.manifest["model"]["weight_sha256"]
    assert a.manifest["tokenizer"] == b.manifest["tokenizer"]


def test_a_complete_store_is_not_recomputed_and_a_deleted_chunk_is(tmp_path, nnsight_backend, cache_records):
    out = tmp_path / "s"
    cache_activations(nnsight_backend, cache_records, SITES, "prompt_end", out, chunk_size=3, progress=False)
    files = {p.name: p.read_bytes() for p in sorted((out / "chunks").iterdir())}
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "chunks").iterdir()}
    (out / "chunks" / "000001.safetensors").unlink()
    (out / "chunks" / "000001.json").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    store = cache_activations(nnsight_backend, cache_records, SITES, "prompt_end", out, chunk_size=3, progress=False)
    assert {p.name: p.read_bytes() for p in sorted((out / "chunks").iterdir())} == files
    assert (out / "chunks" / "000000.safetensors").stat().st_mtime_ns == mtimes["000000.safetensors"]
    assert store.n_rows == len(cache_records)


def test_caching_other_inputs_into_an_existing_store_names_the_difference(tmp_path, nnsight_backend, cache_records):
    cache_activations(nnsight_backend, cache_records, SITES, "prompt_end", tmp_path / "s", progress=False)
    with pytest.raises(StoreMismatchError, match=r"sites.*Use a new --out"):
        cache_activations(nnsight_backend, cache_records, ["hook_embed"], "prompt_end", tmp_path / "s", progress=False)


def test_steps_for_a_record_without_a_response_name_it(tmp_path, nnsight_backend, problems):
    recs = [CacheRecord(p.id, p.id, p.prompt) for p in problems[:2]]
    with pytest.raises(PositionError, match=f"{problems[0].id}: position 'steps' needs a teacher-forced response"):
        cache_activations(nnsight_backend, recs, SITES, "steps", tmp_path / "s", progress=False)


def test_records_need_unique_keys_and_the_error_gives_line_numbers(tmp_path, records):
    path = write_jsonl(tmp_path / "p.jsonl", [records[0], records[1], records[0]])
    with pytest.raises(RecordsError, match=r"line 3: key '.*' already used on line 1.*distinct 'key'"):
        read_records(path)
    path = write_jsonl(tmp_path / "q.jsonl", [records[0], {**records[0], "key": records[0]["id"] + ":B"}])
    assert [r.key for r in read_records(path)] == [records[0]["id"], records[0]["id"] + ":B"]
    with pytest.raises(RecordsError, match="line 1: missing field 'prompt'"):
        read_records(write_jsonl(tmp_path / "r.jsonl", [{"id": "x"}]))


def test_the_cli_reports_a_bad_site_and_exits_2(tmp_path, tiny_dir, records, capsys):
    problems = write_jsonl(tmp_path / "p.jsonl", records)
    rc = main(["--model", str(tiny_dir), "--problems", str(problems), "--sites", "blocks.9.hook_resid_post",
               "--positions", "prompt_end", "--out", str(tmp_path / "s"), "--no-progress"])
    assert rc == 2
    assert "layer 9 is out of range; this model has 2 blocks" in capsys.readouterr().err
    rc = main(["--model", str(tiny_dir), "--problems", str(tmp_path / "missing.jsonl"), "--sites", "hook_embed",
               "--positions", "prompt_end", "--out", str(tmp_path / "s"), "--no-progress"])
    assert rc == 2 and "no such file" in capsys.readouterr().err


def test_the_package_exposes_the_cache_api_lazily():
    import activations

    assert activations.cache_activations is cache_activations and activations.read_records is read_records


def test_the_cli_caches_and_prints_a_summary_line(tmp_path, tiny_dir, records, capsys):
    problems = write_jsonl(tmp_path / "p.jsonl", records)
    rc = main(["--model", str(tiny_dir), "--problems", str(problems), "--sites", "blocks.*.hook_resid_post",
               "--positions", "prompt_end", "--out", str(tmp_path / "s"), "--batch-size", "4", "--no-progress"])
    assert rc == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"cached rows={len(records)} chunks=1 sites=2 out={tmp_path / 's'}"
    assert ActivationStore(tmp_path / "s")["blocks.1.hook_resid_post"].shape == (len(records), 64)


@pytest.fixture(scope="module")
def many_records():
    seen, out = set(), []
    for p in sample_problems(800, seed=11):
        if p.id not in seen:
            seen.add(p.id)
            out.append({"id": p.id, "prompt": p.prompt, "response": make_trace(p, NATURAL_STRATEGY[p.type])})
    return out[:400]


def _store_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_run_killed_with_sigkill_and_rerun_equals_an_uninterrupted_run(tmp_path, tiny_dir, many_records):
    problems = write_jsonl(tmp_path / "p.jsonl", many_records)
    cmd = [sys.executable, "-m", "activations.cache", "--model", str(tiny_dir), "--problems", str(problems),
           "--sites", "blocks.*.hook_resid_post", "blocks.*.attn.hook_z", "hook_embed", "--positions", "all",
           "--batch-size", "4", "--chunk-size", "4", "--no-progress"]
    n_chunks = 100
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    run = dict(cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    uninterrupted = subprocess.Popen(cmd + ["--out", str(whole)], **run)
    victim = subprocess.Popen(cmd + ["--out", str(killed)], **run)
    deadline = time.monotonic() + 300
    try:
        while not list((killed / "chunks").glob("*.json")):  # a chunk's record is written last
            assert victim.poll() is None, victim.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no chunk was written in time"
            time.sleep(0.002)
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.kill()
        victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert json.loads((killed / "manifest.json").read_text())["complete"] is False
    assert 1 <= len(list((killed / "chunks").glob("*.json"))) < n_chunks

    resumed = subprocess.run(cmd + ["--out", str(killed)], **run, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert "RuntimeWarning" not in resumed.stderr.decode()  # python -m activations.cache runs cleanly
    out, err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, err.decode()[-2000:]

    a, b = _store_files(killed), _store_files(whole)
    assert sorted(a) == sorted(b) and len(a) == 1 + 2 * n_chunks
    assert [name for name in a if a[name] != b[name]] == []  # byte for byte
    sa, sb = ActivationStore(killed), ActivationStore(whole)
    sa.verify()
    assert sa.keys == sb.keys and sa.labels == sb.labels
    for site in sa.sites:  # tensor for tensor
        assert torch.equal(sa[site], sb[site])
