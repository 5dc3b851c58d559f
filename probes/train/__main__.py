"""``python -m probes.train sft|grpo|grid --config FILE``: train the organism, resumably.

Each stage saves intermediate checkpoints under ``OUT/_work`` and resumes from the newest on
a rerun; a finished stage (``OUT/card.json`` present) is skipped unless ``--force``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from probes.train.config import GridConfig, TrainConfig, load_config


def _run_stage(cfg: TrainConfig, force: bool) -> None:
    if cfg.stage == "sft":
        from probes.train.sft import run_sft

        run_sft(cfg, force=force)
    else:
        from probes.train.grpo import run_grpo

        run_grpo(cfg, force=force)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m probes.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["sft", "grpo", "grid"])
    ap.add_argument("--config", required=True, help="YAML config (a stage, or a grid listing stage files)")
    ap.add_argument("--force", action="store_true", help="retrain a finished stage")
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
        base = Path(args.config).parent
        for stage_file in cfg.stages:
            path = Path(stage_file) if Path(stage_file).exists() else base / stage_file
            _run_stage(load_config(path), args.force)
        return 0
    if not isinstance(cfg, TrainConfig) or cfg.stage != args.command:
        ap.error(f"{args.config} is not a `{args.command}` stage config")
    _run_stage(cfg, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
