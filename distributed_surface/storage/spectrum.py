"""The Hessian spectrum file of ``dsurf hessian``: eigenvalues and eigenvectors at θ0, the smallest
eigenvalue, the trace and the spectral density."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..core.errors import UserError
from .atomic import write_atomically
from .layout import now, plain

SPECTRUM_FORMAT = "distributed_surface_hessian"


@dataclass
class SpectrumData:
    """A Hessian spectrum file, read whole but for its eigenvectors."""

    path: str
    attrs: dict
    config: dict
    eigenvalues: np.ndarray
    min_eigenvalue: float
    trace: float
    trace_stderr: float
    density_grid: np.ndarray
    density: np.ndarray


def write_spectrum(
    path: str,
    *,
    config_json: str,
    eigenvalues: np.ndarray,
    eigenvectors: Mapping[str, np.ndarray],
    min_eigenvalue: float,
    trace: float,
    trace_stderr: float,
    density_grid: np.ndarray,
    density: np.ndarray,
    attrs: Mapping[str, object],
) -> None:
    """Write a Hessian spectrum file: ``eigenvalues`` (top k, descending), ``eigenvectors/<name>`` (k
    of each parameter's shape), ``min_eigenvalue``, ``trace``, ``trace_stderr``, ``density_grid``,
    ``density`` and the config; built beside ``path`` and renamed over it in one step (an existing file
    only where it is a spectrum file)."""

    def write(temporary: Path) -> None:
        with h5py.File(temporary, "w") as f:
            f.attrs["format"] = SPECTRUM_FORMAT
            f.attrs["format_version"] = 1
            f.attrs["config"] = config_json
            f.attrs["created"] = now()
            f.attrs["distributed_surface_version"] = __version__
            f.attrs["h5py_version"] = h5py.__version__
            for key, value in attrs.items():
                f.attrs[key] = value
            f.create_dataset("eigenvalues", data=np.asarray(eigenvalues, dtype=np.float64))
            group = f.create_group("eigenvectors")
            for name, array in eigenvectors.items():
                group.create_dataset(name, data=np.asarray(array))
            for name, value in (("min_eigenvalue", min_eigenvalue), ("trace", trace), ("trace_stderr", trace_stderr)):
                f.create_dataset(name, data=np.float64(value))
            f.create_dataset("density_grid", data=np.asarray(density_grid, dtype=np.float64))
            f.create_dataset("density", data=np.asarray(density, dtype=np.float64))

    # (dsurf hessian refused an existing file that is not a spectrum before it computed; this holds if
    # one appeared since)
    write_atomically(path, write, ours=is_spectrum, who="dsurf hessian", force_flag=None)


def is_spectrum(path: str) -> bool:
    """Whether ``path`` is a Hessian spectrum file (rather than a surface). Only a regular file is
    opened (a FIFO would block the read)."""
    if not Path(path).is_file():
        return False
    try:
        with h5py.File(path, "r", locking=False) as f:
            return plain(f.attrs.get("format")) == SPECTRUM_FORMAT
    except OSError:
        return False


def read_spectrum(path: str) -> SpectrumData:
    if not Path(path).is_file():
        raise UserError(f"{path!r}: no such file")
    with h5py.File(path, "r", locking=False) as f:
        attrs = {key: plain(value) for key, value in f.attrs.items()}
        if attrs.get("format") != SPECTRUM_FORMAT:
            raise UserError(f"{path!r} is not a Hessian spectrum file")
        return SpectrumData(
            path=path,
            attrs=attrs,
            config=json.loads(attrs.get("config", "{}")),
            eigenvalues=f["eigenvalues"][()],
            min_eigenvalue=float(f["min_eigenvalue"][()]),
            trace=float(f["trace"][()]),
            trace_stderr=float(f["trace_stderr"][()]),
            density_grid=f["density_grid"][()],
            density=f["density"][()],
        )


def read_eigenvectors(path: str) -> dict[str, np.ndarray]:
    with h5py.File(path, "r", locking=False) as f:
        return {name: f["eigenvectors"][name][()] for name in f["eigenvectors"]}
