#!/usr/bin/env bash
# The GPU check: everything the GPU path needs measured, in one prepared run of at most 9 minutes on a
# machine with one NVIDIA GPU. Each step has its own time limit; a step that fails or runs out of time
# is reported and the next one runs; each step's results are written as it ends, and the summary table
# (benchmarks/results/gpu_check_cuda.md, printed at the end) holds every target.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine: results in benchmarks/results/*_cuda.*
#   bash benchmarks/gpu_check.sh --dry-run   # the same steps on the CPU at toy sizes (under a minute),
#                                            # results in a scratch folder (DSURF_BENCH_RESULTS)
#
# Steps (their limits add up to 535 s on the GPU; the dry run's are wider than its steps need, for a
# busy CI machine): the GPU-marked tests; the paper's loop against ours (ResNet-20,
# 10,000 CIFAR-sized samples); efficiency against the bf16 matmul rate (fp32, tf32, bf16, channels-last
# off and on); precision (tf32 and bf16 against fp32); 1, 2 and 4 ranks sharing the GPU (mpirun, one
# surface each); the vmap crossover; --compile on and off; a GPT-2-small-sized language model (124 M
# parameters, built from GPT-2 small's config) in bf16 against the hand loop and the bf16 peak (the dry
# run: a tiny config); the summary.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DSURF_BENCH_NO_WAIT=1
PY=${PY:-.venv/bin/python}

dry=0
case "${1:-}" in
  --dry-run) dry=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

if [ "$dry" = 1 ]; then
  tag=dry device=cpu
  export DSURF_BENCH_RESULTS=${DSURF_BENCH_RESULTS:-$(mktemp -d /tmp/dsurf_gpu_check_dry.XXXXXX)}
  samples=8 ranks=1,2 widths=4,16 rank_samples=32 rank_grid=3 matmul=128,256
  # torch.compile's own switch: the dry run goes through the compile step's code without compiling
  # (inductor takes a minute on a CPU)
  no_compile=TORCHDYNAMO_DISABLE=1
  limit() { echo "$2"; }  # the dry run's limit (the second number)
else
  tag=cuda device=cuda
  export DSURF_BENCH_RESULTS=${DSURF_BENCH_RESULTS:-$PWD/benchmarks/results}
  samples=10000 ranks=1,2,4 widths=4,8,16,32,64,128,256,512 rank_samples=500 rank_grid=16 no_compile=
  matmul=1024,2048,4096,8192
  limit() { echo "$1"; }
  if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: torch sees no CUDA device here (nvidia-smi: $(nvidia-smi -L 2>&1 | head -1)); try --dry-run" >&2
    exit 2
  fi
fi
results=$DSURF_BENCH_RESULTS
mkdir -p "$results/logs"
steps=$results/gpu_check_steps_$tag.tsv
: > "$steps"
began=$(date +%s)

# step NAME GPU_LIMIT DRY_LIMIT COMMAND...: run it under its limit, log it, record how it ended.
step() {
  local name=$1 seconds; seconds=$(limit "$2" "$3"); shift 3
  local log=$results/logs/$name.log start=$(date +%s) rc status
  echo "== $name (limit ${seconds} s; $(( start - began )) s so far)" >&2
  timeout --kill-after=10 "$seconds" "$@" > "$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timed out after ${seconds} s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - start ))" "$log" >> "$steps"
  echo "   $name: $status ($(( $(date +%s) - start )) s)" >&2
  [ "$status" = ok ] || tail -5 "$log" | sed 's/^/   | /' >&2
}

step gpu_tests 40 30 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
step anchor 70 30 "$PY" benchmarks/anchor_loop.py --device "$device" --problems resnet20 --samples "$samples" \
  --variants defaults,channels_last,bf16 --name "anchor_loop_$tag"
step efficiency 65 30 "$PY" benchmarks/efficiency.py --device "$device" --problems resnet20 --samples "$samples" \
  --rounds 1 --matmul-seconds "$(limit 0.2 0.05)" --matmul-sizes "$matmul" --name "efficiency_$tag"
step precision 45 20 "$PY" benchmarks/precision.py --device "$device" --problems resnet20 --samples "$samples" \
  --grid "$(limit 3 2)" --name "precision_$tag"
step ranks 90 45 "$PY" benchmarks/ranks.py --device "$device" --ranks "$ranks" --threads 1 --samples "$rank_samples" \
  --grid "$rank_grid" --grid-y "$rank_grid" --timeout "$(limit 80 40)" --name "ranks_gpu_$tag"
step vmap_crossover 35 20 "$PY" benchmarks/vmap_crossover.py --device "$device" --widths "$widths" \
  --samples "$(limit 2048 64)" --batch "$(limit 256 32)" --k "$(limit 16 4)" --name "vmap_crossover_$tag"
step compile 120 30 env $no_compile "$PY" benchmarks/efficiency.py --device "$device" --problems resnet20 --samples "$(limit 2000 8)" \
  --rounds 1 --matmul-seconds "$(limit 0.1 0.05)" --matmul-sizes "$matmul" --compile --no-plain --name "efficiency_compile_$tag"
step lm 60 40 "$PY" benchmarks/lm.py --device "$device" --size "$(limit gpt2-small tiny)" --precisions bf16 --points 2 \
  --rounds "$(limit 3 1)" --matmul-sizes "$matmul" --matmul-seconds "$(limit 0.2 0.05)" --name "lm_$tag"
step summary 10 10 "$PY" benchmarks/gpu_summary.py --tag "$tag"

echo "== gpu_check ($tag) done in $(( $(date +%s) - began )) s; results in $results" >&2
cat "$results/gpu_check_$tag.md" 2>/dev/null
# Exit 0 when every step ran to its end (targets missed are results, not failures).
! grep -qv $'\tok\t' "$steps"
