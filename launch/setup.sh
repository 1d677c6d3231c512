#!/usr/bin/env bash
# Installs everything distributed_surface needs on a Debian machine: Open MPI and parallel HDF5
# (Debian packages, when run as root), then a virtual environment (.venv, or $DSURF_VENV) with
# mpi4py, torch, matplotlib, an h5py built against parallel HDF5, and this package (editable).
# On a cluster, load your site's MPI and HDF5 modules first and run with DSURF_SKIP_APT=1.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${DSURF_VENV:-.venv}
# These machines keep a CPU build of torch 2.13.0 locally; on a GPU machine the same pin resolves to
# the ordinary CUDA build. Override with DSURF_TORCH="torch==X" or DSURF_TORCH="torch".
torch_spec=${DSURF_TORCH:-torch==2.13.0}

if [ "${DSURF_SKIP_APT:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # strace: the crash tests kill a run at each of its writes with it; chromium, chromium-driver: the
  # test that opens dsurf report's page in a headless browser (selenium drives it, never downloading one)
  pkgs="openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config strace chromium chromium-driver"
  if ! dpkg -s $pkgs >/dev/null 2>&1; then
    echo "== installing Debian packages: $pkgs"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "== creating virtual environment $venv"
  python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
echo "== installing Python packages"
"${pip[@]}" --upgrade pip
"${pip[@]}" "$torch_spec" mpi4py numpy Cython pkgconfig setuptools packaging wheel \
  matplotlib plotly scikit-learn scipy tqdm transformers datasets peft pytest selenium vtk pyhessian mkdocs mkdocs-material
# (plotly: dsurf report; selenium: its browser test; datasets: --data hf-dataset:DIR; peft: LoRA adapter folders as --to; vtk: the tests read the .vtp/.vts exports back; pyhessian: the tests compare the Hessian with it;
# mkdocs, mkdocs-material: the documentation in docs/, which CI and a test build with --strict)

if ! "$venv/bin/python" -c 'import h5py, sys; sys.exit(0 if h5py.get_config().mpi else 1)' 2>/dev/null; then
  echo "== building h5py against parallel HDF5 (about 2 minutes)"
  HDF5_MPI=ON CC=mpicc HDF5_PKGCONFIG_NAME=hdf5-openmpi "${pip[@]}" --no-cache-dir --no-binary=h5py \
    --no-build-isolation --force-reinstall --no-deps h5py
fi
"${pip[@]}" --no-build-isolation -e .
"$venv/bin/python" -c 'import h5py; print("== h5py", h5py.__version__, "parallel:", h5py.get_config().mpi)'
echo "== ready: $venv/bin/dsurf"
