"""Benchmark: an exact ``hook_resid_pre`` layer x position patching sweep, batched against one
forward pass per patch.

The sweep: on the model organism (``checkpoints/organism/sft-fb`` when it holds a checkpoint,
otherwise a randomly initialised ``Qwen2ForCausalLM`` of the organism's shape: 4 layers,
d_model 256, 8 heads, 2 kv heads, d_mlp 768, the task's 37-word vocabulary), counterfactual
denoising on ``--n-problems`` eval/inv pairs of ``--steps`` operations: the corrupt prompt runs
with ``blocks.{l}.hook_resid_pre`` at token ``p`` taken from the clean run, for every layer ``l``
and every prompt token ``p``; the metric is the strategy logit difference at the last prompt
token (nats).

- **looped**: one backend forward pass per (layer, position) patch, every problem of the batch in
  it, as TransformerLens' ``patching.generic_activation_patch`` does
  (:func:`probes.patching.sweep.sweep` with ``batched=False``);
- **batched**: :func:`probes.patching.sweep.sweep` as the package runs it: many patches per call
  with prefix reuse (:mod:`probes.patching.prefix`: only the layers and tokens a patch can change
  are run, patches that write the values already there are skipped);
- **batched (backend only)**, reported for reference: the batch repeated once per patch, many
  patches per backend forward pass, no prefix reuse (``engine="backend"``).

Each of ``--repeats`` passes times every variant once, in alternating order; a variant's speedup
is the median over passes of looped time / its time *in the same pass*, so that changes in
machine load between passes cancel. ``--clock cpu`` (the default) times this process's CPU time
with one intra-op thread, which on an idle machine equals the wall time and on a shared one is
not inflated by other jobs; ``--clock wall`` times the wall clock. ``max_abs_diff`` is the largest
difference (nats) between the batched and the looped metric values over all cells and problems.

The last line is ``patch_speedup=X.XX max_abs_diff=Y``.

Run: ``python benchmarks/patching.py`` (``make bench``); ``--help`` for the knobs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

DEFAULT_CHECKPOINT = REPO / "checkpoints" / "organism" / "sft-fb"


def load_organism(path: Path, seed: int):
    """The organism checkpoint at ``path`` if it holds one, else a random one of its shape."""
    from activations.load import Checkpoint, load_checkpoint

    if (path / "config.json").is_file():
        return load_checkpoint(path, dtype="float32"), f"checkpoint {path}"
    from probes.task.tokenizer import build_tokenizer
    from probes.train.config import ModelConfig
    from probes.train.model import build_model

    tok = build_tokenizer()
    cfg = ModelConfig()
    model = build_model(cfg, tok, seed=seed).eval()
    return Checkpoint.from_model(model, tok), (f"random Qwen2ForCausalLM of the organism's shape ({cfg.layers} layers, "
                                               f"d_model {cfg.d_model}, {cfg.heads} heads, {cfg.kv_heads} kv heads, "
                                               f"d_mlp {cfg.d_mlp}); no checkpoint at {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="organism checkpoint directory")
    ap.add_argument("--n-problems", type=int, default=1, help="counterfactual pairs in the batch (default 1)")
    ap.add_argument("--steps", type=int, default=3, help="operations per problem (default 3: 19-token prompts)")
    ap.add_argument("--repeats", type=int, default=5, help="timing passes (default 5)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="what to time (default cpu)")
    ap.add_argument("--max-rows", type=int, default=4096, help="rows per call of the batched sweep")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from activations.backends import make_backend
    from probes.patching.cells import grid_cells
    from probes.patching.counterfactual import pair_inputs
    from probes.patching.donor import Donor
    from probes.patching.metrics import StrategyLogitDiff
    from probes.patching.sweep import sweep
    from probes.task import sample_problems

    ckpt, what = load_organism(args.checkpoint, args.seed)
    backend = make_backend("nnsight", ckpt)
    tok = ckpt.tokenizer
    pairs = pair_inputs(tok, sample_problems(args.n_problems, args.seed, steps=(args.steps,)))
    metric = StrategyLogitDiff(tok)
    plan = metric.plan(pairs.corrupt)
    n_layers = backend.dims.n_layers
    donor = Donor.read(backend, pairs.clean, ["blocks.*.hook_resid_pre"])
    cells = grid_cells(["hook_resid_pre"], n_layers, pairs.n_positions)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    variants = {
        "looped": dict(batched=False),
        "batched": dict(max_rows=args.max_rows),
        "batched_backend_only": dict(max_rows=args.max_rows, engine="backend"),
    }
    for kw in variants.values():  # warm-up
        sweep(backend, pairs.corrupt, cells[:2], metric, donor, desc=None, plan=plan, **kw)
    times: dict[str, list[float]] = {k: [] for k in variants}
    values: dict[str, torch.Tensor] = {}
    for r in range(args.repeats):
        names = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in names:
            t0 = clock()
            values[name] = sweep(backend, pairs.corrupt, cells, metric, donor, desc=None, plan=plan, **variants[name])
            times[name].append(clock() - t0)
    ratio = {k: statistics.median(a / b for a, b in zip(times["looped"], times[k])) for k in variants}
    diff = {k: float((values[k] - values["looped"]).abs().max()) for k in variants}

    print(f"model: {what}")
    print(f"sweep: blocks.*.hook_resid_pre x {pairs.n_positions} prompt positions x {n_layers} layers = "
          f"{len(cells)} patches, {len(pairs.corrupt)} problem(s) each; metric: strategy logit difference (nats)")
    print(f"clock: {args.clock}, {args.threads} thread(s), {args.repeats} passes (median of per-pass ratios)")
    for k in variants:
        med = statistics.median(times[k])
        print(f"{k:>22}: {med * 1e3:8.1f} ms per sweep ({med / len(cells) * 1e3:6.2f} ms per patch), "
              f"speedup {ratio[k]:5.2f}, max_abs_diff {diff[k]:.2e}")
    print(f"patch_speedup={ratio['batched']:.2f} max_abs_diff={diff['batched']:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
