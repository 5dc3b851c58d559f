"""Reading a run folder from an analysis script: the ``RUN_DIR`` argument and its JSON files.

Every ``python -m analyses.NAME RUN_DIR`` script takes one argument, the run folder written by
``python -m probes.run``; :func:`run_dir_from_argv` checks it and turns a bad one into a one-line
error (exit status 2) instead of a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Sequence


def run_dir_from_argv(argv: list[str] | None, prog: str, needs: str) -> Path | None:
    """The run folder named by ``argv`` (one argument), or None after printing a one-line error
    when the argument is missing or the folder lacks ``needs`` (a path relative to it)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print(f"usage: python -m analyses.{prog} RUN_DIR  (a run folder written by python -m probes.run)",
              file=sys.stderr)
        return None
    run = Path(argv[0])
    if not (run / needs).exists():
        print(f"error: {run} has no {needs} (run python -m probes.run --out {run} first)", file=sys.stderr)
        return None
    return run


def figure_cli(argv: list[str] | None, prog: str, needs: str, *draw: Any) -> int:
    """The body of a ``python -m analyses.PROG RUN_DIR`` command: check the run folder
    (:func:`run_dir_from_argv`), draw each figure (``draw``: functions of the run folder returning
    a path) and print its path. Returns the exit status (2 for a bad argument)."""
    run = run_dir_from_argv(argv, prog, needs)
    if run is None:
        return 2
    for fn in draw:
        print(fn(run))
    return 0


def load(run: str | Path, rel: str) -> Any:
    """A JSON file of the run folder (``results.json``, ``probes/probes.json``...); a
    ``results.json`` is read through :func:`probes.runfolder.read_results` (older schema versions
    upgraded or refused with the fix)."""
    path = Path(run) / rel
    if path.name == "results.json":
        from probes.runfolder import read_results

        return read_results(path.parent)
    return json.loads(path.read_text())


def figure_path(run: str | Path, name: str) -> Path:
    """``RUN/figures/NAME`` (the folder is created)."""
    out = Path(run) / "figures" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


DPI = 110
"""The resolution of every figure the project saves (dots per inch)."""


def save_png(fig: Any, path: str | Path, dpi: int = DPI) -> Path:
    """The one figure saver: ``fig`` as a PNG at ``path``, written atomically
    (:func:`activations.io.write_bytes_atomic`), and closed. Returns ``path``."""
    import matplotlib.pyplot as plt

    from activations.io import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue(), fsync=False)
    return Path(path)


def save_figure(fig: Any, run: str | Path, name: str, rows: Sequence[dict] | None = None,
                fieldnames: Sequence[str] | None = None) -> Path:
    """Save ``fig`` as ``RUN/figures/NAME`` (:func:`save_png`) and close it; with ``rows``, also the numbers
    it plots as a CSV beside it (same name, ``.csv``, columns ``fieldnames``). Returns the PNG path."""
    from activations.io import atomic_write_text

    out = save_png(fig, figure_path(run, name))
    if rows is not None:
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=list(fieldnames))
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(out.with_suffix(".csv"), buf.getvalue())
    return out
