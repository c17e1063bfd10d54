#!/usr/bin/env bash
# GPU check, one script, under 5 minutes on one H100/H200-class GPU:
#   1. environment (torch, CUDA device, the packages ntk_lab needs)
#   2. the GPU-marked tests (CUDA kernels against float64 CPU references)
#   3. the NTK benchmarks on CUDA (TF32 off while kernels are computed): MLP methods, conv
#      nets (scripts/bench_arch.py), the pooled CNN's Θ_∞ (scripts/bench_pooled_cnn_limit.py),
#      the instrumentation's overhead ratio (scripts/bench_overhead.py), and a transformer's
#      NTK (scripts/bench_transformer_ntk.py)
#   4. a short width sweep on CUDA with its fitted slopes
# Usage: bash scripts/gpu_check.sh   (writes under $OUT if set, else a temp folder)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$(mktemp -d)}"
PY="${PYTHON:-python3}"
status=0

echo "== 1. environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'PY' || exit 1
import importlib, sys
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")
missing = [m for m in ("hydra", "omegaconf", "pandas", "matplotlib", "tqdm", "scipy", "sklearn")
           if importlib.util.find_spec(m) is None]
if missing:
    print("missing packages:", ", ".join(missing), "- carry them as wheels (see the device README)")
    sys.exit(1)
if not torch.cuda.is_available():
    print("no CUDA device visible"); sys.exit(1)
PY

echo "== 2. GPU tests"
if "$PY" -c "import pytest" 2>/dev/null; then
  timeout 120 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py || status=1
else
  echo "pytest not installed: skipped"
fi

echo "== 3. NTK benchmark on CUDA"
timeout 150 "$PY" scripts/bench_ntk.py --device cuda --repeats 5 || status=1

echo "== 3a. conv nets on CUDA: structured CNN NTK ÷ forward+backward at 128 and 512 channels, CNN Θ_∞"
timeout 150 "$PY" scripts/bench_arch.py --device cuda --repeats 5 || status=1

echo "== 3b. instrumentation overhead on CUDA (default vs ntk.enabled=false, widths 1024 and 4096)"
timeout 120 "$PY" scripts/bench_overhead.py --no-probe --repeats 1 || status=1

echo "== 3c. pooled-CNN Θ_∞ on CUDA: 64 and 128 images 1×28×28, GAP depth 3, rate against the dual's"
timeout 150 "$PY" scripts/bench_pooled_cnn_limit.py 64 128 --device cuda || status=1

echo "== 3d. transformer on CUDA: empirical NTK (width 256, depth 2, 128 sequences of 16 tokens) ÷ forward+backward"
timeout 120 "$PY" scripts/bench_transformer_ntk.py --device cuda --repeats 5 || status=1

echo "== 4. width sweep on CUDA (widths 64…4096 × 3 seeds)"
timeout 150 "$PY" -m ntk_lab.run -m experiment=width_sweep device=cuda ntk.checkpoints=10 \
  hydra.sweep.dir="$OUT/width_sweep" > "$OUT/width_sweep.log" 2>&1 || status=1
tail -n 3 "$OUT/width_sweep.log"
if [ -f "$OUT/width_sweep/analysis/fits.csv" ]; then
  "$PY" - "$OUT/width_sweep/analysis/fits.csv" <<'PY'
import sys, pandas as pd
fits = pd.read_csv(sys.argv[1])
cols = [c for c in ("metric", "step", "depth", "slope", "ci_low", "ci_high", "n_runs") if c in fits]
print(fits[cols].to_string(index=False))
PY
else
  status=1
fi
echo "gpu_check: $([ $status -eq 0 ] && echo PASS || echo FAIL) (outputs in $OUT)"
exit $status
