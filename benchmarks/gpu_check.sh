#!/usr/bin/env bash
# One-command GPU check (benchmarks/gpu_check.py): every pipeline's training steps on CUDA from random
# init, figures (images/s, center words/s, peak GPU memory) to benchmarks/results/gpu_check.json.
# Stops after 8 minutes at most. Without CUDA it exits 2 at once with a one-line error.
#   bash benchmarks/gpu_check.sh [--out FILE]        (PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --kill-after=10 480 "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
