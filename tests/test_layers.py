"""The package direction activations <- probes <- analyses (pyproject.toml, [tool.importlinter]):
the contract holds on the tree, and it breaks when a wrong-way import is added."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, capture_output=True, text=True)


TASK_CONTRACT = "the stages see a task only through probes.tasks"


def test_the_layer_contract_holds():
    r = _lint(REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "activations <- probes <- analyses KEPT" in r.stdout
    assert f"{TASK_CONTRACT} KEPT" in r.stdout


@pytest.fixture
def tree(tmp_path):
    for pkg in ("activations", "probes", "analyses"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.ipynb"))
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    assert _lint(tmp_path).returncode == 0  # the copy is as clean as the tree
    return tmp_path


def test_a_wrong_way_import_breaks_the_contract(tree):
    batch = tree / "activations" / "batch.py"
    batch.write_text(batch.read_text() + "\nfrom probes.task.problems import Problem  # the wrong way\n")
    r = _lint(tree)
    assert r.returncode == 1 and "BROKEN" in r.stdout
    assert "activations.batch -> probes.task.problems" in r.stdout


@pytest.mark.parametrize("module", ["probes/stages.py", "probes/patching/cmap.py", "probes/probing/targets.py"])
def test_a_stage_that_imports_the_finite_field_task_breaks_the_task_contract(tree, module):
    """Issue 22: no stage module imports a task's own module; they ask probes.tasks."""
    path = tree / module
    path.write_text(path.read_text() + "\nfrom probes.task.traces import make_trace  # past the interface\n")
    r = _lint(tree)
    assert r.returncode == 1 and f"{TASK_CONTRACT} BROKEN" in r.stdout
    assert "activations <- probes <- analyses KEPT" in r.stdout


def test_a_test_module_without_a_tier_is_refused(tmp_path):
    """tests/conftest.py makes the tiers hold: a module with no tier marker is a collection error
    naming it, and the same module with one runs."""
    import shutil
    import subprocess
    import sys

    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_x.py").write_text("def test_x():\n    assert True\n")
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "/dev/null", "--rootdir", str(tmp_path),
            str(tmp_path)]
    r = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and "test_x.py has none" in r.stdout + r.stderr
    (tmp_path / "test_x.py").write_text("import pytest\n\npytestmark = pytest.mark.unit\n\n\ndef test_x():\n    assert True\n")
    r = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr
