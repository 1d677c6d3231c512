"""The surface file (HDF5): layout, creation, chunk writes, resume checks and reading back.

Layout (see DESIGN.md): root attributes ``format``, ``format_version``, ``config`` (JSON), ``status``,
versions, ``num_samples``, ``measurements`` (JSON: the evaluator's declaration), timestamps;
``xcoordinates`` (and ``ycoordinates``); one dataset per declared measurement (``train_loss``, ...) of
the grid's shape followed by its per-point shape, NaN until computed; ``done`` (uint8);
``directions/x|y/<parameter name>``; ``timings`` (one record per computed chunk) and ``runs`` (one
record per run of the file).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from . import __version__
from .core import measurements as declared
from .core.grid import Grid
from .core.measurements import Measurement
from .errors import UserError

FORMAT = "distributed_surface"
FORMAT_VERSION = 1
DIRECTION_AXES = ("x", "y")
# How a run ends, and so the file's status after it (a file being written is "running").
RUN_STATUSES = ("complete", "interrupted", "failed")

TIMING_DTYPE = np.dtype(
    [
        ("run", "i4"),
        ("rank", "i4"),
        ("host", "S64"),
        ("device", "S32"),
        ("first_index", "i8"),
        ("points", "i4"),
        ("start", "f8"),
        ("seconds", "f8"),
    ]
)
RUN_DTYPE = np.dtype(
    [("start", "f8"), ("end", "f8"), ("status", "S16"), ("ranks", "i4"), ("mode", "S32"), ("host", "S64")]
)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def check_writable(path: str) -> None:
    """Fail early, with one line, where ``path`` cannot be written."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise UserError(f"--out {path!r} is a directory")
    if not parent.is_dir():
        raise UserError(f"--out {path!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UserError(f"--out {path!r}: permission denied")


def create_surface(
    path: str,
    *,
    config_json: str,
    grid: Grid,
    measurements: Sequence[Measurement],
    directions: Sequence[Mapping[str, torch.Tensor]],
    direction_attrs: Mapping[str, object],
    fingerprint: Mapping[str, object],
) -> None:
    """Write a new surface file with nothing computed yet. It is built under a temporary name and then
    renamed over ``path``, so an existing file at ``path`` is replaced whole or not at all."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(temporary, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["config"] = config_json
            f.attrs["status"] = "created"
            f.attrs["created"] = now()
            f.attrs["updated"] = now()
            f.attrs["distributed_surface_version"] = __version__
            f.attrs["torch_version"] = str(torch.__version__)
            f.attrs["h5py_version"] = h5py.__version__
            for key, value in fingerprint.items():
                f.attrs[key] = value
            f.create_dataset("xcoordinates", data=grid.x.coordinates)
            if grid.y is not None:
                f.create_dataset("ycoordinates", data=grid.y.coordinates)
            f.attrs["measurements"] = declared.to_json(measurements)
            for m in measurements:
                # Written in full now (not left to a fill value) so that storage is allocated before any
                # rank of a parallel run writes into it.
                f.create_dataset(m.name, data=np.full(grid.shape + tuple(m.shape), _unset(m.dtype), dtype=m.dtype))
            f.create_dataset("done", data=np.zeros(grid.shape, dtype=np.uint8))
            group = f.create_group("directions")
            for axis, direction in zip(DIRECTION_AXES, directions):
                sub = group.create_group(axis)
                for key, value in direction_attrs.items():
                    sub.attrs[key] = value
                for name, tensor in direction.items():
                    sub.create_dataset(name, data=tensor.detach().cpu().numpy())
            _create_extendable(f, "timings", TIMING_DTYPE, chunk=256)
            _create_extendable(f, "runs", RUN_DTYPE, chunk=16)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _unset(dtype: str):
    """The value of a measurement not computed yet: NaN, or -1 for integers."""
    return np.nan if np.dtype(dtype).kind in "fc" else -1


def _create_extendable(f: h5py.File, name: str, dtype: np.dtype, chunk: int) -> None:
    """An empty 1-D dataset that grows. Its chunks are allocated when it is resized (early allocation),
    a collective step under mpio, so that one rank may later write a record into it on its own:
    allocating a chunk on first write would change the file's metadata from one rank only."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(chunk,), dcpl=dcpl)


def open_checked(path: str, mode: str = "r", **kwargs) -> h5py.File:
    """Open an existing surface file, or raise :class:`UserError` if it is missing or not a surface."""
    if not Path(path).is_file():
        raise UserError(f"{path!r}: no such file")
    if mode == "r":
        # Readers (info, plot, a resume check) must not be locked out by a run that is writing.
        kwargs.setdefault("locking", False)
    try:
        f = h5py.File(path, mode, **kwargs)
    except OSError as exc:
        raise UserError(f"{path!r} is not a readable HDF5 file ({exc})") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise UserError(f"{path!r} is not a distributed_surface file")
    return f


def read_directions(f: h5py.File) -> list[dict[str, torch.Tensor]]:
    """The stored directions, in the file's parameter order."""
    result = []
    for axis in DIRECTION_AXES:
        if axis in f["directions"]:
            group = f["directions"][axis]
            result.append({name: torch.from_numpy(group[name][()]) for name in group})
    return result


@dataclass
class RunRecorder:
    """The surface file during one run: writes chunk results, timing records and the run's history row.

    ``begin`` reserves ``pending`` timing slots (one per chunk to compute) so that writing a chunk never
    changes the file's structure: under the ``mpio`` driver any rank may then write its own chunk
    independently, while structural changes (resizes, attributes) stay in ``begin`` and ``end``, which
    every rank calls. Unused slots keep ``points == 0`` and are ignored on reading.
    """

    file: h5py.File
    is_root: bool = True
    flush_each_chunk: bool = True
    run_index: int = -1
    slot_base: int = 0

    @classmethod
    def begin(
        cls, path: str, *, pending: int, ranks: int, mode: str, start: float, is_root: bool = True, **open_kwargs
    ) -> "RunRecorder":
        """Open ``path`` for a run. Under ``driver="mpio"`` every rank calls this with the same
        arguments; only the root writes the records (data), all make the structural changes."""
        f = open_checked(path, "r+", **open_kwargs)
        parallel = open_kwargs.get("driver") == "mpio"
        recorder = cls(f, is_root=is_root, flush_each_chunk=not parallel)
        # Records are only ever appended, each written once by one rank: rewriting rows in place (to
        # drop the unused slots of interrupted runs, say) would race with the other ranks under mpio.
        timings = f["timings"]
        recorder.slot_base = timings.shape[0]
        timings.resize((recorder.slot_base + pending,))
        runs = f["runs"]
        recorder.run_index = runs.shape[0]
        runs.resize((runs.shape[0] + 1,))
        if is_root:
            row = np.zeros((), dtype=RUN_DTYPE)
            row["start"], row["status"], row["ranks"] = start, b"running", ranks
            row["mode"], row["host"] = mode.encode(), socket.gethostname().encode()[:64]
            runs[recorder.run_index] = row
        f.attrs["status"] = "running"
        f.attrs["updated"] = now()
        f.flush()  # from here on the file's structure is on disk: a killed run leaves it readable
        return recorder

    def write_result(self, result) -> None:
        """Store one chunk (a ``ChunkResult``): its values and its timing record, then its done bits,
        so that a point marked done always has its values and its record, whenever the run is killed.
        (Serially the two steps are flushed in turn; under mpio each write goes straight to MPI-IO.)"""
        indices = np.asarray(result.indices, dtype=np.int64)
        shape = self.file["done"].shape
        for name, array in result.values.items():
            dataset = self.file[name]
            write_points(dataset, shape, indices, np.asarray(array, dtype=dataset.dtype))
        record = np.zeros((), dtype=TIMING_DTYPE)
        record["run"] = self.run_index
        record["first_index"] = int(indices[0])
        record["points"] = len(indices)
        for key in ("rank", "start", "seconds"):
            record[key] = result.timing[key]
        record["host"] = str(result.timing["host"]).encode()[:64]
        record["device"] = str(result.timing["device"]).encode()[:32]
        self.file["timings"][self.slot_base + result.slot] = record
        if self.flush_each_chunk:  # (a flush is collective under mpio)
            self.file.flush()
        write_points(self.file["done"], shape, indices, np.ones(len(indices), dtype=np.uint8))
        if self.flush_each_chunk:
            self.file.flush()

    def end(self, status: str, *, end_time: float | None = None) -> str:
        """Record the run's end and the file's ``status`` (``complete``; ``interrupted`` where points
        are left; ``failed`` where the run failed), close the file and return the status. Collective
        under mpio, like ``begin``."""
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        f = self.file
        if self.is_root:
            runs = f["runs"]
            row = runs[self.run_index]
            row["end"], row["status"] = end_time or time.time(), status.encode()
            runs[self.run_index] = row
        f.attrs["status"] = status
        f.attrs["updated"] = now()
        f.close()
        return status


def write_points(dataset: h5py.Dataset, shape: tuple[int, ...], indices: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` at flat row-major ``indices`` of ``dataset``, one contiguous run of a row at a
    time (h5py selections cannot address a flattened view)."""
    order = np.argsort(indices, kind="stable")
    indices, values = indices[order], values[order]
    rows = indices // shape[1] if len(shape) == 2 else np.zeros_like(indices)
    breaks = np.flatnonzero((np.diff(indices) != 1) | (np.diff(rows) != 0)) + 1
    for segment in np.split(np.arange(len(indices)), breaks):
        first = int(indices[segment[0]])
        if len(shape) == 1:
            dataset[first : first + len(segment)] = values[segment]
        else:
            i, j = divmod(first, shape[1])
            dataset[i, j : j + len(segment)] = values[segment]


@dataclass
class SurfaceData:
    """Everything in a surface file, read into memory (for info, plots and exports)."""

    path: str
    attrs: dict
    config: dict
    x: np.ndarray
    y: np.ndarray | None
    metrics: dict[str, np.ndarray]
    done: np.ndarray
    timings: np.ndarray
    runs: np.ndarray

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", "unknown"))

    @property
    def progress(self) -> tuple[int, int]:
        return int(np.count_nonzero(self.done)), int(self.done.size)


def read_surface(path: str) -> SurfaceData:
    """Read a surface file whole (directions excepted)."""
    with open_checked(path, "r") as f:
        attrs = {key: _plain(value) for key, value in f.attrs.items()}
        timings = f["timings"][()]
        return SurfaceData(
            path=path,
            attrs=attrs,
            config=json.loads(attrs.get("config", "{}")),
            x=f["xcoordinates"][()],
            y=f["ycoordinates"][()] if "ycoordinates" in f else None,
            metrics={m.name: f[m.name][()] for m in stored_measurements(f)},
            done=f["done"][()],
            timings=timings[timings["points"] > 0] if timings.size else timings,
            runs=f["runs"][()],
        )


def stored_measurements(f: h5py.File) -> list[Measurement]:
    """The measurements a surface file holds: its declaration, or (files from before it) every dataset
    named like a measurement with the grid's shape."""
    if "measurements" in f.attrs:
        return declared.from_json(_plain(f.attrs["measurements"]))
    shape = f["done"].shape
    return [
        Measurement(name, str(f[name].dtype), f[name].shape[len(shape):])
        for name in declared.ordered(n for n in f if declared.is_measurement_name(n))
        if isinstance(f[name], h5py.Dataset) and f[name].shape[: len(shape)] == shape
    ]


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
