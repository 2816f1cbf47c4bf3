#!/usr/bin/env bash
# The GPU checks, in one script for one NVIDIA GPU with CUDA PyTorch and no network (a few minutes):
#   detection: torch engine (PP-OCRv5 server det architecture) raw vs batched service vs no batching, 960 px
#   training:  DreamBooth step at SD-1.5 size, 512 px, batch 1 + 1 class image, bf16, full and LoRA
#   generation: seconds per image at SD-1.5 size, 512 px, 50 steps, CFG 7.5, fp16, batch 1 and 4, eager vs optimised
# Usage: bash bench/gpu_check.sh [--smoke]     (--smoke: tiny sizes, any device; checks the script)
# Pure-Python packages the GPU host lacks (diffusers, rapidocr sources...) may be carried as wheels in .whl/.
set -uo pipefail
PY="${PYTHON:-python3}"
cd "$(dirname "$0")/.."
SMOKE=""
[ "${1:-}" = "--smoke" ] && SMOKE="--smoke"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl && \
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
"$PY" - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
PY
status=0
run() {
  echo; echo "=== $1"; shift
  timeout 240 "$PY" "$@" $SMOKE || { echo "!!! failed: $*"; status=1; }
}
run "detection (torch engine + dynamic batcher)" bench/gpu_detect_check.py
run "DreamBooth training step, SD-1.5 size" bench/gpu_train_check.py
run "generation, SD-1.5 size" bench/gpu_gen_check.py --variants eager,sdpa+cl,compiled
exit $status
