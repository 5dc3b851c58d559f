"""The package direction activations <- probes <- analyses (pyproject.toml, [tool.importlinter]):
the contract holds on the tree, and it breaks when a wrong-way import is added."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, capture_output=True, text=True)


def test_the_layer_contract_holds():
    r = _lint(REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "activations <- probes <- analyses KEPT" in r.stdout


def test_a_wrong_way_import_breaks_the_contract(tmp_path):
    for pkg in ("activations", "probes", "analyses"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.ipynb"))
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    assert _lint(tmp_path).returncode == 0  # the copy is as clean as the tree
    batch = tmp_path / "activations" / "batch.py"
    batch.write_text(batch.read_text() + "\nfrom probes.task.problems import Problem  # the wrong way\n")
    r = _lint(tmp_path)
    assert r.returncode == 1 and "BROKEN" in r.stdout
    assert "activations.batch -> probes.task.problems" in r.stdout
