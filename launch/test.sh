#!/usr/bin/env bash
# Runs the whole test suite (unit, engine and MPI tests) in the virtual environment made by
# launch/setup.sh, running that set-up first where the environment is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${DSURF_VENV:-.venv}
[ -x "$venv/bin/dsurf" ] || bash launch/setup.sh
# Open MPI refuses root without these; tests oversubscribe the 2-core machines on purpose.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec "$venv/bin/python" -m pytest -q "$@"
