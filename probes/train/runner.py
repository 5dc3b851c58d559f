"""Running training stages and grids, as a library: a stage by its config (:func:`run_stage`), the
order of a grid's stages and which are needed, and the parallel grid runner
(:func:`run_grid_parallel`). ``python -m probes.train`` (:mod:`probes.train.__main__`) is its
command line; its docstring says how grids run.
"""


from __future__ import annotations

import sys
from pathlib import Path

from probes.train.config import TrainConfig


def run_stage(cfg: TrainConfig, force: bool) -> None:
    """Run one stage; a tokenizer without an end token SFT can teach and generation stop at is one
    ``error:`` line and exit status 2 (:class:`activations.batch.EndTokenError`)."""
    from activations.batch import EndTokenError

    try:
        if cfg.stage == "sft":
            from probes.train.sft import run_sft

            run_sft(cfg, force=force)
        else:
            from probes.train.grpo import run_grpo

            run_grpo(cfg, force=force)
    except EndTokenError as e:
        print(f"error: {cfg.name}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _stage_needs(stages: list[tuple[Path, TrainConfig]]) -> dict[str, str | None]:
    """For each stage name, the name of the listed stage that produces its ``init`` (None when
    its ``init`` is not made by the grid, e.g. a base model on disk)."""
    by_out = {Path(c.out).resolve(): c.name for _, c in stages}
    return {c.name: by_out.get(Path(c.init).resolve()) if c.init else None for _, c in stages}


def _stage_children(needs: dict[str, str | None]) -> dict[str, list[str]]:
    """For each stage name, the stages that start from its output (itself excluded)."""
    children: dict[str, list[str]] = {name: [] for name in needs}
    for name, dep in needs.items():
        if dep is not None and dep != name:
            children[dep].append(name)
    return children


def stages_listed_before_their_init(stages: list[tuple[Path, TrainConfig]]) -> list[tuple[str, str]]:
    """(stage, the stage it starts from) for each stage listed above the stage that makes its
    ``init``: run one after another in the listed order, such a stage would find no model."""
    needs = _stage_needs(stages)
    seen: set[str] = set()
    early = []
    for _, c in stages:
        dep = needs[c.name]
        if dep is not None and dep != c.name and dep not in seen:
            early.append((c.name, dep))
        seen.add(c.name)
    return early


def stages_not_needed(stages: list[tuple[Path, TrainConfig]], finished: set[str] | None = None) -> list[str]:
    """Names of the unfinished stages that nothing needs: every stage that starts from one, directly
    or further down, is finished (like make's intermediate files). A clone with the shipped
    checkpoints lacks the intermediate SFT phases (gitignored) but has everything made from them;
    rebuilding those phases there would cost hours and change nothing. ``finished``: the names of
    the finished stages (default: those whose ``out`` holds a final model, ``is_finished``)."""
    if finished is None:
        finished = finished_stages(stages)
    children = _stage_children(_stage_needs(stages))
    memo: dict[str, bool] = {}

    def must_run(name: str) -> bool:  # unfinished, and a final stage or the start of one that must run
        if name not in memo:
            memo[name] = False  # placeholder while recursing: a cycle makes nothing needed (cycles are refused later)
            memo[name] = name not in finished and (not children[name] or any(must_run(k) for k in children[name]))
        return memo[name]

    return [c.name for _, c in stages if c.name not in finished and not must_run(c.name)]


def finished_stages(stages: list[tuple[Path, TrainConfig]]) -> set[str]:
    from probes.train.checkpoint import is_finished

    return {c.name for _, c in stages if is_finished(Path(c.out))}


def _stage_command(path: Path, cfg: TrainConfig, force: bool) -> list[str]:
    return [sys.executable, "-m", "probes.train", cfg.stage, "--config", str(path)] + (["--force"] if force else [])


def run_grid_parallel(stages: list[tuple[Path, TrainConfig]], jobs: int, log_dir: Path, force: bool = False,
                      poll_s: float = 2.0, command=_stage_command) -> int:
    """Run the stages as subprocesses, ``jobs`` CPU threads' worth at a time (see the module
    docstring). ``command(path, cfg, force)`` gives a stage's argv (default: ``python -m
    probes.train STAGE --config PATH``). Returns 0 when every stage finished, else 1.

    Raises:
        ValueError: a stage needs more threads than ``jobs``, two stages share a name, or stages
            wait on each other (a stage that starts from its own output, or a cycle).
    """
    import os
    import subprocess
    import time

    names = [c.name for _, c in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names repeat in the grid: {names}")
    cost = {c.name: max(1, c.optim.threads or 1) for _, c in stages}
    too_big = [n for n, k in cost.items() if k > jobs]
    if too_big:
        raise ValueError(f"stages {too_big} need more threads than --jobs {jobs}: raise --jobs or lower optim.threads")
    needs = _stage_needs(stages)
    children = _stage_children(needs)
    if any(needs[nm] == nm for nm in names):
        raise ValueError("a grid stage starts from its own output: " + ", ".join(nm for nm in names if needs[nm] == nm))
    log_dir.mkdir(parents=True, exist_ok=True)

    def chain(name: str, seen=()) -> int:  # stages in the longest chain that starts with this one
        if name in seen:
            raise ValueError(f"grid stages wait on each other in a cycle through {name}")
        return 1 + max((chain(m, seen + (name,)) for m in children[name]), default=0)

    # longest remaining chain first (ties in the listed order): the SFT lines with the most phases
    # start at once, and the RL stages fill the slots at the end
    pending = sorted(stages, key=lambda st: -chain(st[1].name))
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    done, failed = set(), set()
    n = len(stages)
    while pending or running:
        for name, (proc, t0, fh) in list(running.items()):
            if proc.poll() is None:
                continue
            fh.close()
            del running[name]
            (done if proc.returncode == 0 else failed).add(name)
            status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; see {log_dir / name}.log)"
            print(f"[{len(done) + len(failed)}/{n}] {name} {status} in {time.time() - t0:.0f} s", flush=True)
        for path, c in list(pending):
            dep = needs[c.name]
            if dep in failed:
                pending.remove((path, c))
                failed.add(c.name)
                print(f"[{len(done) + len(failed)}/{n}] {c.name} not started: {dep} failed", flush=True)
                continue
            free = jobs - sum(cost[r] for r in running)
            if (dep is None or dep in done) and cost[c.name] <= free:
                pending.remove((path, c))
                fh = open(log_dir / f"{c.name}.log", "a")
                env = {**os.environ, "OMP_NUM_THREADS": str(cost[c.name])}
                running[c.name] = (subprocess.Popen(command(path, c, force), stdout=fh, stderr=subprocess.STDOUT, env=env), time.time(), fh)
                print(f"started {c.name} ({cost[c.name]} thread(s); log {log_dir / c.name}.log)", flush=True)
        if running:  # cycles were refused when ordering, so with nothing running something can start
            time.sleep(poll_s)
    if failed:
        print(f"grid: {len(failed)} stage(s) did not finish: {sorted(failed)}", flush=True)
    return 1 if failed else 0
