#!/usr/bin/env bash
# Run every benchmark and rewrite benchmarks/results/*.{json,md} and docs/figures/scaling.png.
# About 10 minutes on 2 CPU cores. Each step waits (30 s at a time, a few minutes at most) while other
# work keeps the machine busy, and records the load in its results file.
#
#   bash benchmarks/run_all.sh              # CPU (or the GPU, where torch sees one)
#   DEVICE=cuda bash benchmarks/run_all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
PY=.venv/bin/python
DEVICE=${DEVICE:-$($PY -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
start=$(date +%s)
step() { echo "== $* ($(( $(date +%s) - start )) s)" >&2; "$@"; }
step timeout 900 $PY benchmarks/anchor_loop.py --device "$DEVICE"
step timeout 600 $PY benchmarks/efficiency.py --device "$DEVICE"
step timeout 300 $PY benchmarks/lm.py --device "$DEVICE"
step timeout 600 $PY benchmarks/precision.py --device "$DEVICE"
step timeout 1200 $PY benchmarks/scaling.py
echo "== all done in $(( $(date +%s) - start )) s" >&2
