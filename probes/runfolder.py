"""The run folder: one directory per run, written stage by stage, atomically, resumably.

Layout (README.md, "The run folder")::

    runs/NAME/
      config.yaml          the resolved run config
      manifest.json        checkpoint weight hashes, tokenizer hash, dataset hash, versions, seed
      problems.jsonl       the held-out problems (stable ids)
      behaviour/           per-model responses and behaviour.json with the decomposition
      store/pre, store/post  activation stores (activations.store)
      probes/              probes.json and figures
      patching/            patching.json and heatmaps
      results.json         every number of the report (schema_version)
      report.md, report.html, figures/*.png
      stages/NAME.json     one marker per finished stage: its input hash and outputs

A stage is finished when its marker exists with the same input hash; rerunning a run skips
finished stages and redoes an interrupted one (whose own outputs resume where they support it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from activations.io import write_json  # noqa: F401  (the run folder's writer, imported from here by the stages)


class RunFolderError(ValueError):
    """A run-folder file that is truncated or corrupt; the message names it and the fix."""


def read_json(path: str | Path) -> Any:
    """Read a JSON file of a run folder.

    Raises:
        RunFolderError: the file is corrupt or truncated (the message names it).
        FileNotFoundError: there is no such file.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" ({e.msg} at line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
        raise RunFolderError(f"{path} is corrupt or truncated{where}; delete it (and rerun with --force if it is a "
                             "stage's output) to recompute") from None


RESULTS_SCHEMA_VERSION = 3
"""``results.json``'s ``schema_version``. 3: one spelling, ``behaviour`` (the top-level key, the
``behaviour/`` folder and its ``behaviour*.json`` files; 2 had ``behavior``)."""


def read_results(root: str | Path) -> dict:
    """``results.json`` of a run folder, as schema :data:`RESULTS_SCHEMA_VERSION`.

    Version 2 is read and upgraded in memory (``behavior`` becomes ``behaviour``; nothing else
    changed); the folder itself is not rewritten.

    Raises:
        FileNotFoundError: the folder has no ``results.json``.
        RunFolderError: the file is corrupt, or of another version (the message names it and says
            how to rewrite it: rerun ``python -m probes.run`` on the folder).
    """
    path = Path(root) / "results.json"
    res = read_json(path)
    version = res.get("schema_version") if isinstance(res, dict) else None
    if version == 2 and "behavior" in res:
        res = {("behaviour" if k == "behavior" else k): v for k, v in res.items()}
        res["schema_version"] = RESULTS_SCHEMA_VERSION
    elif version != RESULTS_SCHEMA_VERSION:
        raise RunFolderError(f"{path} has schema_version {version!r}; this version reads "
                             f"{RESULTS_SCHEMA_VERSION} (and 2): rerun python -m probes.run --out {Path(root)} to "
                             "rewrite it (stages whose inputs changed rerun)")
    return res


def task_of(root: str | Path):
    """The task a run folder was made with: ``task`` of its ``config.yaml`` (the default task when
    the folder predates the field or has no config), loaded (:func:`probes.tasks.load_task`).

    Raises:
        TaskError: the task named there cannot be loaded.
    """
    import yaml

    from probes.tasks import DEFAULT_TASK, load_task

    cfg = Path(root) / "config.yaml"
    spec = (yaml.safe_load(cfg.read_text()) or {}).get("task") if cfg.exists() else None
    return load_task(spec or DEFAULT_TASK)


class RunFolder:
    """Paths and stage bookkeeping of one run folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "stages").mkdir(exist_ok=True)
        (self.root / "figures").mkdir(exist_ok=True)

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def _marker(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def is_done(self, stage: str, input_hash: str) -> bool:
        """True when ``stage`` finished with this input hash (and its marker is readable)."""
        m = self._marker(stage)
        if not m.exists():
            return False
        try:
            return read_json(m).get("input_hash") == input_hash
        except ValueError:
            return False

    def mark_done(self, stage: str, input_hash: str, seconds: float, outputs: dict | None = None) -> None:
        write_json(self._marker(stage), {"stage": stage, "input_hash": input_hash, "seconds": round(seconds, 2),
                                         "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                         "outputs": outputs or {}})

    def stage_info(self, stage: str) -> dict | None:
        m = self._marker(stage)
        return read_json(m) if m.exists() else None

    def invalidate(self, stage: str) -> None:
        self._marker(stage).unlink(missing_ok=True)
