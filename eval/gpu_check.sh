#!/usr/bin/env bash
# The GPU check in one device call (see eval/gpu_check.py): test suite, the core trainer at ~1B and 8B
# shapes with LoRA-16 and QLoRA, bench_train and bench_autore on the GPU.
# Prepare on the CPU machine: `bash ../shared/gpu/bundle.sh` (wheels in .whl/, data in .gpu-data/), then
# run this with carry [".whl", ".gpu-data"]. Extra arguments go to gpu_check.py (e.g. --phases train).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .gpu-data/env.sh ]; then . .gpu-data/env.sh; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
data=.gpu-data/redocred/dev_revised.json
[ -f "$data" ] || data=../shared/data/redocred/dev_revised.json
python3 eval/gpu_check.py --data "$data" --out gpu_check.json "$@"
