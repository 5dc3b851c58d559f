"""Running the stages of one pair into its run folder (:func:`run_pipeline`), with the manifest.

The stages are :data:`probes.stages.STAGES`; each is skipped when its marker holds the same input
hash (:func:`probes.stages.stage_hashes`), so a rerun resumes. One line per stage on stderr.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from activations.hashing import sha256_file
from probes.runfolder import RunFolder, write_json
from probes.stages import STAGE_NAMES, STAGES, stage_hashes


def peak_rss_gb() -> float:
    """This process's peak resident set size so far, in GB (1e9 bytes; Linux ``ru_maxrss`` is KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def manifest(cfg) -> dict:
    import importlib.metadata as md

    from activations.load import load_tokenizer, tokenizer_hash

    versions = {}
    for pkg in ("torch", "transformers", "nnsight", "transformer-lens", "trl", "scikit-learn", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    ck = {}
    for role, p in (("pre_rl", cfg.pre_rl), ("post_rl", cfg.post_rl)):
        ck[role] = {"path": str(p), "weights_sha256": {f.name: sha256_file(f) for f in sorted(Path(p).glob("*.safetensors"))},
                    "tokenizer_sha256": tokenizer_hash(load_tokenizer(str(p)))}
    return {"checkpoints": ck, "seed": cfg.seed, "versions": versions, "python": sys.version.split()[0]}


def run_pipeline(cfg, stages=STAGE_NAMES, force: bool = False, prefix: str = "") -> RunFolder:
    """Run ``stages`` of one pair into ``cfg.folder``, reusing finished ones (their input hash)
    unless ``force``; prints one line per stage on stderr, with the run's task
    (``cfg.task``, :func:`probes.tasks.use_task`) current throughout. Returns the run folder.

    Raises:
        TaskError: the run's task cannot be loaded.
    """
    from probes.tasks import use_task

    with use_task(cfg.task):
        return _run_stages(cfg, stages, force, prefix)


def _run_stages(cfg, stages, force: bool, prefix: str) -> RunFolder:
    import yaml

    from activations.io import atomic_write_text

    run = RunFolder(cfg.folder)
    atomic_write_text(run.path("config.yaml"), yaml.safe_dump(cfg.model_dump(), sort_keys=True))
    hashes = stage_hashes(cfg)
    if not (run.root / "manifest.json").exists() or force:
        write_json(run.path("manifest.json"), manifest(cfg))
    for i, stage in enumerate(STAGES, 1):
        if stage.name not in stages:
            continue
        tag = f"{prefix}[{i}/{len(STAGES)} {stage.name}]"
        if run.is_done(stage.name, hashes[stage.name]) and not force:
            print(f"{tag} up to date (finished earlier)", file=sys.stderr)
            continue
        t0 = time.time()
        outputs = stage.run(cfg, run)
        run.mark_done(stage.name, hashes[stage.name], time.time() - t0, outputs)
        print(f"{tag} done in {time.time() - t0:.1f} s (peak RSS {peak_rss_gb():.1f} GB)", file=sys.stderr)
    return run

