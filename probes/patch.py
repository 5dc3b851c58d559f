"""``python -m probes.patch``: activation patching of a pre-RL / post-RL pair, in one command.

    python -m probes.patch --pre DIR --post DIR --out DIR [--config FILE.yaml] [--quick] [...]

Runs cross-model activation patching (routing and execution recovery curves, both directions),
counterfactual and attribution patching within each model, the behavioural check and the verdict
(selection / improvement / both / neither), and writes ``DIR/patching.json`` and the figures
(``routing_*.png``, ``execution.png``, ``counterfactual_*.png``, ``attribution_*.png``,
``behaviour.png``). See :mod:`probes.patching.pipeline` for the JSON layout and
:mod:`probes.patching.verdict` for the rule.

The last line printed is ``verdict=LABEL selection=S improvement=I`` (recoveries: the mechanistic
term over the behavioural one, ``undefined`` when the behavioural term is 0), followed by
``REGRESSION=TERM:VALUE`` for every behavioural term significantly below zero. Exit status: 0 on success, 2 for a bad flag or
config field, 1 when a checkpoint cannot be loaded or the pair cannot be patched.
"""

from __future__ import annotations

import argparse
import logging
import sys

QUICK = dict(n_problems=8, counterfactual_n=4, behaviour_n=4, n_boot=200, max_new_tokens=24)
"""``--quick``: a seconds-long smoke run on small models."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m probes.patch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pre", metavar="DIR", help="the checkpoint before RL (recipient of the selection score)")
    ap.add_argument("--post", metavar="DIR", help="the checkpoint after RL")
    ap.add_argument("--out", metavar="DIR", help="output folder for patching.json and figures")
    ap.add_argument("--config", metavar="FILE.yaml", help="a patching config (fields of PatchingConfig)")
    ap.add_argument("--quick", action="store_true", help="a small, seconds-long run (%s)" % QUICK)
    ap.add_argument("--n-problems", type=int, help="held-out problems to patch (default 32; drawn as the behaviour "
                    "stage draws them)")
    ap.add_argument("--steps", type=int, nargs="+", help="chain lengths of the problems (default 3)")
    ap.add_argument("--seed", type=int, help="problem and bootstrap seed (default 0)")
    ap.add_argument("--hooks", nargs="+", help="block hooks of the recovery curves")
    ap.add_argument("--counterfactual-n", type=int, help="counterfactual pairs (0: skip; default 16)")
    ap.add_argument("--behaviour-n", type=int, help="problems of the behavioural check (0: skip; default 16)")
    ap.add_argument("--max-new-tokens", type=int, help="generation budget of the behavioural check")
    ap.add_argument("--n-boot", type=int, help="bootstrap replicates (default 1000)")
    ap.add_argument("--backend", help="activation backend: nnsight (default) or bridge")
    ap.add_argument("--dtype", help="float32 (default), bfloat16, float16, float64")
    ap.add_argument("--device", help="cpu (default), cuda:0, ...")
    ap.add_argument("--max-rows", type=int, help="rows per forward pass of a batched sweep (default 256)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    ap.add_argument("--task", metavar="MODULE:NAME", default=None,
                    help="the task (probes.tasks; default: the finite-field task of the shipped organism)")
    return ap


def _fmt(score: dict) -> str:
    v = score["value"]
    if v is None:
        return "undefined"
    ci = score["ci"]
    return f"{v:.3f}" + (f"[{ci[0]:.3f},{ci[1]:.3f}]" if ci else "")


def main(argv: list[str] | None = None) -> int:
    from probes.tasks import run_with_task

    ap = build_parser()
    args = ap.parse_args(argv)
    return run_with_task(args.task, lambda: _main(ap, args))


def _main(ap, args) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from pydantic import ValidationError

    from activations.load import CheckpointError
    from activations.pair import PairMismatchError
    from probes.patching.config import PatchingConfig
    from probes.patching.pipeline import RESULTS_FILE, run_patching

    fields = {k: getattr(args, k) for k in ("pre", "post", "out", "n_problems", "steps", "seed", "hooks",
                                            "counterfactual_n", "behaviour_n", "max_new_tokens", "n_boot",
                                            "backend", "dtype", "device", "max_rows")}
    base = dict(QUICK) if args.quick else {}
    try:
        if args.config:
            cfg = PatchingConfig.from_yaml(args.config, **{**base, **fields})
        else:
            missing = [f"--{k}" for k in ("pre", "post", "out") if fields[k] is None]
            if missing:
                ap.error(f"missing {', '.join(missing)} (or give them in --config)")
            cfg = PatchingConfig(**{**base, **{k: v for k, v in fields.items() if v is not None}})
    except (ValidationError, ValueError, OSError) as e:
        print(f"probes.patch: bad configuration: {e}", file=sys.stderr)
        return 2
    try:
        results = run_patching(cfg)
    except (CheckpointError, PairMismatchError) as e:
        print(f"probes.patch: {e}", file=sys.stderr)
        return 1
    v = results["verdict"]
    print(f"wrote {cfg.out}/{RESULTS_FILE} and {len(results['figures'])} figures")
    if v is None:  # a task without canonical responses: nothing patched
        print(f"patching skipped: {results['skipped']['all']}")
        return 0
    print(f"verdict={v['label']} selection={_fmt(v['selection']['recovery'])} "
          f"improvement={_fmt(v['improvement']['recovery'])}"
          + "".join(f" REGRESSION={r['term']}:{r['mean']:+.3f}" for r in v["regressions"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
