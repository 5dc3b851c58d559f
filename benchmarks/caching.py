"""Benchmark: caching activations to disk against a bare forward pass, and peak memory.

In one run, on a randomly initialised model of the organism's size (``Qwen2ForCausalLM``, 4
layers, d_model 256, 8 heads, 2 kv heads, d_mlp 1024, the task vocabulary):

- time to cache ``hook_resid_post`` of every layer at ``prompt_end`` to disk
  (:func:`activations.cache.cache_activations`: tokenizing, one forward per batch, gathering,
  chunk files with hashes, fsync), against
- a bare forward of the same (pre-tokenized) batches on a separately loaded, un-instrumented
  copy of the model (``model(**inputs, use_cache=False)`` under ``torch.no_grad``, logits
  included; the trunk alone, ``model.model``, is timed too),
- TransformerLens ``TransformerBridge.run_with_cache`` of the same sites on the same batches,
- nnsight ``.save()`` of the full outputs of every layer;

and the peak RSS of the cache path for N = 2000 and N = 8000 prompts, each in its own
subprocess so the two are comparable. Each of ``--repeats`` passes times every task once, in
alternating order; a task's ratio is the median over passes of its time divided by the bare
forward's time *in the same pass*, so that changes in machine load between passes cancel (a
shared machine's load can change tenfold within minutes). Both the wall clock and this process's
CPU clock are reported (all threads, so the background writer's hashing and serialisation count;
steadier than wall time when other jobs share the cores). The last line is
``caching_ratio=X.XX rss_ratio=Y.YY`` (cache time / bare forward time on the ``--clock``, CPU by
default; RSS at 8000 / RSS at 2000).

``--shape qwen2.5-1.5b`` times the cache path against a bare forward on a random model of
Qwen2.5-1.5B's exact shape (28 layers, d_model 1536, 12 heads, 2 kv heads, d_mlp 8960, vocabulary
151936, tied embeddings; fp32, about 6 GB) with a small batch; nothing is saved to disk but the
store, and no RSS or baselines are measured.

Run: ``python benchmarks/caching.py`` (``make bench``); ``--help`` for the knobs.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

SHAPES = {
    "organism": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                     intermediate_size=1024, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(vocab_size=151936, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, intermediate_size=8960, tie_word_embeddings=True,
                         rope_theta=1_000_000.0, rms_norm_eps=1e-6, max_position_embeddings=32768),
}
SITES = "blocks.*.hook_resid_post"


def build_model(shape: str, seed: int = 0):
    """A random Qwen2ForCausalLM of ``shape`` with the task tokenizer (vocab 37 unless the shape
    sets its own; the task's ids are valid in any larger vocabulary)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from probes.task.tokenizer import build_tokenizer

    tok = build_tokenizer()
    kwargs = {"vocab_size": len(tok), "max_position_embeddings": 512, **SHAPES[shape]}
    cfg = Qwen2Config(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, **kwargs)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg).eval(), tok


def make_records(n: int, seed: int = 0):
    """``n`` prompt-only records with unique keys (problem ids may repeat in a sample)."""
    from activations.cache import CacheRecord
    from probes.task import sample_problems

    return [CacheRecord(key=f"{p.id}#{i}", id=p.id, prompt=p.prompt)
            for i, p in enumerate(sample_problems(n, seed=seed))]


def batches_of(tok, records, batch_size):
    from activations.batch import encode_batch

    return [encode_batch(tok, [r.prompt for r in records[i:i + batch_size]],
                         keys=[r.key for r in records[i:i + batch_size]])
            for i in range(0, len(records), batch_size)]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(args) -> None:
    """Cache ``args.rss_child`` prompts from the saved model and print the peak RSS as JSON."""
    from activations.backends import make_backend
    from activations.cache import cache_activations
    from activations.load import load_checkpoint

    ckpt = load_checkpoint(args.model)
    backend = make_backend("nnsight", ckpt)
    records = make_records(args.rss_child, seed=1)
    with tempfile.TemporaryDirectory() as out:
        cache_activations(backend, records, SITES, "prompt_end", out, batch_size=args.batch_size,
                          chunk_size=args.chunk_size, progress=False)
    print(json.dumps({"n": args.rss_child, "peak_rss_mb": peak_rss_mb()}))


def timed(fn) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of this process, all threads)`` of one call."""
    gc.collect()
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def run(args) -> None:
    from activations.backends import make_backend
    from activations.batch import encode_batch
    from activations.cache import cache_activations
    from activations.load import Checkpoint, load_checkpoint
    from activations.positions import resolve_positions
    from activations.sites import expand_sites

    log = print
    organism = args.shape == "organism"
    work = Path(tempfile.mkdtemp(prefix="bench-caching-"))
    model, tok = build_model(args.shape)
    n = args.n if args.n is not None else (2000 if organism else 16)
    bs = args.batch_size if args.batch_size is not None else (64 if organism else 4)
    if organism:
        model.save_pretrained(work / "model")
        tok.save_pretrained(work / "model")
        del model
        ckpt = load_checkpoint(work / "model")
        plain = load_checkpoint(work / "model").model  # un-instrumented, for the bare forward
    else:  # 6 GB: one copy in memory, nothing saved; the bare forward runs on the same module
        ckpt = Checkpoint.from_model(model, tok)
        plain = model
    d = ckpt.dims
    n_params = sum(p.numel() for p in ckpt.model.parameters())
    log(f"shape={args.shape} layers={d.n_layers} d_model={d.d_model} heads={d.n_heads}/{d.n_kv_heads} "
        f"d_mlp={d.d_mlp} vocab={d.d_vocab} params={n_params / 1e6:.1f}M fp32 threads={torch.get_num_threads()}")
    _ = ckpt.weight_hash  # computed once per checkpoint, outside the timed region
    backend = make_backend("nnsight", ckpt)
    records = make_records(n)
    batches = batches_of(tok, records, bs)
    sites = expand_sites(SITES, d.n_layers)
    names = [s.name for s in sites]
    log(f"N={n} prompts, batch={bs}, {len(batches)} batches, mean length "
        f"{sum(int(b.lengths.float().mean()) for b in batches) / len(batches):.1f} tokens")

    def bare(bs_=batches, rec_=None):
        with torch.no_grad():
            for b in bs_:
                plain(**b.model_inputs(), use_cache=False)

    def trunk(bs_=batches, rec_=None):
        with torch.no_grad():
            for b in bs_:
                plain.model(**b.model_inputs(), use_cache=False)

    store_dirs = iter(range(10_000))

    def cache(bs_=None, rec_=records):
        cache_activations(backend, rec_, SITES, "prompt_end", work / f"store-{next(store_dirs)}",
                          batch_size=bs, chunk_size=args.chunk_size, progress=False)

    def bridge_cache(bs_=batches, rec_=None):
        with torch.no_grad():
            for b in bs_:
                _, c = bridge.run_with_cache(b.input_ids, attention_mask=b.attention_mask,
                                             position_ids=b.position_ids, names_filter=names)
                at = resolve_positions("prompt_end", b)
                _ = {k: c[k][at.rows, at.cols] for k in names}

    nn_model = backend._envoy

    def nnsight_save(bs_=batches, rec_=None):
        with torch.no_grad():
            for b in bs_:
                saved = []
                with nn_model.trace(**b.model_inputs()):
                    for l in range(d.n_layers):
                        saved.append(nn_model.model.layers[l].output.save())

    tasks = {"bare_forward": bare, "trunk_forward": trunk, "cache_to_disk": cache}
    if organism and not args.skip_baselines:
        from activations.backends.bridge_backend import build_bridge

        bridge = build_bridge(ckpt)
        tasks["bridge_run_with_cache"] = bridge_cache
        tasks["nnsight_save_full"] = nnsight_save
    for f in tasks.values():  # warm-up on one batch
        f(batches[:1], records[:bs])
    wall: dict[str, list[float]] = {k: [] for k in tasks}
    cpu: dict[str, list[float]] = {k: [] for k in tasks}
    names_in_order = list(tasks)
    for r in range(args.repeats):
        # alternate the order, so that a drift in machine load does not favour one task
        for k in (names_in_order if r % 2 == 0 else reversed(names_in_order)):
            w, c = timed(tasks[k])
            wall[k].append(w)
            cpu[k].append(c)
        log(f"repeat {r + 1}/{args.repeats}: " + " ".join(
            f"{k}={wall[k][-1]:.3f}s (cpu {cpu[k][-1]:.3f}s)" for k in tasks))
    ratios = {}
    for clock, times in (("wall", wall), ("cpu", cpu)):
        log(f"-- {clock} clock: median over {args.repeats} passes; ratio = median of the per-pass "
            "ratios to the bare forward of the same pass [min over passes]")
        paired = {k: statistics.median(a / b for a, b in zip(times[k], times["bare_forward"])) for k in tasks}
        for k in tasks:
            log(f"{k:24s} {statistics.median(times[k]):8.3f}s  ratio {paired[k]:.3f} "
                f"[{min(times[k]) / min(times['bare_forward']):.3f}]")
        log(f"cache / trunk forward (no unembedding; the cache path stops after the last layer read): "
            f"{statistics.median(a / b for a, b in zip(times['cache_to_disk'], times['trunk_forward'])):.3f}")
        ratios[clock] = paired["cache_to_disk"]
    caching_ratio = ratios[args.clock]

    # The cache path's per-batch work (tokenize, locate prompt_end, one traced forward that
    # gathers the rows) against a bare forward of the same batch, alternated batch by batch:
    # the finest pairing, so the least sensitive to changes in machine load.
    per_batch: dict[str, list[tuple[float, float]]] = {"bare": [], "read": []}
    with torch.no_grad():
        for i, b in enumerate(batches * 2):
            recs = records[(i % len(batches)) * bs:(i % len(batches) + 1) * bs]

            def read_step():
                batch = encode_batch(tok, [r.prompt for r in recs], keys=[r.key for r in recs])
                backend.read(batch, sites, resolve_positions("prompt_end", batch))

            steps = [("bare", lambda: plain(**b.model_inputs(), use_cache=False)), ("read", read_step)]
            for k, f in (steps if i % 2 == 0 else reversed(steps)):
                per_batch[k].append(timed(f))
    for j, clock in enumerate(("wall", "cpu")):
        log(f"per-batch paired, {clock} clock ({len(per_batch['bare'])} pairs): tokenize + traced forward "
            f"+ gather / bare forward of the same batch = median "
            f"{statistics.median(a[j] / b[j] for a, b in zip(per_batch['read'], per_batch['bare'])):.3f}")
    store_bytes = sum(p.stat().st_size for p in (work / "store-1").rglob("*") if p.is_file())
    log(f"store size {store_bytes / 2**20:.2f} MiB for {n} prompts x {len(names)} sites")

    rss_ratio = float("nan")
    if organism and not args.skip_rss:
        rss = {}
        for m in args.rss_n:
            out = subprocess.run(
                [sys.executable, __file__, "--rss-child", str(m), "--model", str(work / "model"),
                 "--batch-size", str(bs), "--chunk-size", str(args.chunk_size), "--threads", str(args.threads)],
                capture_output=True, text=True, check=True, cwd=REPO)
            rss[m] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
            log(f"peak RSS caching N={m}: {rss[m]:.1f} MiB")
        lo, hi = min(args.rss_n), max(args.rss_n)
        rss_ratio = rss[hi] / rss[lo]
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    print(f"caching_ratio={caching_ratio:.2f} rss_ratio={rss_ratio:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="organism")
    ap.add_argument("--n", type=int, default=None, help="prompts to time (default 2000; 16 for qwen2.5-1.5b)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 64 (4 for qwen2.5-1.5b)")
    ap.add_argument("--chunk-size", type=int, default=1024, help="problems per chunk file")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="cpu",
                    help="the clock of caching_ratio: this process's CPU time (all threads, so the "
                         "background writer counts; default, because on a shared machine wall time "
                         "measures the scheduler more than the code) or wall time. Both are printed")
    ap.add_argument("--rss-n", type=int, nargs=2, default=[2000, 8000])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: reproducible on shared machines; 0 = torch's default)")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--skip-baselines", action="store_true", help="no bridge / nnsight .save() timings")
    ap.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.rss_child is not None:
        args.batch_size = args.batch_size or 64
        rss_child(args)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
