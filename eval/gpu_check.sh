#!/usr/bin/env bash
# GPU check, one prepared call for a GPU machine without internet access.
# QLoRA (4-bit NF4 base) vs 16-bit LoRA training steps on a randomly initialised Llama with real ~1B
# shapes (TinyLlama-1.1B: hidden 2048, 22 layers, GQA 32/4 heads), printing peak GPU memory and tokens/s.
#
# Missing wheels travel beside it: put them in .whl/ (bitsandbytes at least; see eval/gpu_check.py),
# they are installed into /tmp/site without network access.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 eval/gpu_check.py "$@"
