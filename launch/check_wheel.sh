#!/usr/bin/env bash
# Checks that distributed_surface works as an installed package, not only from its checkout: builds
# the wheel, installs it (not editable) into a fresh virtual environment, and from a folder outside the
# repository (so the source tree is not on sys.path) runs `dsurf sbatch --dry-run`, a tiny `dsurf run`,
# `dsurf info` and `dsurf plot`. Any failure fails the script. About a minute; CI runs it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# The CPU build these machines keep (launch/setup.sh pins the same): installed before the wheel, so
# that the wheel's `torch` requirement is met and pip does not pull a CUDA build.
torch_spec=${DSURF_TORCH:-torch==2.13.0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== building the wheel"
# From a copy without build outputs: setuptools never empties build/, so a module since removed would
# still be packed from there.
mkdir "$tmp/src"
tar -C "$repo" -c --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
  --exclude=__pycache__ --exclude=./site . | tar -C "$tmp/src" -x
python3 -m pip wheel -q --disable-pip-version-check --no-deps -w "$tmp/wheel" "$tmp/src"
wheel=$(ls "$tmp"/wheel/distributed_surface-*.whl)
python3 -m zipfile -l "$wheel" | grep "distributed_surface/templates/dsurf.sbatch.in" > /dev/null \
  || { echo "check_wheel: the wheel lacks the sbatch template" >&2; exit 1; }

echo "== installing $(basename "$wheel") into a fresh virtual environment"
python3 -m venv "$tmp/venv"
pip=("$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" "$torch_spec"
"${pip[@]}" "$wheel[plot]"  # plot: matplotlib, for `dsurf plot`
dsurf="$tmp/venv/bin/dsurf"

cd "$tmp"
# The package must come from the environment, never from the checkout.
"$tmp/venv/bin/python" - "$repo" <<'EOF'
import sys
from pathlib import Path

import distributed_surface

where = Path(distributed_surface.__file__).resolve()
if Path(sys.argv[1]).resolve() in where.parents:
    sys.exit(f"check_wheel: imported the checkout ({where}), not the installed wheel")
print("== imported from", where.parent)
EOF

# A tiny problem of its own: the built-in example needs scikit-learn, which the wheel does not.
cat > tiny.py <<'EOF'
import torch


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(64, 4, generator=generator), torch.randint(0, 3, (64,), generator=generator)
EOF
problem=(--model tiny.py:model --data tiny.py:data --x -1:1:5 --y -1:1:5)

echo "== dsurf sbatch --dry-run"
"$dsurf" sbatch "${problem[@]}" --out tiny.h5 --nodes 1 --gpus-per-node 1 --time 00:10:00 --dry-run > tiny.sbatch
grep -q "^srun .* -m distributed_surface run .*--resume" tiny.sbatch \
  || { cat tiny.sbatch; echo "check_wheel: the batch script has no srun line" >&2; exit 1; }

echo "== dsurf run, info, plot"
"$dsurf" run "${problem[@]}" --out tiny.h5 --no-plot --no-progress
"$dsurf" info tiny.h5
status=$("$dsurf" info --status tiny.h5)
[ "$status" = complete ] || { echo "check_wheel: the surface is $status, not complete" >&2; exit 1; }
"$dsurf" plot tiny.h5 --out-dir plots
ls plots/*.png > /dev/null || { echo "check_wheel: dsurf plot drew nothing" >&2; exit 1; }
echo "== the installed wheel works: $(ls plots/*.png | wc -l) pictures"
