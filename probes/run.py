"""``python -m probes.run``: what did RL change, strategy selection or strategy improvement?

Runs the pipeline on a pre-RL and a post-RL checkpoint (default: the shipped organism pair)
and writes a run folder (``runs/NAME``); prints the verdict and the report's path. Stages,
each reading and writing only the run folder (README.md, "The main job"):

  1. behaviour  responses of both checkpoints on held-out problems; strategy shares, accuracy,
                and the decomposition delta = selection + improvement (Shapley split)
  2. cache      activations at every layer's hook_resid_post at prompt_end and the task's prompt
                slots (words:i), streamed to disk
  3. probes     linear probes for the strategy about to be used, with controls and steering
  4. patching   cross-model activation patching (CMAP) of routing and execution,
                counterfactual and attribution patching, and the patching verdict
  5. verdict    results.json, report.md, report.html and figures/

Rerunning the same command reuses finished stages (their input hash: config, checkpoint
weights and upstream outputs) and resumes an interrupted one.

``--grid`` runs every shipped pair (discovered from the checkpoints' cards, ``probes.grid``),
each into its own subfolder, and adds the table across pairs (``grid.md``, ``grid.json`` and a
report). A bad argument is a one-line ``error:`` on stderr and exit status 2.

Real scale (README, "Real scale"): ``--config configs/qwen2.5-1.5b-instruct.yaml`` for
Qwen2.5-1.5B-Instruct checkpoints; ``--device-map auto`` shards each model over the visible GPUs
(accelerate); ``--remote`` asks for nnsight on NDIF and stops at once, in one line, without an
API key or a connection. Every stage loads its models with the run's dtype, device, device map
and remote (``activations.load.load_options``). Each stage's line on stderr gives its time and
the process's peak RSS so far.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from probes.checks import (check_checkpoints, check_dims, check_patching_overrides, check_scope, check_task, fail,
                           quick_at_scale)
from probes.pipeline import run_pipeline
from probes.results import verdict_lines
from probes.runconfig import DEVICE_MAPS
from probes.runfolder import read_results, write_json
from probes.stages import STAGE_NAMES

DEFAULT_GRID_ROOT = "checkpoints/organism"



class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see python -m probes.run --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m probes.run", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pre-rl", metavar="DIR", help="the checkpoint before RL (default: the shipped organism's SFT)")
    ap.add_argument("--post-rl", metavar="DIR", help="the checkpoint after RL (default: the shipped organism's RL)")
    ap.add_argument("--config", metavar="FILE.yaml", help="a run config (fields of probes.runconfig.RunConfig)")
    ap.add_argument("--out", metavar="DIR", help="the run folder (default: runs/NAME)")
    ap.add_argument("--name", help="the run's name (default: main, or quick with --quick)")
    ap.add_argument("--quick", action="store_true", help="a seconds-long smoke run (at real scale, "
                    "1e8+ parameters, patching is trimmed further: probes.runconfig.QUICK_AT_SCALE)")
    ap.add_argument("--device-map", choices=DEVICE_MAPS, default=None,
                    help="shard each model over the visible GPUs with accelerate (from_pretrained device_map)")
    ap.add_argument("--remote", action="store_true", default=None,
                    help="run the models on NDIF through nnsight (needs NDIF_API_KEY and the network; checked first)")
    ap.add_argument("--chat", action="store_true", default=None,
                    help="wrap the task prompt in the checkpoints' chat template (instruct checkpoints trained on "
                         "chat messages, data.chat: true)")
    ap.add_argument("--grid", nargs="?", const=DEFAULT_GRID_ROOT, metavar="ROOT",
                    help="run every pre-RL/post-RL pair whose RL checkpoint's card names its SFT init, under ROOT "
                         f"(default {DEFAULT_GRID_ROOT}), and add the table across pairs (default --out runs/grid)")
    ap.add_argument("--task", metavar="MODULE:NAME",
                    help="the task (probes.tasks; default the finite-field task of the shipped organism, "
                         "probes.task.adapter:FiniteFieldTask); a task of your own needs --pre-rl and --post-rl")
    ap.add_argument("--stages", nargs="+", choices=STAGE_NAMES, default=list(STAGE_NAMES), help="stages to run (default: all)")
    ap.add_argument("--force", action="store_true", help="rerun the chosen stages even if finished")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="log at INFO and keep the libraries' progress bars and warnings (transformers' weight loading)")
    return ap


def resolve_config(args: argparse.Namespace):
    """The validated run config from the flags and ``--config``.

    Raises:
        SystemExit: (status 2) after a one-line ``error:`` naming the bad flag, file or field.
    """
    import yaml
    from pydantic import ValidationError

    from probes.runconfig import QUICK, RunConfig

    if args.grid and (args.pre_rl or args.post_rl):
        fail("error: --grid runs every shipped pair; it takes no --pre-rl/--post-rl")
    if not args.config and bool(args.pre_rl) != bool(args.post_rl):
        fail("error: --pre-rl and --post-rl go together (give both, or neither for the shipped pair)")
    over = {"pre_rl": args.pre_rl, "post_rl": args.post_rl, "out": args.out, "name": args.name, "task": args.task,
            "device_map": getattr(args, "device_map", None), "remote": getattr(args, "remote", None),
            "chat": getattr(args, "chat", None)}
    base = dict(QUICK, name="quick") if args.quick else {}
    try:
        if args.config:
            cfg = RunConfig.from_yaml(args.config, **{**base, **over})
        else:
            cfg = RunConfig(**{**base, **{k: v for k, v in over.items() if v is not None}})
    except FileNotFoundError:
        fail(f"error: --config {args.config}: no such file")
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as e:
        fail(f"error: --config {args.config}: not a readable YAML file ({type(e).__name__})")
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        fail(f"error: --config {args.config}: not valid YAML{at} ({getattr(e, 'problem', None) or e})")
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(map(str, first["loc"])) or "(top level)"
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = f"unknown field; the fields are {', '.join(RunConfig.model_fields)}"
        fail(f"error: invalid run config field {field}: {msg}")
    except ValueError as e:
        fail(f"error: --config {args.config}: {e}")
    check_task(cfg, explicit_pair=bool(args.pre_rl) or bool(args.config), grid=bool(args.grid))
    check_scope(cfg)
    if cfg.folder.exists() and not cfg.folder.is_dir():
        fail(f"error: --out {cfg.folder} is a file, not a run folder")
    check_patching_overrides(cfg)
    if not args.grid:
        check_checkpoints(cfg.pre_rl, cfg.post_rl, chat=cfg.chat, task=cfg.task)
        check_dims(cfg)
        if args.quick:
            cfg = quick_at_scale(cfg)
    return cfg


def run_grid(args, cfg) -> int:
    """``--grid``: every discovered pair into ``GRID/NAME``, then ``grid.json``, ``grid.md`` and the report."""
    from probes.grid import discover_pairs, grid_markdown, grid_results, grid_row
    from activations.io import atomic_write_text

    pairs = discover_pairs(args.grid)
    out = args.out or cfg.out  # --out, else the config's out, else runs/grid (runs/grid-quick with --quick)
    grid_dir = Path(out) if out else Path("runs") / (args.name or ("grid-quick" if args.quick else "grid"))
    grid_dir.mkdir(parents=True, exist_ok=True)
    print(f"grid: {len(pairs)} pair(s) under {args.grid}: " + ", ".join(f"{p.sft} -> {p.name}" for p in pairs),
          file=sys.stderr)
    for p in pairs:
        check_checkpoints(p.pre_rl, p.post_rl, chat=cfg.chat)
    rows, lines = [], []
    for p in pairs:
        pcfg = cfg.model_copy(update={"pre_rl": p.pre_rl, "post_rl": p.post_rl, "out": str(grid_dir / p.name),
                                      "name": p.name})
        run = run_pipeline(pcfg, args.stages, args.force, prefix=f"[{p.name}] ")
        if not (run.root / "results.json").exists():
            lines.append(f"{p.name}: no results.json (run the verdict stage)")
            continue
        rows.append(grid_row(p, read_results(run.root)))
        lines += [f"{p.sft} -> {p.name}"] + ["  " + x for x in verdict_lines(run)]
    write_json(grid_dir / "grid.json", grid_results(rows, args.grid))
    table = grid_markdown(rows)
    atomic_write_text(grid_dir / "grid.md", table + "\n")
    from probes.reporting.grid import write_grid_report

    _, html = write_grid_report(grid_dir)
    print("\n".join(lines))
    print(table)
    print(f"report: {html}")
    return 0


def quiet_libraries() -> None:
    """The console shows the stages, not the libraries: transformers' weight-loading bars and its
    info and warning messages are off (``-v`` keeps them)."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if not args.verbose:
        quiet_libraries()
    cfg = resolve_config(args)
    from activations.load import CheckpointError
    from activations.pair import PairMismatchError
    from activations.batch import ChatTemplateError, EndTokenError
    from activations.store import StoreError
    from probes.grid import GridError
    from probes.runfolder import RunFolderError

    from activations.load import load_options

    try:
        # every stage loads its models with the run's dtype, device, device_map and remote
        with load_options(dtype=cfg.dtype, device=cfg.device, device_map=cfg.device_map, remote=cfg.remote):
            if args.grid:
                return run_grid(args, cfg)
            run = run_pipeline(cfg, args.stages, args.force)
    except (GridError, CheckpointError, PairMismatchError, StoreError, ChatTemplateError, EndTokenError,
            RunFolderError) as e:
        fail(f"error: {e}")  # ChatTemplateError: --grid --chat with a pair whose tokenizer has no template
    if (run.root / "results.json").exists():
        print("\n".join(verdict_lines(run)))
        print(f"report: {run.root / 'report.html'}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
