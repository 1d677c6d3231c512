"""The surface file (HDF5): layout, creation, chunk writes, resume checks and reading back.

Layout (see DESIGN.md): root attributes ``format``, ``format_version``, ``config`` (JSON), ``status``,
versions, ``num_samples``, ``measurements`` (JSON: the evaluator's declaration), timestamps;
``xcoordinates`` (and ``ycoordinates``); one dataset per declared measurement (``train_loss``, ...) of
the grid's shape followed by its per-point shape, NaN until computed; ``done`` (uint8);
``directions/x|y/<parameter name>``; ``timings`` (one record per grid point: the chunk that computed
it) and ``runs`` (a ring of ``MAX_RUNS`` records, one per run of the file).

Crash safety: the file's structure never changes after it is created. Every dataset is contiguous and
written in full at creation (so its disk blocks exist: a full disk shows then, not mid-run), the
timing and run records are reserved then, and the attributes that change (``status``, ``updated``)
are fixed-size strings rewritten in place. A run only ever overwrites bytes that already exist, so a
SIGKILL at any single write leaves a file that opens and resumes. A point's values and timing record
are written before its done bit, so a point marked done always has both.

h5py is imported here and in legacy.py only; torch is not imported at all (a reader such as ``dsurf
info`` starts fast).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .core import measurements as declared
from .core.grid import Grid, PointList
from .core.measurements import Measurement
from .errors import UserError

FORMAT = "distributed_surface"
# 2: records reserved at creation (a timing slot per point, a ring of run slots), status rewritten in place
FORMAT_VERSION = 2
DIRECTION_AXES = ("x", "y")
# How a run ends, and so the file's status after it. A file being written is "running" (also a file
# whose run was killed without warning: no run holds its lock then).
RUN_STATUSES = ("complete", "interrupted", "failed")
STATUSES = ("running", *RUN_STATUSES)
# What a run that was to replace a file (--overwrite) and stopped before its first chunk leaves: the
# old file, as it was. Not a status of any file.
UNCHANGED = "unchanged"
MAX_RUNS = 256  # run records kept; older ones are overwritten in turn
_STATUS_DTYPE, _STAMP_DTYPE = np.dtype("S16"), np.dtype("S32")
# Datasets are written in blocks of this many bytes at creation (memory stays bounded on huge grids).
_BLOCK_BYTES = 16 * 2**20
# Beyond the datasets' bytes: HDF5's metadata and the attributes, with a margin (measured: ~40 kB for
# the built-in example, ~1 kB for each dataset's header).
_OVERHEAD_BYTES = 64 * 2**10
_DATASET_OVERHEAD_BYTES = 2 * 2**10

TIMING_DTYPE = np.dtype(
    [
        ("run", "i4"),
        ("rank", "i4"),
        ("host", "S64"),
        ("device", "S32"),
        ("first_index", "i8"),  # the chunk's first point: the chunk's name within its run
        ("points", "i4"),  # the chunk's points; 0 in a slot not written yet
        ("start", "f8"),
        ("seconds", "f8"),
        ("threads", "i4"),  # the rank's CPU threads (absent from files made before it was recorded)
        ("placement", "S8"),  # where the rank kept the data: device, host or stream (also absent there)
    ]
)
RUN_DTYPE = np.dtype(
    [
        ("index", "i4"),  # the run's number, from 0; -1 in a slot not used yet
        ("start", "f8"),
        ("end", "f8"),
        ("status", "S16"),
        ("ranks", "i4"),
        ("mode", "S32"),
        ("host", "S64"),
    ]
)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _fixed(text: str, dtype: np.dtype) -> np.ndarray:
    return np.array(text.encode()[: dtype.itemsize], dtype=dtype)


# ---------------------------------------------------------------- before a file is written


def check_writable(path: str) -> None:
    """Fail early, with one line, where ``path`` cannot be written: a directory (or a path ending in
    a separator), a missing directory, a read-only file system, no permission."""
    text = os.fspath(path)
    target = Path(text)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir() or text.endswith(("/", os.sep)):
        raise UserError(f"--out {text!r} is a directory; name the surface file, e.g. {str(target / 'surface.h5')!r}")
    if not parent.is_dir():
        raise UserError(f"--out {text!r}: directory {str(parent)!r} does not exist")
    if _read_only(parent):
        raise UserError(f"--out {text!r}: {str(parent)!r} is on a read-only file system")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UserError(f"--out {text!r}: permission denied")


def _read_only(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def surface_bytes(grid_size: int, measurements: Sequence[Measurement], direction_bytes: int = 0, datasets: int = 0) -> int:
    """The size of a new surface file: its datasets, the reserved records and HDF5's overhead
    (``datasets``: how many direction tensors it stores)."""
    per_point = 1 + TIMING_DTYPE.itemsize  # done bit, timing slot
    for m in measurements:
        per_point += np.dtype(m.dtype).itemsize * int(np.prod(m.shape, dtype=np.int64))
    overhead = _OVERHEAD_BYTES + _DATASET_OVERHEAD_BYTES * (datasets + len(measurements) + 5)
    return grid_size * per_point + direction_bytes + MAX_RUNS * RUN_DTYPE.itemsize + overhead


def check_space(path: str, nbytes: int, *, replacing: bool = False) -> None:
    """Refuse, with one line, a file of ``nbytes`` that the disk under ``path`` cannot hold (the old
    file being replaced stays until the new one holds a chunk, so it counts against the space)."""
    parent = Path(path).parent if str(Path(path).parent) else Path(".")
    try:
        free = shutil.disk_usage(parent).free
    except OSError:
        return
    if nbytes > free:
        extra = " (the file it replaces stays until the new one holds its first chunk)" if replacing else ""
        raise UserError(f"--out {path!r}: the surface file needs {_size(nbytes)}, the disk has {_size(free)} free{extra}")


def _size(nbytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if nbytes < 1000 or unit == "TB":
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1000
    return f"{nbytes:.3g} TB"


# ---------------------------------------------------------------- creating a file


def temporary_path(path: str) -> Path:
    """Where a new file is built before it is published under ``path``: hidden, next to it, named
    after this process."""
    target = Path(path)
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


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


def publish(temporary: Path, path: str) -> None:
    """Rename a finished temporary file over ``path``, in one step."""
    os.replace(temporary, path)


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
    """Write a new surface file with nothing computed yet under :func:`temporary_path` and return that
    path; :func:`publish` then puts it in place (an existing file at ``path`` is replaced whole or not
    at all). ``attrs``: further root attributes (fingerprint, versions); ``direction_attrs``: what the
    directions' kind records (on ``directions`` and on each axis); ``trajectory``: the checkpoints'
    projections (``x``, ``y``, ``names``, ``explained_variance_ratio``). Out of space, it raises
    :class:`UserError` and leaves nothing behind."""
    temporary = temporary_path(path)
    try:
        with h5py.File(temporary, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["config"] = config_json
            # The run that creates the file is running on it. (Fixed size: rewritten in place.)
            f.attrs.create("status", _fixed("running", _STATUS_DTYPE))
            f.attrs["created"] = now()
            f.attrs.create("updated", _fixed(now(), _STAMP_DTYPE))
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
        _remove(temporary)
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


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


# ---------------------------------------------------------------- opening a file


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


def check_resumable(f: h5py.File, path: str) -> None:
    """Refuse to resume a file of another format version (its records are laid out otherwise)."""
    version = int(f.attrs.get("format_version", 0))
    if version != FORMAT_VERSION:
        raise UserError(
            f"--resume: {path!r} is in format version {version} (this is {FORMAT_VERSION}); it can be read, "
            "plotted and exported, but a run continues only files of this version: start anew with --overwrite"
        )


def read_directions(f: h5py.File) -> list[dict[str, np.ndarray]]:
    """The stored directions, in the file's parameter order."""
    result = []
    for axis in DIRECTION_AXES:
        if axis in f["directions"]:
            group = f["directions"][axis]
            result.append({name: np.asarray(group[name][()]) for name in group})  # (0-d ones too)
    return result


# ---------------------------------------------------------------- a run


@dataclass
class RunRecorder:
    """The surface file during one run: writes chunk results, timing records and the run's record.

    Nothing here changes the file's structure. Under the ``mpio`` driver any rank writes its own chunks
    independently (raw data into storage allocated at creation); ``begin`` and ``end`` are collective
    (every rank calls them: they rewrite attributes), and only the root writes the run's record.

    A file built under a temporary name to replace another (``--overwrite``) is published over it by
    the root once it holds a chunk (:meth:`stored`); a run that ends before that removes it, so the
    old file stays.
    """

    file: h5py.File
    path: str
    is_root: bool = True
    flush_each_chunk: bool = True
    run_index: int = 0
    publish_to: str | None = None

    @classmethod
    def begin(
        cls,
        path: str,
        *,
        ranks: int,
        mode: str,
        start: float,
        is_root: bool = True,
        publish_to: str | None = None,
        **open_kwargs,
    ) -> "RunRecorder":
        """Open ``path`` for a run. Under ``driver="mpio"`` every rank calls this with the same
        arguments. The run's record is written (root), then the file's status: a kill between the two
        leaves the previous status and this run's record as "running", which ``dsurf info`` reads as
        killed."""
        try:
            # HDF5's own file lock is left out: the run holds the surface's lock (lock.py), and a reader
            # that opened the file with h5py's defaults must not stop a run from starting.
            f = h5py.File(path, "r+", locking=False, **open_kwargs)
        except OSError as exc:
            raise UserError(f"{path!r}: cannot open it to write ({exc})") from None
        parallel = open_kwargs.get("driver") == "mpio"
        runs = f["runs"][()]
        recorder = cls(f, path, is_root=is_root, flush_each_chunk=not parallel, publish_to=publish_to)
        recorder.run_index = int(runs["index"].max()) + 1 if len(runs) else 0
        if parallel:  # the root's own record must not be read by a rank that reads after it is written
            recorder.run_index = open_kwargs["comm"].bcast(recorder.run_index, root=0)
        if is_root:
            row = np.zeros((), dtype=RUN_DTYPE)
            row["index"], row["start"], row["status"], row["ranks"] = recorder.run_index, start, b"running", ranks
            row["mode"], row["host"] = mode.encode()[:32], socket.gethostname().encode()[:64]
            f["runs"][recorder.run_index % MAX_RUNS] = row
            if not parallel:
                f.flush()  # the record on disk before the status (under mpio it went straight to MPI-IO)
        f.attrs.modify("status", _fixed("running", _STATUS_DTYPE))
        f.attrs.modify("updated", _fixed(now(), _STAMP_DTYPE))
        f.flush()
        return recorder

    def write_result(self, result) -> None:
        """Store one chunk (a ``ChunkResult``): its values and each point's timing record, then its
        done bits, so that a point marked done always has its values and its record, whenever the run
        is killed. (Serially the two steps are flushed in turn; under mpio each write goes straight to
        MPI-IO.)"""
        indices = np.asarray(result.indices, dtype=np.int64)
        shape = self.file["done"].shape
        try:
            for name, array in result.values.items():
                dataset = self.file[name]
                write_points(dataset, shape, indices, np.asarray(array, dtype=dataset.dtype))
            timings = self.file["timings"]
            record = np.zeros(len(indices), dtype=timings.dtype)  # (a file made by an earlier version has fewer fields)
            record["run"] = self.run_index
            record["first_index"] = int(indices.min()) if len(indices) else 0
            record["points"] = len(indices)
            for key in ("rank", "start", "seconds", "threads"):
                if key in record.dtype.names:
                    record[key] = result.timing.get(key, 0)
            record["host"] = str(result.timing["host"]).encode()[:64]
            record["device"] = str(result.timing["device"]).encode()[:32]
            if "placement" in record.dtype.names:
                record["placement"] = str(result.timing.get("placement", "")).encode()[:8]
            write_points(timings, (timings.shape[0],), indices, record)
            if self.flush_each_chunk:  # (a flush is collective under mpio)
                self.file.flush()
            write_points(self.file["done"], shape, indices, np.ones(len(indices), dtype=np.uint8))
            if self.flush_each_chunk:
                self.file.flush()
        except OSError as exc:
            raise UserError(
                f"{self.path!r}: writing a chunk failed ({exc}); every chunk written before it is kept, "
                "--resume continues"
            ) from None

    def stored(self) -> None:
        """A chunk is in the file: where this file is to replace another, it does so now (root only)."""
        if self.publish_to is not None and self.is_root:
            if self.flush_each_chunk:
                self.file.flush()
            publish(Path(self.path), self.publish_to)
            self.path, self.publish_to = self.publish_to, None

    def end(self, status: str, *, end_time: float | None = None) -> str:
        """Record the run's end and the file's ``status`` (``complete``; ``interrupted`` where points
        are left; ``failed`` where the run failed), close the file and return the status, or
        ``unchanged`` where this file was to replace another and never held a chunk (it is removed; the
        other stays as it was). Collective under mpio, like ``begin``. The status is written before the
        run's record: a kill between the two leaves the file's status right and the run's record
        "running" (read as killed)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        f = self.file
        f.attrs.modify("status", _fixed(status, _STATUS_DTYPE))
        f.attrs.modify("updated", _fixed(now(), _STAMP_DTYPE))
        f.flush()  # on disk before the record: HDF5 would otherwise write the record first
        if self.is_root:
            runs = f["runs"]
            row = runs[self.run_index % MAX_RUNS]
            row["end"], row["status"] = end_time or time.time(), status.encode()
            runs[self.run_index % MAX_RUNS] = row
        f.close()
        if self.publish_to is not None:  # not one chunk: the old file stays
            if self.is_root:
                _remove(Path(self.path))
            return UNCHANGED
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


# ---------------------------------------------------------------- reading a file


@dataclass
class SurfaceData:
    """Everything in a surface file, read into memory (for info, plots and exports). ``timings``: one
    record per chunk; ``point_runs``: the run that computed each point (-1: none yet; None in files
    that kept no record per point)."""

    path: str
    attrs: dict
    config: dict
    x: np.ndarray
    y: np.ndarray | None
    metrics: dict[str, np.ndarray]
    done: np.ndarray
    timings: np.ndarray
    runs: np.ndarray
    point_runs: np.ndarray | None = None
    points: np.ndarray | None = None  # (n, ndim) offsets where the surface is a list of points
    curve: np.ndarray | None = None  # which curve each point is on (a Bézier curve: 0; its straight line: 1)
    frame: dict = field(default_factory=dict)  # what the directions' kind recorded (kind, sources, markers)
    trajectory: dict | None = None  # the checkpoints' projections, for a trajectory's surface

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
        done = f["done"][()]
        timings, point_runs = _chunk_records(f["timings"][()], per_point=int(attrs.get("format_version", 1)) >= 2)
        if point_runs is not None:  # a point killed between its record and its done bit counts as not computed
            point_runs = np.where(done.reshape(-1) != 0, point_runs, -1)
        return SurfaceData(
            path=path,
            attrs=attrs,
            config=json.loads(attrs.get("config", "{}")),
            x=f["xcoordinates"][()],
            y=f["ycoordinates"][()] if "ycoordinates" in f else None,
            metrics={m.name: f[m.name][()] for m in stored_measurements(f)},
            done=done,
            timings=timings,
            runs=_run_records(f["runs"][()]),
            point_runs=point_runs,
            points=f["points"][()] if "points" in f else None,
            curve=f["curve"][()] if "curve" in f else None,
            frame=read_frame(f),
            trajectory=_trajectory(f),
        )


def read_frame(f: h5py.File) -> dict:
    """What the directions' kind recorded: kind, sources and markers (decoded), and the rest."""
    attrs = {key: _plain(value) for key, value in f["directions"].attrs.items()} if "directions" in f else {}
    if "x" in f.get("directions", {}) and "kind" not in attrs:  # files from before: on each axis
        attrs.update({key: _plain(value) for key, value in f["directions"]["x"].attrs.items()})
    for key in ("sources", "markers"):
        attrs[key] = json.loads(attrs[key]) if isinstance(attrs.get(key), str) else []
    return attrs


def _trajectory(f: h5py.File) -> dict | None:
    if "trajectory" not in f:
        return None
    group = f["trajectory"]
    return {
        "x": group["x"][()],
        "y": group["y"][()],
        "names": [_plain(n) for n in group["names"][()]],
        "explained_variance_ratio": np.asarray(group.attrs["explained_variance_ratio"]),
    }


def _chunk_records(records: np.ndarray, per_point: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """One timing record per chunk, in the order they ran; and each point's run (per-point files)."""
    written = records[records["points"] > 0] if records.size else records
    if not per_point:
        return written, None
    point_runs = np.where(records["points"] > 0, records["run"], -1)
    _, first = np.unique(np.stack([written["run"], written["first_index"]], axis=1), axis=0, return_index=True)
    chunks = written[np.sort(first)] if written.size else written
    return chunks[np.argsort(chunks["start"], kind="stable")], point_runs


def _run_records(rows: np.ndarray) -> np.ndarray:
    """The runs' records in the order they ran (the ring's used slots, by run number)."""
    if "index" not in (rows.dtype.names or ()):
        return rows
    used = rows[rows["index"] >= 0]
    return used[np.argsort(used["index"], kind="stable")]


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
    if isinstance(value, bytes):  # fixed-size strings (np.bytes_) too
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------- Hessian spectrum files (dsurf hessian)

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
    ``density`` and the config; built beside ``path`` and renamed over it in one step."""
    temporary = temporary_path(path)
    try:
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
        publish(temporary, path)
    except BaseException as exc:
        _remove(temporary)
        if isinstance(exc, OSError):
            raise UserError(f"--out {path!r}: writing the spectrum failed ({exc})") from None
        raise


def is_spectrum(path: str) -> bool:
    """Whether ``path`` is a Hessian spectrum file (rather than a surface)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            return _plain(f.attrs.get("format")) == SPECTRUM_FORMAT
    except OSError:
        return False


def read_spectrum(path: str) -> SpectrumData:
    if not Path(path).is_file():
        raise UserError(f"{path!r}: no such file")
    with h5py.File(path, "r", locking=False) as f:
        attrs = {key: _plain(value) for key, value in f.attrs.items()}
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
