"""The stages of ``python -m probes.run``, each reading and writing only the run folder.

behaviour -> cache -> probes -> patching -> verdict (report). Each stage function takes the
resolved :class:`~probes.runconfig.RunConfig` and the :class:`~probes.runfolder.RunFolder`
and returns a dict of what it wrote (relative paths and a few headline numbers).
"""

from __future__ import annotations

import logging

from probes.runconfig import RunConfig
from probes.runfolder import RunFolder, read_json, write_json

log = logging.getLogger(__name__)

STAGES = ("behaviour", "cache", "probes", "patching", "verdict")


def run_problems(run: RunFolder) -> list:
    """The run's held-out problems (``problems.jsonl``, written by the behaviour stage), in order.

    Raises:
        RunFolderError: a line that is not a problem (the file is corrupt: rerun the behaviour
            stage with ``--force``).
    """
    from probes.runfolder import RunFolderError
    from activations.io import LineError, read_jsonl
    from probes.task.problems import Problem

    out = []
    for line, rec in read_jsonl(run.path("problems.jsonl")):
        try:
            if isinstance(rec, LineError):
                raise ValueError(str(rec))
            out.append(Problem.from_dict(rec))
        except (ValueError, KeyError, TypeError) as e:
            raise RunFolderError(f"{run.path('problems.jsonl')} line {line} is not a problem ({e}); rerun the "
                                 "behaviour stage: python -m probes.run ... --stages behaviour --force") from None
    return out


def behaviour(cfg: RunConfig, run: RunFolder) -> dict:
    """Both checkpoints' behaviour on the held-out problems and the decomposition
    (``behaviour/behaviour.json``, responses in ``behaviour/behaviour.{model,reference}.jsonl``)."""
    from probes.behaviour.pipeline import held_out_problems, run_behaviour
    from probes.behaviour.evaluate import BehaviourSettings
    from activations.io import write_jsonl

    problems = held_out_problems(cfg.n_problems, cfg.seed, tuple(cfg.steps))
    write_jsonl(run.path("problems.jsonl"), [p.to_dict() for p in problems])
    settings = BehaviourSettings(n_samples=cfg.samples, n_forced=cfg.forced, batch_size=cfg.batch_size, seed=cfg.seed,
                                chat=cfg.chat, forced_method=cfg.forced_accuracy)
    res = run_behaviour(cfg.post_rl, cfg.pre_rl, problems, settings, n_boot=cfg.n_boot,
                       responses_out=run.path("behaviour", "behaviour.json"))
    res["settings"].update({"n": cfg.n_problems, "steps": cfg.steps, "problem_seed": cfg.seed})
    write_json(run.path("behaviour", "behaviour.json"), res)
    return {"behaviour": "behaviour/behaviour.json", "delta": res["decomposition"]["pooled"]["delta"],
            "problems": [p.id for p in problems]}


def cache_positions(cfg: RunConfig) -> str:
    """What the cache stage stores: ``probe_position`` and the task's prompt slots (the probes'
    position x layer map, :data:`probes.task.problems.MAP_POSITIONS`)."""
    from probes.task.problems import MAP_POSITIONS

    return f"{cfg.probe_position} {MAP_POSITIONS}"


def cache(cfg: RunConfig, run: RunFolder) -> dict:
    """Activations of both checkpoints at every layer's ``probe_hook`` at ``probe_position`` and
    the prompt slots (:func:`cache_positions`; ``store/pre``, ``store/post``), in chunks of ``cache_chunk`` problems; an interrupted store
    resumes from its finished chunks (``activations.store.StoreWriter``)."""
    from activations.backends import make_backend
    from activations.cache import cache_activations, read_records
    from activations.load import load_checkpoint

    records = read_records(run.path("problems.jsonl"))
    out = {}
    for role, src in (("pre", cfg.pre_rl), ("post", cfg.post_rl)):
        root = run.path("store", role)
        finished = sorted((root / "chunks").glob("*.json")) if (root / "chunks").exists() else []
        if finished:
            log.warning("cache %s: %d finished chunk(s) on disk from an earlier attempt; reused if made from the same "
                        "inputs", role, len(finished))
        ckpt = load_checkpoint(src, dtype=cfg.dtype, device=cfg.device)
        backend = make_backend(cfg.backend, ckpt)
        store = cache_activations(backend, records, f"blocks.*.{cfg.probe_hook}", cache_positions(cfg),
                                  root, batch_size=cfg.batch_size, chunk_size=cfg.cache_chunk, chat=cfg.chat,
                                  overwrite=True)  # a store from other inputs is stale: this stage's hash changed
        out[role] = {"dir": f"store/{role}", "rows": store.n_rows, "chunks": store.manifest["n_chunks"],
                     "resumed_chunks": len(finished)}
    out["problems"] = [r.id for r in records]
    return out


def probes(cfg: RunConfig, run: RunFolder) -> dict:
    """Linear probes on both stores (``probes/probes.json`` and figures)."""
    import shutil

    from probes.probing.report import probe_report
    from probes.probing.sweep import ProbeConfig

    shutil.rmtree(run.path("probes", "figures", "x").parent, ignore_errors=True)  # no stale figure of an earlier run
    res = probe_report(
        str(run.root / "store" / "pre"), str(run.root / "store" / "post"),
        str(run.root / "behaviour" / "behaviour.reference.jsonl"), str(run.root / "behaviour" / "behaviour.model.jsonl"),
        run.path("probes"), models=(cfg.pre_rl, cfg.post_rl), hook=cfg.probe_hook, position=cfg.probe_position,
        config=ProbeConfig(n_boot=cfg.n_boot, seed=cfg.seed), steer_n=cfg.steer_n, steer_generate=cfg.steer_generate,
        targets=tuple(cfg.probe_targets),
        chat=cfg.chat,
    )
    return {"probes": "probes/probes.json", "targets": sorted(res.get("models", {}).get("pre", {}).keys())
            if isinstance(res.get("models"), dict) else [],
            "problems": [p.id for p in run_problems(run)]}


def patching(cfg: RunConfig, run: RunFolder) -> dict:
    """Cross-model (the mechanistic decomposition), counterfactual and attribution patching on a
    stratified subset of the run's problems (``patching/patching.json``)."""
    from probes.patching.config import PatchingConfig
    from probes.patching.pipeline import run_patching
    from probes.runconfig import PATCHING_PROBLEMS
    problems = run_problems(run)
    pc = PatchingConfig(**{"pre": cfg.pre_rl, "post": cfg.post_rl, "out": str(run.path("patching", "x").parent),
                           "seed": cfg.seed, "backend": cfg.backend, "dtype": cfg.dtype, "device": cfg.device,
                           "chat": cfg.chat, "n_problems": PATCHING_PROBLEMS,
                           **cfg.patching})
    res = run_patching(pc, problems)
    return {"patching": "patching/patching.json", "verdict": res.get("verdict", {}).get("label"),
            "problems": res["problems"]["cmap"]}


def load_stage_outputs(run: RunFolder) -> dict:
    """Everything the stages wrote, for the verdict and the report."""
    out = {"behaviour": read_json(run.root / "behaviour" / "behaviour.json")}
    for name, rel in (("probes", "probes/probes.json"), ("patching", "patching/patching.json")):
        p = run.root / rel
        out[name] = read_json(p) if p.exists() else None
    return out
