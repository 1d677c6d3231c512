"""A run's writes into its surface file: each chunk's values, timing records and done bits, and the
run's record and the file's status.

Crash safety: nothing here changes the file's structure (made whole by :mod:`.create`); a run only ever
overwrites bytes that already exist, so a SIGKILL at any single write leaves a file that opens and
resumes. A point's values and timing record are written before its done bit, so a point marked done
always has both. The attributes that change (``status``, ``updated``) are fixed-size strings rewritten in
place.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..core.errors import UserError
from .atomic import publish, remove
from .layout import MAX_RUNS, RUN_DTYPE, STAMP_DTYPE, STATUS_DTYPE, fixed, now
from .status import RUN_STATUSES, Status


def io_mode() -> str:
    """How the ranks of an MPI run write the file: ``mpio`` (each its own chunks) where h5py was built
    with MPI (unless DSURF_IO=gather asks otherwise), else ``gather`` (rank 0 writes them all)."""
    if os.environ.get("DSURF_IO") == "gather" or not h5py.get_config().mpi:
        return "gather"
    return "mpio"


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
            # HDF5's own file lock is left out: the run holds the surface's lock (:mod:`.lock`), and a reader
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
            row["index"], row["start"], row["status"], row["ranks"] = recorder.run_index, start, Status.RUNNING.encode(), ranks
            row["mode"], row["host"] = mode.encode()[:32], socket.gethostname().encode()[:64]
            f["runs"][recorder.run_index % MAX_RUNS] = row
            if not parallel:
                f.flush()  # the record on disk before the status (under mpio it went straight to MPI-IO)
        f.attrs.modify("status", fixed(Status.RUNNING, STATUS_DTYPE))
        f.attrs.modify("updated", fixed(now(), STAMP_DTYPE))
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

    def end(self, status: Status, *, end_time: float | None = None) -> Status:
        """Record the run's end and the file's ``status`` (``complete``; ``interrupted`` where points
        are left; ``failed`` where the run failed), close the file and return the status, or
        ``unchanged`` where this file was to replace another and never held a chunk (it is removed; the
        other stays as it was). Collective under mpio, like ``begin``. The status is written before the
        run's record: a kill between the two leaves the file's status right and the run's record
        "running" (read as killed)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        status = Status(status)
        f = self.file
        f.attrs.modify("status", fixed(status, STATUS_DTYPE))
        f.attrs.modify("updated", fixed(now(), STAMP_DTYPE))
        f.flush()  # on disk before the record: HDF5 would otherwise write the record first
        if self.is_root:
            runs = f["runs"]
            row = runs[self.run_index % MAX_RUNS]
            row["end"], row["status"] = end_time or time.time(), status.encode()
            runs[self.run_index % MAX_RUNS] = row
        f.close()
        if self.publish_to is not None:  # not one chunk: the old file stays
            if self.is_root:
                remove(Path(self.path))
            return Status.UNCHANGED
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
