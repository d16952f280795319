#!/usr/bin/env bash
# One command for the cost benchmarks on a GPU machine (run from the repository root):
#   bash benchmarks/gpu.sh            # writes benchmarks/results/real_models.json + RESULTS.md
#   bash benchmarks/gpu.sh --no-write # print only
# Needs the CUDA build of torch (constraints-cuda.txt). Exits 2 when torch sees no GPU.
set -euo pipefail
PY="${PYTHON:-.venv/bin/python}"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)' || {
  echo "torch sees no CUDA device" >&2; exit 2; }
"$PY" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))'
exec "$PY" benchmarks/bench_real_models.py --device cuda --threads 4 "$@"
