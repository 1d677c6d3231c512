"""The serial engine: one process evaluates every pending chunk in turn and stores it at once."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.grid import Grid, PointList, default_chunk_size, pending_chunks
from ..storage import RunRecorder, Status
from .job import Job, Worker
from .progress import Progress
from .runtime import current_threads, use_threads
from .stop import Interrupted, NoStop, StopRequest


@dataclass
class ChunkResult:
    """What one evaluated chunk leaves behind: its point indices, values and timing record."""

    indices: np.ndarray
    values: dict[str, np.ndarray]
    timing: dict[str, object]


def evaluate_chunk(worker: Worker, grid: Grid | PointList, indices: np.ndarray, *, rank: int) -> ChunkResult:
    """Evaluate the points ``indices`` of ``grid`` with ``worker`` and time it (the record names the
    worker's device, its CPU threads and where it keeps the data too)."""
    start = time.time()
    values = worker.evaluate(grid.offsets(indices))
    timing = {"rank": rank, "host": socket.gethostname(), "device": worker.device, "start": start,
              "seconds": time.time() - start, "threads": current_threads(), "placement": worker.placement}  # fmt: skip
    return ChunkResult(indices, values, timing)


def worker_line(worker: Worker, threads: str) -> str:
    """The line printed as a run starts: how the worker runs, and its threads where it runs on a CPU."""
    return f"{worker.plan}; {threads}" if worker.device == "cpu" else worker.plan


def run_serial(job: Job, *, chunk_size: int | None = None, progress: bool = True, stop: StopRequest | None = None) -> Status:
    """Run ``job`` in this process: prepare its file, evaluate every pending chunk and store each as soon
    as it is done, so that an interrupted run keeps every finished chunk. Returns the file's status:
    ``complete``, or ``interrupted`` where ``stop`` asked to stop first (``unchanged`` where the run was
    to replace a file and stopped before its first chunk: that file is as it was); a failure closes
    the file as ``failed`` and is raised. ``chunk_size``: points per chunk (default: automatic)."""
    stop = stop or NoStop()
    threads = use_threads(1)
    setup = job.prepare(local_rank=0)
    try:
        worker = job.worker(setup, local_rank=0, root=True)
        chunks = pending_chunks(setup.done, chunk_size or default_chunk_size(setup.grid.size))
        recorder = RunRecorder.begin(setup.path, ranks=1, mode="serial", start=setup.start, publish_to=setup.replaces)
        if progress and chunks and worker.plan:
            print(f"dsurf: {worker_line(worker, threads)}", file=sys.stderr)
        bar = Progress(total=int(setup.done.size), initial=int(np.count_nonzero(setup.done)), enabled=progress)
        status = Status.INTERRUPTED  # where a KeyboardInterrupt or a SystemExit ends it
        try:
            complete = compute_chunks(worker, setup.grid, chunks, recorder, progress=bar, stop=stop)
            status = Status.COMPLETE if complete else Status.INTERRUPTED
        except Exception:
            status = Status.FAILED
            raise
        finally:
            bar.close()
            status = recorder.end(status)
    finally:
        job.close()
    return status


def compute_chunks(
    worker: Worker,
    grid: Grid | PointList,
    chunks: Sequence[np.ndarray],
    recorder: RunRecorder,
    *,
    progress: Progress | None = None,
    stop: StopRequest | None = None,
) -> bool:
    """Evaluate ``chunks`` (flat point indices) with ``worker`` and write each chunk to ``recorder``
    as soon as it is done. Returns True when every chunk is done, False when ``stop`` asked to stop
    first."""
    stop = stop or NoStop()
    for indices in chunks:
        if stop.requested:
            return False
        try:
            with stop.abandonable():
                result = evaluate_chunk(worker, grid, indices, rank=0)
        except Interrupted:
            return False
        recorder.write_result(result)
        recorder.stored()
        if progress is not None:
            progress.update(len(indices))
    return True
