"""``python -m probes.fit``: linear probes on an activation store, per layer, with controls.

::

    python -m probes.fit --store DIR --labels FILE.jsonl --target strategy --out DIR
    python -m probes.fit --store PRE --labels PRE.jsonl --post-store POST --post-labels POST.jsonl \\
        --target strategy propensity type correct --model PRE_CKPT --post-model POST_CKPT --out DIR

``--labels`` is the per-problem JSONL of ``python -m probes.behaviour`` (``--out X.json`` writes
``X.model.jsonl``) or task records (``id``, ``prompt``; enough for ``type`` and ``step_value``).
The store is read through :class:`activations.store.ActivationStore`. With ``--post-store``
the two models share one split by problem chain and transfer is added; with ``--model`` the
steering dose-response runs at the best strategy layer. Writes ``OUT/probes.json`` and
``OUT/figures/*.png`` (see :mod:`probes.probing.report`); the last line printed is
``probes: target=T model=M best_layer=L balanced_accuracy=X`` per target and model, then
``wrote OUT/probes.json``. Exit status 2 for bad arguments, 1 when the store or labels cannot
be read.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from probes.probing.config import DEFAULT_STEER_ALPHAS, ConfigError, ProbeConfig
from probes.probing.targets import TARGETS, LabelsError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m probes.fit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, metavar="DIR", help="activation store (the model, or the pre-RL one)")
    ap.add_argument("--labels", required=True, metavar="FILE.jsonl", help="per-problem labels of that model")
    ap.add_argument("--post-store", metavar="DIR", help="a second store (post-RL) for transfer")
    ap.add_argument("--post-labels", metavar="FILE.jsonl", help="per-problem labels of the second model")
    ap.add_argument("--target", nargs="+", default=["strategy"], choices=TARGETS, help="targets to probe")
    ap.add_argument("--hook", nargs="+", default=["hook_resid_post"],
                    help="block hook(s) to read (blocks.{l}.HOOK); the first is the primary one")
    ap.add_argument("--position", default="prompt_end", help="prompt_end, or step (for step_value)")
    ap.add_argument("--layers", type=int, nargs="*", help="layers to probe (default: all in the store)")
    ap.add_argument("--trace-strategy", default="natural", choices=("natural", "forward", "backward"),
                    help="strategy of the teacher-forced traces the step rows were cached on")
    ap.add_argument("--model", metavar="DIR", help="checkpoint of the (pre-RL) model, for steering")
    ap.add_argument("--post-model", metavar="DIR", help="checkpoint of the post-RL model, for steering")
    ap.add_argument("--alphas", type=float, nargs="+", default=list(DEFAULT_STEER_ALPHAS),
                    help="steering doses, multiples of mu_F - mu_B")
    ap.add_argument("--steer-n", type=int, default=256, help="held-out prompts to steer")
    ap.add_argument("--no-generate", action="store_true", help="steer the first token only (no generation)")
    ap.add_argument("--task", metavar="MODULE:NAME", default=None,
                    help="the task (probes.tasks; default: the finite-field task of the shipped organism)")
    ap.add_argument("--splits", type=int, default=5, help="inner CV folds")
    ap.add_argument("--test-size", type=float, default=0.25, help="fraction of chains held out")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap draws for 95%% CIs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-controls", action="store_true", help="skip the control task and shuffled null")
    ap.add_argument("--out", required=True, metavar="DIR", help="output folder")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def main(argv: list[str] | None = None) -> int:
    from probes.tasks import run_with_task

    ap = build_parser()
    args = ap.parse_args(argv)
    return run_with_task(args.task, lambda: _main(ap, args))


def _main(ap, args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if bool(args.post_store) != bool(args.post_labels):
        ap.error("--post-store and --post-labels go together")
    if args.post_model and not args.post_store:
        ap.error("--post-model needs --post-store")
    try:
        cfg = ProbeConfig(n_splits=args.splits, test_size=args.test_size, n_boot=args.n_boot, seed=args.seed,
                          controls=not args.no_controls)
    except ConfigError as e:
        ap.error(str(e))
    from probes.probing.report import run_probes
    from probes.probing.targets import load_labels

    name = "pre" if args.post_store else "model"
    stores = {name: args.store}
    try:
        labels = {name: load_labels(args.labels, args.trace_strategy)}
        if args.post_store:
            stores["post"] = args.post_store
            labels["post"] = load_labels(args.post_labels, args.trace_strategy)
    except (LabelsError, OSError) as e:
        print(f"probes.fit: cannot read labels: {e}", file=sys.stderr)
        return 1
    models = None
    if args.model or args.post_model:
        models = {name: args.model, "post": args.post_model}
    try:
        res = run_probes(stores, labels, args.out, targets=args.target, hook=args.hook, position=args.position,
                         layers=args.layers, config=cfg, models=models, steer_alphas=args.alphas,
                         steer_n=args.steer_n, steer_generate=not args.no_generate, progress=not args.quiet)
    except (KeyError, ValueError) as e:
        print(f"probes.fit: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # the store's own errors (missing, incomplete, corrupted)
        if type(e).__module__.startswith("activations"):
            print(f"probes.fit: {e}", file=sys.stderr)
            return 1
        raise
    for m, per_target in res["models"].items():
        for t, s in per_target.items():
            if s.get("status") != "ok":
                print(f"probes: target={t} model={m} skipped: {s.get('reason')}")
                continue
            best = s["best_layer"]
            row = next(r for r in s["per_layer"] if r["layer"] == best)
            metric, value = (("r2", row["ridge"]["test"]["r2"]["value"]) if s["kind"] == "continuous" else
                             ("balanced_accuracy", row["logistic"]["test"]["balanced_accuracy"]["value"]))
            shown = "n/a" if value is None else f"{value:.3f}"
            print(f"probes: target={t} model={m} best_layer={best} {metric}={shown}")
    print(f"wrote {Path(args.out) / 'probes.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
