"""The stages of ``python -m probes.run`` as objects, each reading and writing only the run folder.

behaviour -> cache -> probes -> patching -> verdict (report). :data:`STAGES` is the one list: the
command line (``--stages``), the resume logic (:func:`stage_hashes`, :func:`probes.pipeline.run_pipeline`)
and the grid read it. A :class:`Stage` names the stages whose outputs it reads, the settings it
hashes, what it writes, and the function that runs it: ``run(cfg, run_folder) -> dict`` of what it
wrote (relative paths and a few headline numbers), recorded in its marker.

Adding a stage is one :class:`Stage` in :data:`STAGES` (after every stage it reads).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from activations.hashing import checkpoint_sha256, sha256_json
from probes.runconfig import RunConfig
from probes.runfolder import RESULTS_SCHEMA_VERSION, RunFolder, read_json, write_json

log = logging.getLogger(__name__)

PATCHING_ENGINE = 2
"""Bumped when the patching stage's numbers change for the same inputs (2: the mechanistic
decomposition on the run's problems), so that older patching stages rerun."""

PROBES_ENGINE = 2
"""Likewise for the probes stage (2: the within-type propensity map, Newton-fitted logistic probes,
the prompt slots in the cache), so that older probe stages rerun."""


CHECKPOINT_FILES: tuple[str, ...] = (
    "*.safetensors", "*.bin", "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
)
"""The files of a checkpoint directory a stage reads when it loads the model and its tokenizer
(weights, the architecture, every tokenizer file with its special tokens and chat template).
``generation_config.json`` is not among them: generation ignores its sampling settings."""



def checkpoint_id(path: str) -> str:
    """The identity of a checkpoint for stage hashes: sha256 over the name and bytes of every file
    of :data:`CHECKPOINT_FILES` it has (a Hub id or a missing directory: the string itself)."""
    return checkpoint_sha256(path, CHECKPOINT_FILES)



def run_problems(run: RunFolder) -> list:
    """The run's held-out problems (``problems.jsonl``, written by the behaviour stage), in order.

    Raises:
        RunFolderError: a line that is not a problem (the file is corrupt: rerun the behaviour
            stage with ``--force``).
    """
    from probes.runfolder import RunFolderError
    from activations.io import LineError, read_jsonl
    from probes.tasks import current_task

    task = current_task()
    out = []
    for line, rec in read_jsonl(run.path("problems.jsonl")):
        try:
            if isinstance(rec, LineError):
                raise ValueError(str(rec))
            out.append(task.problem_from_dict(rec))
        except (ValueError, KeyError, TypeError) as e:
            raise RunFolderError(f"{run.path('problems.jsonl')} line {line} is not a problem ({e}); rerun the "
                                 "behaviour stage: python -m probes.run ... --stages behaviour --force") from None
    return out


def run_behaviour_stage(cfg: RunConfig, run: RunFolder) -> dict:
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
                       responses_out=run.path("behaviour", "behaviour.json"), cache_dir=cfg.behaviour_cache)
    res["settings"].update({"n": cfg.n_problems, "steps": cfg.steps, "problem_seed": cfg.seed})
    write_json(run.path("behaviour", "behaviour.json"), res)
    return {"behaviour": "behaviour/behaviour.json", "delta": res["decomposition"]["pooled"]["delta"],
            "problems": [p.id for p in problems]}


def cache_positions(cfg: RunConfig) -> str:
    """What the cache stage stores: ``probe_position`` and the task's prompt slots (the probes'
    position x layer map; the task's ``prompt_slots`` as ``words:i,...``, none without them)."""
    from probes.tasks import load_task

    slots = getattr(load_task(cfg.task), "prompt_slots", None) or ()
    return f"{cfg.probe_position} words:" + ",".join(str(i) for _, i in slots) if slots else cfg.probe_position


def run_cache_stage(cfg: RunConfig, run: RunFolder) -> dict:
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


def run_probes_stage(cfg: RunConfig, run: RunFolder) -> dict:
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


def run_patching_stage(cfg: RunConfig, run: RunFolder) -> dict:
    """Cross-model (the mechanistic decomposition), counterfactual and attribution patching on a
    stratified subset of the run's problems (``patching/patching.json``)."""
    from probes.patching.config import PatchingConfig
    from probes.patching.pipeline import run_patching
    from probes.runconfig import PATCHING_PROBLEMS

    for stale in run.path("patching", "x").parent.glob("*.png"):  # no figure of an earlier run in the report
        stale.unlink()
    problems = run_problems(run)
    pc = PatchingConfig(**{"pre": cfg.pre_rl, "post": cfg.post_rl, "out": str(run.path("patching", "x").parent),
                           "seed": cfg.seed, "backend": cfg.backend, "dtype": cfg.dtype, "device": cfg.device,
                           "chat": cfg.chat, "n_problems": PATCHING_PROBLEMS,
                           **cfg.patching})
    res = run_patching(pc, problems)
    return {"patching": "patching/patching.json", "verdict": (res.get("verdict") or {}).get("label"),
            "problems": res["problems"]["cmap"]}


def load_stage_outputs(run: RunFolder) -> dict:
    """Everything the stages wrote, for the verdict and the report."""
    out = {"behaviour": read_json(run.root / "behaviour" / "behaviour.json")}
    for name, rel in (("probes", "probes/probes.json"), ("patching", "patching/patching.json")):
        p = run.root / rel
        out[name] = read_json(p) if p.exists() else None
    return out


def run_verdict_stage(cfg: RunConfig, run: RunFolder) -> dict:
    """``results.json`` (:func:`probes.results.assemble_results`), the report and its figures
    (:func:`probes.reporting.run_report.write_run_report`)."""
    from probes.reporting.run_report import write_run_report
    from probes.results import assemble_results

    res = assemble_results(cfg, run, load_stage_outputs(run))
    write_json(run.path("results.json"), res)
    md, html = write_run_report(cfg, run, res)
    return {"results": "results.json", "report": str(html.relative_to(run.root)), "label": res["verdict"]["label"]}


def _runs(cfg: RunConfig) -> dict:
    """How a model is run, and with the chat template when it is on (only then, so that the hashes
    of plain-prompt runs made before chat existed still hold)."""
    return {"dtype": cfg.dtype, "device": cfg.device, "device_map": cfg.device_map, **({"chat": True} if cfg.chat else {})}


def _weights(cfg: RunConfig) -> dict:
    """The checkpoints' identities, and the task when it is not the default (only then, so that the
    hashes of runs made before tasks were selectable still hold)."""
    from probes.tasks import DEFAULT_TASK

    task = {"task": cfg.task} if cfg.task != DEFAULT_TASK else {}
    return {"w": {"pre": checkpoint_id(cfg.pre_rl), "post": checkpoint_id(cfg.post_rl)}, **task}


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    Attributes:
        name: its name (``--stages``, the marker ``stages/NAME.json``).
        summary: one line for ``--help``.
        reads: the stages whose outputs it reads (their hashes enter its own).
        inputs: ``cfg -> dict`` of the settings that change its numbers, hashed with the hashes of
            ``reads`` and, with ``reads_checkpoints``, the checkpoints' identity (:func:`stage_hashes`).
        writes: the run-folder paths it writes.
        run: ``(cfg, run_folder) -> dict`` of what it wrote.
    """

    name: str
    summary: str
    reads: tuple[str, ...]
    inputs: Callable[[RunConfig], dict[str, Any]]
    writes: tuple[str, ...]
    run: Callable[[RunConfig, RunFolder], dict]
    reads_checkpoints: bool = True


STAGES: tuple[Stage, ...] = (
    Stage("behaviour", "responses of both checkpoints; strategy shares, accuracy, the decomposition", (),
          lambda c: {"n": c.n_problems, "steps": c.steps, "samples": c.samples, "forced": c.forced,
                     "forced_accuracy": c.forced_accuracy, "seed": c.seed, "n_boot": c.n_boot,
                     "layout": RESULTS_SCHEMA_VERSION, **_runs(c)},  # layout: the folder's file names (3: behaviour/)
          ("problems.jsonl", "behaviour/"), run_behaviour_stage),
    Stage("cache", "activations at every layer's probe hook, streamed to disk", ("behaviour",),  # problems.jsonl
          lambda c: {"hook": c.probe_hook, "pos": cache_positions(c), "backend": c.backend,
                     "chunk": c.cache_chunk, **_runs(c)},
          ("store/pre/", "store/post/"), run_cache_stage),
    Stage("probes", "linear probes of the strategy, its propensity map, steering", ("behaviour", "cache"),
          lambda c: {"steer_n": c.steer_n, "steer_generate": c.steer_generate, "n_boot": c.n_boot,
                     "engine": PROBES_ENGINE, "targets": c.probe_targets, **_runs(c)},
          ("probes/",), run_probes_stage),
    Stage("patching", "cross-model, counterfactual and attribution patching; the patching verdict", ("behaviour",),
          lambda c: {"patching": c.patching, "seed": c.seed, "backend": c.backend,
                     "engine": PATCHING_ENGINE, **_runs(c)},
          ("patching/",), run_patching_stage),
    Stage("verdict", "results.json, the report and its figures", ("behaviour", "cache", "probes", "patching"),
          lambda c: {"schema": RESULTS_SCHEMA_VERSION},
          ("results.json", "report.md", "report.html", "figures/"), run_verdict_stage, reads_checkpoints=False),
)
"""The pipeline, in order: every stage a stage reads comes before it."""

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def stage_hashes(cfg: RunConfig) -> dict[str, str]:
    """Input hash of each stage: its :attr:`Stage.inputs` (the two checkpoints' files,
    :func:`checkpoint_id`, and the settings that change its numbers) and the hashes of the stages
    whose outputs it reads (:attr:`Stage.reads`). Changing an input reruns exactly the stages that
    read it, directly or through another stage's outputs."""
    weights = _weights(cfg)  # the checkpoints' files are hashed once per run, not once per stage
    out: dict[str, str] = {}
    for st in STAGES:  # in order: every stage a stage reads comes before it
        own = {**(weights if st.reads_checkpoints else {}), **st.inputs(cfg)}
        out[st.name] = sha256_json({"own": own, "reads": {u: out[u] for u in st.reads}})
    return out
