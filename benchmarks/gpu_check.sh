#!/usr/bin/env bash
# GPU check: correctness on CUDA and the paper's memory table measured on the GPU (< 4 min on one H100).
# Writes gpu_check_<device>.json into $OUT (the device tool's output folder) or reports/gpu/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 exec "$PY" benchmarks/gpu_check.py --out "${OUT:-reports/gpu}" "$@"
