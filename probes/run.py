"""``python -m probes.run``: the main job (what RL changed: strategy selection or improvement).

Stages, each writing into the run folder ``runs/NAME/`` so that any of them can be rerun,
resumed or inspected on its own (see DESIGN.md, "The pipeline"):

  1. behaviour   responses of the pre-RL and post-RL checkpoints on held-out problems;
                 strategy shares, accuracy, and the decomposition
                 delta = selection + improvement (+ interaction)
  2. cache       activations at named sites (``blocks.{l}.hook_resid_post``, ...) and
                 positions (``prompt_end``, ``steps``) streamed to disk
  3. probes      linear probes for the strategy about to be used, with controls
  4. patching    cross-model activation patching (CMAP) of routing and execution,
                 counterfactual and attribution patching
  5. verdict     selection and improvement scores with CIs, the label, the report

This release implements the task (``python -m probes.task``) and the model organism's
training (``python -m probes.train``); the stages above land with their issues, and until
then this command says which stage is missing rather than pretending to run it.
"""

from __future__ import annotations

import argparse
import sys

STAGES = ("behaviour", "cache", "probes", "patching", "verdict")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m probes.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--pre-rl", metavar="DIR", help="the checkpoint before RL (default: the shipped FB-SFT organism)")
    ap.add_argument("--post-rl", metavar="DIR", help="the checkpoint after RL (default: the shipped harder-RL organism)")
    ap.add_argument("--config", metavar="FILE.yaml", help="a run config (overrides the defaults)")
    ap.add_argument("--out", metavar="DIR", help="the run folder (default: runs/NAME)")
    ap.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    ap.add_argument("--grid", action="store_true", help="run every shipped pair and tabulate them")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(
        f"probes.run: stage {args.stages[0]!r} is not implemented in this release "
        "(see README.md, 'Status'); nothing was run.",
        file=sys.stderr,
    )
    return 3


if __name__ == "__main__":
    sys.exit(main())
