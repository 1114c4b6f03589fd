#!/usr/bin/env bash
# The GPU run (docs/measure.md, "GPU run"): every CUDA measurement in one script, for a machine with
# a CUDA GPU. CI has no GPU, so its output, reports/gpu/, is committed. Needs the trained checkpoint
# and model.onnx (`dvc repro export` or `make export`) and the console scripts on PATH.
#   bash measurements/gpu-run.sh                  # everything below, each step under its own timeout
#   GPU_STEP_TIMEOUT=600 bash measurements/gpu-run.sh
# A step that fails or times out is reported and the next one still runs: a lent GPU is scarce, so
# one broken step must not cost the others.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=reports/gpu
STEP_TIMEOUT=${GPU_STEP_TIMEOUT:-300}
PYTHON=${PYTHON:-python3}   # the interpreter that holds torch with CUDA and mlpipe
failed=()

step() {
  local name=$1
  shift
  echo "== gpu-run: $name: $*"
  local rc=0
  timeout "$STEP_TIMEOUT" "$@" || rc=$?
  if ((rc)); then
    echo "!! gpu-run: $name failed (rc=$rc; 124 = timed out after ${STEP_TIMEOUT} s)" >&2
    failed+=("$name")
  fi
}

if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-run: no CUDA GPU here (nvidia-smi -L failed); run this on a machine with one" >&2
  exit 1
fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
  --format=csv > "$OUT/nvidia-smi.csv"

# eager vs CUDA graphs vs torch.compile on CUDA (+ ORT CUDA, TensorRT where installed), CPU baselines
step bench mlpipe-bench bench=gpu
# the analytic roofline against this GPU's measured peaks and the H100/H200 presets
step profile mlpipe-profile -m model=cnn,mlp_wide \
  'profile.devices=[cuda_measured,h200,h100_sxm]' profile.out_dir="$OUT/profile"
# the measured knee of every layer beside its analytic flip batch (mlp_wide: 1024x1024 Linears)
step knee mlpipe-knee -m model=cnn,mlp_wide profile/knee=gpu \
  profile.knee.out_dir="$OUT/profile_measured"
# the gpu-marked tests (CUDA peaks, the CUDA-event knee path, the CUDA bench rows)
step pytest-gpu "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider tests/measure tests/test_configs.py

if ((${#failed[@]})); then
  echo "gpu-run: failed steps: ${failed[*]}" >&2
  exit 1
fi
echo "gpu-run: wrote $OUT/"
