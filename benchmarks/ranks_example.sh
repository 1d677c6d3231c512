#!/usr/bin/env bash
# Wall time of the built-in example's surface (25×25, 1,797 samples a point) at N = 1, 2, 4 ranks on
# this machine, with rank 0 working (the default) and only coordinating (--rank0 coordinate).
# Writes results/ranks_example_cpu.md. Usage: bash benchmarks/ranks_example.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
dsurf=.venv/bin/dsurf
out=benchmarks/results/ranks_example_cpu.md
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$dsurf run --x=-1:1:2 --out "$work/warm.h5" --no-plot --no-progress >/dev/null 2>&1  # train and cache the example
{
  echo "# The built-in example's surface at N = 1, 2, 4 ranks ($(nproc) cores, $(date -Is), commit $(git rev-parse --short HEAD))"
  echo
  echo "Command: \`bash benchmarks/ranks_example.sh\`: \`timeout 600 mpirun --oversubscribe -np N .venv/bin/dsurf run --out ... --no-plot --no-progress [--rank0 coordinate]\` (N = 1: no mpirun), 25×25 grid, 1,797 samples a point. Wall: the whole command, process start-up and torch import included; load: the 1-minute load average before the run."
  echo
  echo "| N | rank 0 | wall s | points/s | load before |"
  echo "|---|---|---|---|---|"
} > "$out"
run() {  # N role command...
  local n=$1 role=$2; shift 2
  local load start end
  load=$(cut -d' ' -f1 /proc/loadavg)
  start=$(date +%s.%N)
  "$@" --out "$work/s.h5" --overwrite --no-plot --no-progress >/dev/null
  end=$(date +%s.%N)
  python3 -c "w=$end-$start; print(f'| $n | $role | {w:.1f} | {625/w:.1f} | $load |')" >> "$out"
}
run 1 "does everything" $dsurf run
for n in 2 4; do
  for role in work coordinate; do
    run "$n" "$role" timeout 600 mpirun --oversubscribe -np "$n" $dsurf run --rank0 "$role"
  done
done
cat "$out"
