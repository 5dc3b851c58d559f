"""``python -m probes.behaviour``: behaviour of a checkpoint, and the decomposition against a reference
(the library is :mod:`probes.behaviour.pipeline`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from probes.behaviour.pipeline import format_table, held_out_problems, parse_steps, run_behaviour


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m probes.behaviour", description=__doc__)
    ap.add_argument("--model", required=True, help="checkpoint directory (the model after the change)")
    ap.add_argument("--reference", help="checkpoint before the change: adds the decomposition")
    ap.add_argument("--n", type=int, default=1000, help="held-out problems (stratified by the task's strata; the "
                    "finite-field task: field x type x steps)")
    ap.add_argument("--steps", type=parse_steps, default=parse_steps("1-10"), help="chain lengths, e.g. 1-10")
    ap.add_argument("--samples", type=int, default=4, help="temperature-1 samples per problem")
    ap.add_argument("--forced", type=int, default=0, help="forced-strategy samples per problem and strategy (the "
                    "forced accuracy when sampled; a check beside the exact one otherwise)")
    ap.add_argument("--forced-method", choices=("auto", "exact", "sampled"), default="auto",
                    help="forced accuracy: exact (the probability of the one correct response), sampled, or auto "
                         "(exact where the tokenizer spells each response one way; probes.behaviour.exact)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", required=True, help="output JSON file (responses go beside it as .model.jsonl)")
    ap.add_argument("--cache", help="directory caching each checkpoint's per-problem rows (by weights hash, "
                    "problems and settings), so a reference measured once is not measured again")
    ap.add_argument("--task", metavar="MODULE:NAME", default=None,
                    help="the task (probes.tasks; default: the finite-field task of the shipped organism)")
    args = ap.parse_args(argv)
    if args.n < 1 or args.samples < 1 or args.forced < 0:
        ap.error("--n and --samples must be >= 1 and --forced >= 0")
    if args.forced_method == "sampled" and args.forced < 1:
        ap.error("--forced-method sampled needs --forced >= 1 samples per strategy")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from probes.tasks import run_with_task

    return run_with_task(args.task, lambda: _measure(args))


def _measure(args) -> int:
    from probes.behaviour.evaluate import BehaviourSettings
    from activations.io import atomic_write_text

    problems = held_out_problems(args.n, args.seed, args.steps)
    settings = BehaviourSettings(n_samples=args.samples, n_forced=args.forced, batch_size=args.batch_size, seed=args.seed,
                                forced_method=args.forced_method)
    result = run_behaviour(args.model, args.reference, problems, settings, n_boot=args.bootstrap, responses_out=args.out,
                          cache_dir=args.cache)
    result["settings"].update({"n": args.n, "steps": list(args.steps), "problem_seed": args.seed})
    atomic_write_text(args.out, json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(format_table(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
