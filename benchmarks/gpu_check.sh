#!/usr/bin/env bash
# The real-scale benchmark (benchmarks/real_scale.py) in bfloat16 on one CUDA GPU.
#
#   bash benchmarks/gpu_check.sh [WORK_DIR]
#
# Makes a Qwen2.5-1.5B-shaped random pair with `python -m probes.synth` in WORK_DIR
# (default: a fresh temporary folder, about 6 GB of disk in bfloat16; an existing pair there is
# reused), then times caching against the bare forward, the peak RSS of caching, and one exact
# CMAP patch sweep, on CUDA in bfloat16, and prints the throughput in prompt tokens per second.
# Stops at once, with a one-line error, when there is no CUDA GPU or a package is missing.
#
# Environment: PYTHON (default: python3), N (prompts, default 1024), BATCH (prompts per forward,
# default 64), SWEEP_N (sweep prompts, default 16), MAX_ROWS (rows per patched forward, 256),
# REPEATS (timing passes, default 5). Needs a CUDA build of torch and the project's dependencies
# (pip install -e . after installing torch); the repository root is put on PYTHONPATH.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
N="${N:-1024}"
BATCH="${BATCH:-64}"
SWEEP_N="${SWEEP_N:-16}"
MAX_ROWS="${MAX_ROWS:-256}"
REPEATS="${REPEATS:-5}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

fail() { echo "error: $*" >&2; exit 1; }

command -v "$PY" >/dev/null 2>&1 || fail "no Python interpreter '$PY' (set PYTHON=/path/to/python)"

# 1. a CUDA GPU that torch can use
"$PY" - <<'EOF' || fail "no usable CUDA GPU (see the line above); this check needs one"
import sys
try:
    import torch
except ImportError:
    sys.exit("torch is not installed: install a CUDA build of torch (https://pytorch.org)")
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda or 'no, a CPU build'})")
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"bf16 supported: {torch.cuda.is_bf16_supported()}")
EOF

# 2. the packages the benchmark imports
"$PY" - <<'EOF' || fail "missing packages (see the line above): pip install -e . (after a CUDA torch)"
import importlib.util, sys
missing = [m for m in ("transformers", "tokenizers", "safetensors", "accelerate", "nnsight", "pydantic", "jaxtyping",
                       "yaml", "tqdm", "numpy") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit("not installed: " + ", ".join(missing))
EOF

# 3. the synth pair (bfloat16 weights), made once
WORK="${1:-$(mktemp -d -t gpu-check-XXXXXX)}"
mkdir -p "$WORK"
if [ ! -f "$WORK/pre/synth.json" ]; then
  "$PY" -m probes.synth --shape qwen2.5-1.5b --seed 0 --dtype bfloat16 --out "$WORK/pre"
fi
if [ ! -f "$WORK/post/synth.json" ]; then
  "$PY" -m probes.synth --perturb-from "$WORK/pre" --seed 1 --out "$WORK/post"
fi

# 4. the benchmark on CUDA in bfloat16 (wall clock after torch.cuda.synchronize)
"$PY" benchmarks/real_scale.py --pre "$WORK/pre" --post "$WORK/post" --work "$WORK" \
  --device cuda --dtype bfloat16 --n "$N" --batch-size "$BATCH" --repeats "$REPEATS" \
  --sweep-n "$SWEEP_N" --sweep-repeats 3 --max-rows "$MAX_ROWS" | tee "$WORK/real_scale.txt"

echo "-- throughput (prompt tokens/s, bfloat16 on CUDA):"
grep -E "tokens/s" "$WORK/real_scale.txt" || true
echo "pair and log kept in $WORK"
