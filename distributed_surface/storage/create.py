"""Creating a surface file: written whole under a temporary name beside ``--out``, with nothing
computed, then published (renamed over ``--out``); and the temporaries that killed runs left.

Crash safety: the file's structure never changes after it is created. Every dataset is contiguous and
written in full here (so its disk blocks exist: a full disk shows now, not mid-run), and the timing and
run records are reserved now; a run only ever overwrites bytes that already exist (:mod:`.recorder`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..core import measurements as declared
from ..core.grid import Grid, PointList
from ..core.measurements import Measurement
from ..core.errors import UserError
from .atomic import remove, temporary_path
from .layout import (
    DIRECTION_AXES,
    FORMAT,
    FORMAT_VERSION,
    MAX_RUNS,
    RUN_DTYPE,
    STAMP_DTYPE,
    STATUS_DTYPE,
    TIMING_DTYPE,
    fixed,
    now,
)
from .status import Status

# Datasets are written in blocks of this many bytes at creation (memory stays bounded on huge grids).
_BLOCK_BYTES = 16 * 2**20


def leftover_temporaries(path: str) -> list[Path]:
    """Temporary files of ``path`` that runs which died left behind. (Call with the lock held: only
    the lock's holder makes them, so no live run owns these.)"""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    mine = temporary_path(path).name
    prefix = f".{target.name}."
    return sorted(
        parent / name
        for name in os.listdir(parent)
        if name.startswith(prefix) and name.endswith(".tmp") and name[len(prefix) : -4].isdigit() and name != mine
    )


def create_surface(
    path: str,
    *,
    config_json: str,
    grid: Grid | PointList,
    measurements: Sequence[Measurement],
    directions: Sequence[Mapping[str, np.ndarray]],
    direction_attrs: Mapping[str, object],
    attrs: Mapping[str, object],
    trajectory: Mapping[str, object] | None = None,
) -> Path:
    """Write a new surface file with nothing computed yet under :func:`~.atomic.temporary_path` and
    return that path; :func:`~.atomic.publish` then puts it in place (an existing file at ``path`` is
    replaced whole or not at all). ``attrs``: further root attributes (fingerprint, versions);
    ``direction_attrs``: what the directions' kind records (on ``directions`` and on each axis);
    ``trajectory``: the checkpoints' projections (``x``, ``y``, ``names``, ``explained_variance_ratio``).
    Out of space, it raises :class:`UserError` and leaves nothing behind."""
    temporary = temporary_path(path)
    try:
        with h5py.File(temporary, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["config"] = config_json
            # The run that creates the file is running on it. (Fixed size: rewritten in place.)
            f.attrs.create("status", fixed(Status.RUNNING, STATUS_DTYPE))
            f.attrs["created"] = now()
            f.attrs.create("updated", fixed(now(), STAMP_DTYPE))
            f.attrs["distributed_surface_version"] = __version__
            f.attrs["h5py_version"] = h5py.__version__
            for key, value in attrs.items():
                f.attrs[key] = value
            f.attrs["measurements"] = declared.to_json(measurements)
            if isinstance(grid, PointList):
                f.attrs["layout"] = "points"
                f.create_dataset("xcoordinates", data=grid.parameter)
                f.create_dataset("points", data=grid.coordinates)
                if grid.curve is not None:
                    f.create_dataset("curve", data=grid.curve)
            else:
                f.attrs["layout"] = "grid"
                f.create_dataset("xcoordinates", data=grid.x.coordinates)
                if grid.y is not None:
                    f.create_dataset("ycoordinates", data=grid.y.coordinates)
            for m in measurements:
                _filled(f, m.name, grid.shape + tuple(m.shape), np.dtype(m.dtype), _unset(m.dtype))
            _filled(f, "done", grid.shape, np.dtype(np.uint8), 0)
            group = f.create_group("directions")
            for key, value in direction_attrs.items():
                group.attrs[key] = value
            for axis, direction in zip(DIRECTION_AXES, directions):
                sub = group.create_group(axis)
                for key, value in direction_attrs.items():
                    sub.attrs[key] = value
                for name, array in direction.items():
                    sub.create_dataset(name, data=np.asarray(array))
            if trajectory is not None:
                track = f.create_group("trajectory")
                track.create_dataset("x", data=np.asarray(trajectory["x"], dtype=np.float64))
                track.create_dataset("y", data=np.asarray(trajectory["y"], dtype=np.float64))
                track.create_dataset("names", data=[str(n).encode() for n in trajectory["names"]])
                track.attrs["explained_variance_ratio"] = np.asarray(trajectory["explained_variance_ratio"])
            _filled(f, "timings", (grid.size,), TIMING_DTYPE, np.zeros((), TIMING_DTYPE))
            empty_run = np.zeros((), RUN_DTYPE)
            empty_run["index"] = -1
            _filled(f, "runs", (MAX_RUNS,), RUN_DTYPE, empty_run)
    except BaseException as exc:
        remove(temporary)
        if isinstance(exc, OSError) and _out_of_space(exc):
            raise UserError(f"--out {path!r}: out of disk space while creating the surface file ({exc})") from None
        raise
    return temporary


def _filled(f: h5py.File, name: str, shape: tuple[int, ...], dtype: np.dtype, fill) -> None:
    """A contiguous dataset written in full with ``fill``: its storage is allocated and on disk before
    any run (or any rank of a parallel run) writes into it."""
    dataset = f.create_dataset(name, shape=shape, dtype=dtype)
    flat_rows = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    rows = max(1, _BLOCK_BYTES // max(1, dtype.itemsize * flat_rows))
    for start in range(0, shape[0], rows):
        stop = min(start + rows, shape[0])
        dataset[start:stop] = np.full((stop - start, *shape[1:]), fill, dtype=dtype)


def _unset(dtype: str):
    """The value of a measurement not computed yet: NaN, or -1 for integers."""
    return np.nan if np.dtype(dtype).kind in "fc" else -1


def _out_of_space(exc: OSError) -> bool:
    return exc.errno == 28 or "No space left" in str(exc) or "file write failed" in str(exc)
