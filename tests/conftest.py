import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """One ``python -m probes.run --quick`` of the shipped pair (sft-fb -> rl-fb-hard), run once
    per session and shared (read-only: copy it before writing into it). Attributes: ``out`` (the
    run folder), ``stdout``, ``stderr``."""
    out = tmp_path_factory.mktemp("quick") / "run"
    r = subprocess.run([sys.executable, "-m", "probes.run", "--quick", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return SimpleNamespace(out=out, stdout=r.stdout, stderr=r.stderr)
