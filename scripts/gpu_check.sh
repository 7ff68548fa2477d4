#!/usr/bin/env bash
# The device check of issue 26: on a GPU machine that has PyTorch and transformers but nothing else and no
# network, install what the benchmark lacks from carried wheels, then run the whole GPU benchmark
# (benchmarks/gpu.py: 135M-, 1B- and 8B-shaped Llamas in bf16; about 4 minutes on an H100, cut at 7m50s),
# writing benchmarks/results/gpu.json (after each model, so a run cut short keeps what it measured) and a copy
# under $OUT when that is set (the device runner's folder).
#
#   scripts/gpu_check.sh [WHEEL_DIR]        # WHEEL_DIR default: .gpu_wheels (git-ignored)
#
# Fill WHEEL_DIR here first (needs PyPI), then carry it to the GPU machine:
#   scripts/gpu_check.sh --fetch-wheels [WHEEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# What importing langchain_persona_judge.decoding needs beyond torch and transformers.
NEEDS=(pydantic)

if [ "${1:-}" = "--fetch-wheels" ]; then
  WHEELS="${2:-.gpu_wheels}"
  mkdir -p "$WHEELS"
  # Binary wheels for the Python versions a GPU image may have (pydantic-core is compiled).
  for version in 3.10 3.11 3.12 3.13; do
    "$PY" -m pip download --quiet --only-binary=:all: --python-version "$version" \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$WHEELS" "${NEEDS[@]}"
  done
  ls "$WHEELS"
  exit 0
fi

WHEELS="${1:-.gpu_wheels}"
if ! "$PY" -c "import pydantic" 2>/dev/null; then
  if [ ! -d "$WHEELS" ]; then
    echo "pydantic is missing and there is no wheel folder $WHEELS; fill it with $0 --fetch-wheels" >&2
    exit 2
  fi
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" "${NEEDS[@]}"
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

# GPU_CHECK_DEVICE=cpu rehearses the whole script on a CPU (the tiny config, a results file under /tmp).
if [ "${GPU_CHECK_DEVICE:-cuda}" = "cpu" ]; then
  ARGS=(--device cpu --quick --json --out "${TMPDIR:-/tmp}/gpu_check_rehearsal.json")
  RESULT="${TMPDIR:-/tmp}/gpu_check_rehearsal.json"
else
  ARGS=(--device cuda --json --out benchmarks/results/gpu.json)
  RESULT=benchmarks/results/gpu.json
fi
status=0
timeout 470 "$PY" -m benchmarks.gpu "${ARGS[@]}" || status=$?
if [ -n "${OUT:-}" ] && [ -f "$RESULT" ]; then
  cp "$RESULT" "$OUT/gpu.json"
fi
exit "$status"
