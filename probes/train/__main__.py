"""``python -m probes.train sft|grpo|grid --config FILE``: train the organism, resumably.

Each stage saves intermediate checkpoints under ``OUT/_work`` and resumes from the newest on
a rerun; a finished stage (``OUT/card.json`` present) is skipped unless ``--force``.

``grid --jobs N`` runs the grid's stages N CPU threads at a time, each in its own process: a
stage waits for the stage whose ``out`` is its ``init``, and occupies as many of the N slots as
its ``optim.threads`` (1 when unset); among the stages ready to start, the one heading the longest
chain of stages goes first. Each stage's output goes to ``LOG_DIR/NAME.log``; a failed
stage's dependents are not started, the others run on, and the exit status is 1. ``--jobs 1``
(the default) runs the stages one after another in this process, in the listed order.

``grid`` skips an unfinished stage that nothing needs: every stage made from it, directly or further
down, is finished. A clone with the shipped checkpoints lacks the intermediate SFT phases
(gitignored) but has all that was made from them, so ``grid`` there trains nothing. ``--force``
retrains every stage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from probes.train.config import GridConfig, TrainConfig, load_config  # noqa: F401
from probes.train.runner import (finished_stages, run_grid_parallel, run_stage, stages_listed_before_their_init,
                                 stages_not_needed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m probes.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["sft", "grpo", "grid"])
    ap.add_argument("--config", required=True, help="YAML config (a stage, or a grid listing stage files)")
    ap.add_argument("--force", action="store_true", help="retrain a finished stage")
    ap.add_argument("--jobs", type=int, default=1,
                    help="grid only: CPU threads to fill with concurrent stages (each in its own process; default 1: "
                         "one stage after another)")
    ap.add_argument("--log-dir", default="runs/train-logs", help="grid --jobs > 1: one NAME.log per stage")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
    except FileNotFoundError:
        ap.error(f"no such config file: {args.config}")
    except ValidationError as e:
        ap.error(f"invalid config {args.config}:\n{e}")
    if args.command == "grid":
        if not isinstance(cfg, GridConfig):
            ap.error(f"{args.config} is a stage config; `grid` needs a file with `stages:`")
        if args.jobs < 1:
            ap.error(f"--jobs must be at least 1, got {args.jobs}")
        base = Path(args.config).parent
        stages = []
        for stage_file in cfg.stages:
            path = Path(stage_file) if Path(stage_file).exists() else base / stage_file
            try:
                stages.append((path, load_config(path)))
            except FileNotFoundError:
                ap.error(f"{args.config} lists {stage_file}, which is not a file (looked in . and {base})")
            except ValidationError as e:
                ap.error(f"invalid stage config {path}:\n{e}")
        if not args.force:
            finished = finished_stages(stages)
            idle = set(stages_not_needed(stages, finished))
            for _, c in stages:
                if c.name in idle:
                    print(f"skipping {c.name}: its output is missing, but every stage made from it is finished", flush=True)
                elif c.name in finished:
                    print(f"skipping {c.name}: finished ({c.out}/card.json present; --force retrains)", flush=True)
            stages = [(p, c) for p, c in stages if c.name not in idle | finished]
        if args.jobs > 1:
            try:
                return run_grid_parallel(stages, args.jobs, Path(args.log_dir), args.force)
            except ValueError as e:
                ap.error(str(e))
        early = stages_listed_before_their_init(stages)
        if early:
            ap.error(f"{args.config} lists " + "; ".join(f"{a} before {b}, the stage it starts from" for a, b in early)
                     + ": move them below it (or use --jobs 2, which orders stages by what they start from)")
        for _, stage_cfg in stages:
            run_stage(stage_cfg, args.force)
        return 0
    if not isinstance(cfg, TrainConfig) or cfg.stage != args.command:
        ap.error(f"{args.config} is not a `{args.command}` stage config")
    run_stage(cfg, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
