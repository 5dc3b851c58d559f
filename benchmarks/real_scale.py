"""Benchmark: the real-scale path on a Qwen2.5-1.5B-shaped pre/post pair (``probes.synth``).

On two random-init checkpoints of Qwen2.5-1.5B-Instruct's exact shape (28 layers, d_model 1536,
12 heads, 2 kv heads, d_mlp 8960, vocabulary 151,936, tied embeddings; 1.54B parameters; the
"post-RL" one a seeded 1% perturbation of the "pre-RL" one), side by side with the baseline of a
bare forward pass of the same prompts:

- **caching**: :func:`activations.cache.cache_activations` of ``hook_resid_post`` at every layer
  at ``prompt_end`` for ``--n`` prompts (default 64; tokenizing, one traced forward per batch that
  stops after the last layer read, gathering, chunk files with hashes, fsync), against a bare
  forward of the same pre-tokenized batches (``model(**inputs, use_cache=False)`` under
  ``torch.no_grad``, logits included) on the same module. The trunk alone (``model.model``, no
  unembedding) is timed too, since the cache path skips the unembedding: ``cache / trunk`` is the
  instrumentation's own cost. Each of ``--repeats`` passes times the three once, in alternating
  order; a ratio is the median over passes of a task's time divided by the bare forward's time in
  the same pass, so that changes in machine load between passes cancel.
- **peak RSS** of caching ``--n`` prompts: one subprocess that loads the pre-RL checkpoint and
  caches them (``ru_maxrss``, so the model's own weights are included: 6.2 GB in float32).
- **one exact patch sweep**: cross-model activation patching of routing (Prakash et al. 2024,
  arXiv 2402.14811) as ``probes.patching`` runs it: the pre-RL model reads ``--sweep-n``
  prompts while ``blocks.{l}.hook_resid_post`` at every prompt token is replaced by the post-RL
  model's, one cell per layer (28), scored by the strategy logit difference (nats) at
  ``prompt_end``, batched ``--max-rows`` rows per forward pass; against one bare forward of the
  same prompts on the recipient (so ``sweep / bare`` is about 28 at best; the per-cell ratio is
  ``sweep / (28 * bare)``, 1.00 meaning a patched forward costs what a bare one does).

Throughput (prompt tokens per second, padding excluded) is printed for every timed task. On a
CPU, both the wall clock and this process's CPU clock (all threads) are reported and
``--clock`` (default ``cpu``) picks the one the ratios use: on a shared machine the wall clock
measures the scheduler as much as the code. On CUDA the clock is the wall clock after
``torch.cuda.synchronize()``, and peak GPU memory is printed as well.

The pair: ``--pre DIR --post DIR`` (made with ``python -m probes.synth``), else one is made
in ``--work`` (default: a temporary folder, removed afterwards; about 12 GB of disk in float32)
with ``--synth-dtype`` weights (``--shape tiny`` for a smoke test of the script). The last line printed is ``caching_ratio=X.XX peak_rss_gb=Y.Y``
(cache time / bare forward time; the caching subprocess's peak RSS in GB, 1e9 bytes).

Run: ``python benchmarks/real_scale.py [--pre DIR --post DIR]``; ``--help`` for the knobs;
``benchmarks/gpu_check.sh`` runs it in bfloat16 on a GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
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

from benchmarks.caching import make_records  # noqa: E402  (the same prompt-only records)
from probes.pipeline import peak_rss_gb  # noqa: E402

SITES = "blocks.*.hook_resid_post"


def make_pair(work: Path, dtype: str, shape: str = "qwen2.5-1.5b") -> tuple[Path, Path]:
    """A synth pair of ``shape`` in ``work`` (pre: seed 0; post: its perturbed twin, seed 1),
    reused when ``work`` already holds one."""
    from probes.synth import make_synth, make_twin

    pre, post = work / "pre", work / "post"
    if not (pre / "synth.json").is_file():
        print(f"making the pre-RL synth checkpoint ({shape}) in {pre} ({dtype}) ...", flush=True)
        make_synth(shape, 0, pre, dtype=dtype)
    if not (post / "synth.json").is_file():
        print(f"making its perturbed post-RL twin in {post} ...", flush=True)
        make_twin(pre, 1, post)
    return pre, post


class Clock:
    """Times one call: ``(wall seconds, CPU seconds of this process)``; synchronizes CUDA."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> tuple[float, float]:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
        w, c = time.perf_counter(), time.process_time()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - w, time.process_time() - c


def rss_child(args) -> None:
    """Load ``args.pre`` and cache ``args.n`` prompts; print the peak RSS (GB) as JSON."""
    from activations.backends import make_backend
    from activations.cache import cache_activations
    from activations.load import load_checkpoint

    ckpt = load_checkpoint(args.pre, dtype=args.dtype, device=args.device)
    after_load = peak_rss_gb()
    backend = make_backend("nnsight", ckpt)
    with tempfile.TemporaryDirectory() as out:
        cache_activations(backend, make_records(args.n), SITES, "prompt_end", out,
                          batch_size=args.batch_size, progress=False)
    print(json.dumps({"n": args.n, "peak_rss_gb": peak_rss_gb(), "after_load_gb": after_load}))


def run(args) -> None:
    from activations.backends import make_backend
    from activations.batch import encode_batch
    from activations.cache import cache_activations
    from activations.load import load_checkpoint
    from probes.patching.cells import layer_cells
    from probes.patching.cmap import routing_inputs
    from probes.patching.donor import Donor
    from probes.patching.sweep import sweep
    from probes.task import sample_problems

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False (no GPU, or a CPU build of torch)")
    clock_name = "wall" if device.type == "cuda" else args.clock
    timed = Clock(device)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-real-scale-"))
    made = False
    if args.pre and args.post:
        pre_dir, post_dir = Path(args.pre), Path(args.post)
    else:
        pre_dir, post_dir = make_pair(work, args.synth_dtype, args.shape)
        made = not args.work
    args.pre = str(pre_dir)
    log = print

    # 1. peak RSS of caching N prompts, in a fresh process (before this one loads anything)
    rss = {"peak_rss_gb": float("nan"), "after_load_gb": float("nan")}
    if not args.skip_rss and not args.skip_caching:
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", "--pre", str(pre_dir), "--n", str(args.n),
             "--batch-size", str(args.batch_size), "--dtype", args.dtype, "--device", args.device,
             "--threads", str(args.threads)],
            capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            raise SystemExit(f"error: the RSS subprocess failed:\n{out.stderr[-2000:]}")
        rss = json.loads(out.stdout.strip().splitlines()[-1])

    # 2. caching against the bare forward, on the pre-RL checkpoint
    ckpt = load_checkpoint(pre_dir, dtype=args.dtype, device=args.device)
    model = ckpt.model
    d = ckpt.dims
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {pre_dir} ({ckpt.architecture}, {d.n_layers} layers, d_model {d.d_model}, heads {d.n_heads}/"
        f"{d.n_kv_heads}, d_mlp {d.d_mlp}, vocab {d.d_vocab}, {n_params / 1e9:.2f}B parameters, "
        f"{args.dtype} on {device}, torch threads {torch.get_num_threads()})")
    _ = ckpt.weight_hash  # computed once, outside the timed region (the store's manifest records it)
    backend = make_backend("nnsight", ckpt)
    tok = ckpt.tokenizer
    records = make_records(args.n)
    bs = args.batch_size
    batches = [encode_batch(tok, [r.prompt for r in records[i:i + bs]], keys=[r.key for r in records[i:i + bs]])
               for i in range(0, len(records), bs)]
    n_tokens = int(sum(int(b.lengths.sum()) for b in batches))
    log(f"N={args.n} prompts, batch {bs}, {len(batches)} batches, {n_tokens} prompt tokens "
        f"(mean {n_tokens / args.n:.1f}); cached: {SITES} at prompt_end ({d.n_layers} sites x {d.d_model})")

    def bare(bs_=batches):
        with torch.no_grad():
            for b in bs_:
                model(**b.model_inputs(device), use_cache=False)

    def trunk(bs_=batches):
        with torch.no_grad():
            for b in bs_:
                model.model(**b.model_inputs(device), use_cache=False)

    stores = iter(range(10_000))

    def cache(bs_=None, recs=records):
        cache_activations(backend, recs, SITES, "prompt_end", work / f"store-{next(stores)}", batch_size=bs,
                          progress=False)

    tasks = {"bare_forward": bare, "trunk_forward": trunk, "cache_to_disk": cache}
    if not args.skip_caching:
        bare(batches[:1])  # warm-up (kernels, allocator)
        trunk(batches[:1])
        cache(recs=records[:bs])
    wall: dict[str, list[float]] = {k: [] for k in tasks}
    cpu: dict[str, list[float]] = {k: [] for k in tasks}
    order = list(tasks)
    for r in range(0 if args.skip_caching else args.repeats):
        for k in (order if r % 2 == 0 else reversed(order)):
            w, c = timed(tasks[k])
            wall[k].append(w)
            cpu[k].append(c)
        log(f"pass {r + 1}/{args.repeats}: " + "  ".join(f"{k} {wall[k][-1]:.2f} s (cpu {cpu[k][-1]:.2f} s)"
                                                        for k in tasks))
    ratios = {(clock_name, "cache_to_disk"): float("nan")}
    for name, times in (("wall", wall), ("cpu", cpu)):
        if (name == "cpu" and device.type == "cuda") or args.skip_caching:
            continue
        log(f"-- {name} clock: median over {args.repeats} passes; ratio = median of per-pass ratios to the bare "
            "forward of the same pass")
        for k in tasks:
            med = statistics.median(times[k])
            ratio = statistics.median(a / b for a, b in zip(times[k], times["bare_forward"]))
            log(f"{k:16s} {med:8.2f} s  {n_tokens / med:9.1f} tokens/s  ratio {ratio:.3f}")
            ratios[(name, k)] = ratio
        log(f"cache / trunk forward (the instrumentation's own cost; both skip the unembedding): "
            f"{statistics.median(a / b for a, b in zip(times['cache_to_disk'], times['trunk_forward'])):.3f}")
    caching_ratio = ratios[(clock_name, "cache_to_disk")]
    if not args.skip_caching:
        store_bytes = sum(p.stat().st_size for p in (work / "store-1").rglob("*") if p.is_file())
        log(f"store: {store_bytes / 1e6:.2f} MB for {args.n} prompts x {d.n_layers} sites ({args.dtype})")
        log(f"peak RSS caching N={args.n} prompts (fresh process, weights included): {rss['peak_rss_gb']:.1f} GB "
            f"(after loading the model: {rss['after_load_gb']:.1f} GB)")

    # 3. one exact patch sweep (CMAP routing, post into pre) against the bare forward
    if not args.skip_sweep:
        post = load_checkpoint(post_dir, dtype=args.dtype, device=args.device)
        donor_backend = make_backend("nnsight", post)
        problems = sample_problems(args.sweep_n, seed=args.seed, steps=(args.sweep_steps,))
        batch, metric = routing_inputs(tok, problems)
        cells = layer_cells(["hook_resid_post"], d.n_layers, "prompt")
        plan = metric.plan(batch)
        donor = Donor.read(donor_backend, batch, [SITES])

        def one_sweep():
            sweep(backend, batch, cells, metric, donor, max_rows=args.max_rows, desc=None, plan=plan)

        def one_bare():
            with torch.no_grad():
                model(**batch.model_inputs(device), use_cache=False)

        sweep(backend, batch, cells[:1], metric, donor, max_rows=args.max_rows, desc=None, plan=plan)  # warm-up
        one_bare()
        sw, bw = [], []
        for r in range(args.sweep_repeats):
            pair = [("sweep", one_sweep), ("bare", one_bare)]
            for k, f in (pair if r % 2 == 0 else reversed(pair)):
                t = timed(f)
                (sw if k == "sweep" else bw).append(t)
        j = 0 if clock_name == "wall" else 1
        s_med = statistics.median(t[j] for t in sw)
        b_med = statistics.median(t[j] for t in bw)
        ratio = statistics.median(a[j] / b[j] for a, b in zip(sw, bw))
        toks = int(batch.lengths.sum())
        log(f"patch sweep: CMAP routing post->pre, blocks.*.hook_resid_post at every prompt token, {len(cells)} cells "
            f"x {len(batch)} prompts ({toks} tokens), max_rows {args.max_rows}; {clock_name} clock, median of "
            f"{args.sweep_repeats}")
        log(f"  sweep {s_med:.2f} s ({len(cells) * toks / s_med:.1f} patched tokens/s); bare forward of the same "
            f"prompts {b_med:.3f} s ({toks / b_med:.1f} tokens/s); sweep / bare = {ratio:.1f} "
            f"(per cell {ratio / len(cells):.2f} bare forwards)")
        del donor, donor_backend, post
    log(f"this process's peak RSS: {peak_rss_gb():.1f} GB"
        + (f"; peak GPU memory {torch.cuda.max_memory_allocated() / 1e9:.1f} GB" if device.type == "cuda" else ""))
    if made:
        shutil.rmtree(work, ignore_errors=True)
    else:
        for p in work.glob("store-*"):
            shutil.rmtree(p, ignore_errors=True)
    print(f"caching_ratio={caching_ratio:.2f} peak_rss_gb={rss['peak_rss_gb']:.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pre", metavar="DIR", help="the pre-RL checkpoint (default: make a synth pair in --work)")
    ap.add_argument("--post", metavar="DIR", help="the post-RL checkpoint (the donor of the patch sweep)")
    ap.add_argument("--work", metavar="DIR", help="where to make (and keep) the synth pair and the stores "
                    "(default: a temporary folder, removed afterwards)")
    ap.add_argument("--synth-dtype", default="float32", help="weights of a synth pair made here (default float32)")
    ap.add_argument("--shape", default="qwen2.5-1.5b", choices=["qwen2.5-1.5b", "tiny"],
                    help="shape of a synth pair made here (tiny: a seconds-long smoke test of this script)")
    ap.add_argument("--n", type=int, default=64, help="prompts to cache (default 64)")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass (default 16)")
    ap.add_argument("--repeats", type=int, default=3, help="timing passes (default 3)")
    ap.add_argument("--dtype", default="float32", help="dtype to run in (default float32; bfloat16 on a GPU)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="cpu",
                    help="the clock of the ratios on CPU (default: this process's CPU time, all threads); "
                         "on CUDA always the wall clock")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default 0: torch's default)")
    ap.add_argument("--sweep-n", type=int, default=4, help="prompts in the patch sweep (default 4)")
    ap.add_argument("--sweep-steps", type=int, default=2, help="operations per sweep prompt (default 2)")
    ap.add_argument("--sweep-repeats", type=int, default=1, help="timing passes of the sweep (default 1)")
    ap.add_argument("--max-rows", type=int, default=64, help="rows per forward pass of the sweep (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-rss", action="store_true", help="no RSS subprocess")
    ap.add_argument("--skip-sweep", action="store_true", help="no patch sweep (one model in memory)")
    ap.add_argument("--skip-caching", action="store_true",
                    help="only the patch sweep (no caching timings or RSS; caching_ratio=nan)")
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if bool(args.pre) != bool(args.post) and not args.rss_child:
        ap.error("--pre and --post go together")
    if min(args.n, args.batch_size, args.repeats, args.sweep_n, args.sweep_repeats, args.max_rows) < 1:
        ap.error("--n, --batch-size, --repeats, --sweep-n, --sweep-repeats and --max-rows must be >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.rss_child:
        rss_child(args)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
