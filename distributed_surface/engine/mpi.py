"""The distributed engine: ``mpirun -np N dsurf run ...`` (or ``srun``). The only module that imports
MPI.

Rank 0 coordinates: it prepares the job (checks, loads, makes the directions, creates the file), then
hands out chunks dynamically, one at a time, to whichever worker asks next, so a slow GPU never holds
the others back. By default rank 0 also works: its coordinator runs in a thread beside its own worker
loop (``rank0="coordinate"`` keeps rank 0 to coordinating). Each worker is built by the job on its
own rank, with the GPU of its node-local rank.

Storage: with a parallel h5py, every rank opens the file with the ``mpio`` driver and each worker
writes its own chunks; without one, workers send their results to rank 0, which writes them.

Failure: a user mistake on any rank in set-up is reported once, by rank 0. A batch the model or loss
fails on (a ``UserError`` from ``evaluate``) is reported to the coordinator, which stops handing out
chunks; every rank then closes the file as ``failed`` and rank 0 raises the error. Any other exception
prints that rank's message and aborts the whole job (``MPI_Abort``). Either way the file keeps every
chunk finished before it.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
from mpi4py import MPI

from ..core.errors import UserError
from ..core.grid import guided_chunks, pending_chunks
from ..storage import RunRecorder, Status, io_mode
from .job import Job, raise_collectively
from .progress import Progress
from .runtime import use_threads
from .serial import ChunkResult, evaluate_chunk, worker_line
from .stop import Interrupted, StopRequest

TAG_REQUEST = 11  # worker -> coordinator: the chunk just finished (or None), and a request for the next
TAG_ASSIGN = 12  # coordinator -> worker: the point indices of the next chunk, or None: stop
# The coordinator polls rather than blocks (a blocking receive spins a core in Open MPI), so it leaves the
# CPU to the workers: after each message it looks again at once, then sleeps from 1 ms doubling to 8 ms
# while no worker asks (benchmarks/results/scaling_cpu.md).
POLL_MIN_SECONDS = 0.001
POLL_MAX_SECONDS = 0.008
# The largest piece of an array one broadcast sends (1 GiB: below the 2**31 - 1 elements of an MPI count).
BROADCAST_PIECE_BYTES = 1 << 30


def run_distributed(
    job: Job, *, chunk_size: int | None = None, rank0: str = "work", progress: bool = True, stop: StopRequest
) -> Status:
    """Run this rank's part of ``job``; return the file's final status (``complete`` or ``interrupted``;
    a failed run raises ``UserError`` on rank 0 and ``SystemExit(2)`` elsewhere). ``chunk_size``: points
    per chunk (default: guided chunks that shrink towards the end)."""
    with aborting():
        return _run_distributed(job, chunk_size=chunk_size, rank0=rank0, progress=progress, stop=stop)


@contextlib.contextmanager
def aborting():
    """A user mistake (``UserError``, or ``SystemExit`` on the ranks that leave with it) goes on to the
    caller; any other exception aborts every rank of the job, so that none is left waiting."""
    try:
        yield
    except (UserError, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001
        _abort(exc)


def _run_distributed(job: Job, *, chunk_size: int | None, rank0: str, progress: bool, stop: StopRequest) -> Status:
    comm = MPI.COMM_WORLD.Dup()
    rank, size = comm.Get_rank(), comm.Get_size()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this node
    # Before any model is built or timed: ranks sharing a node's cores take their share of them.
    threads = use_threads(node.Get_size())
    mode = io_mode()
    rank0_works = rank0 == "work"
    if rank0_works and MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        _say(rank, "MPI lacks THREAD_MULTIPLE: rank 0 coordinates only")
        rank0_works = False

    # 1. Rank 0 checks everything and prepares the file; the others wait for its verdict.
    setup, error = None, None
    if rank == 0:
        try:
            setup = job.prepare(local_rank=node.Get_rank())
        except UserError as exc:
            error = str(exc)
    error, shared = comm.bcast((error, setup.for_others() if setup else None), root=0)
    raise_collectively(rank, error)
    arrays = broadcast_arrays(comm, setup.arrays if rank == 0 else None)
    if rank != 0:
        setup = shared
        setup.arrays = arrays
    elif not rank0_works:
        setup.local, setup.arrays = None, {}  # (frees rank 0's evaluator and data: it only coordinates)
    try:
        return _compute(job, setup, comm, node, mode=mode, rank0_works=rank0_works, chunk_size=chunk_size,
                        progress=progress, stop=stop, threads=threads)  # fmt: skip
    finally:
        if rank == 0:
            job.close()


def _compute(job: Job, setup, comm, node, *, mode: str, rank0_works: bool, chunk_size, progress: bool, stop,
             threads: str) -> Status:  # fmt: skip
    """Build the workers, open the file and compute: the part of a run after rank 0's set-up."""
    rank, size = comm.Get_rank(), comm.Get_size()
    local_rank = node.Get_rank()
    works = rank != 0 or rank0_works
    error = None

    # 2. Every working rank builds its worker (rank 0 from what it prepared).
    worker = None
    if works:
        try:
            worker = job.worker(setup, local_rank=local_rank, root=rank == 0)
        except UserError as exc:
            error = str(exc) if rank == 0 else f"rank {rank} on {socket.gethostname()}: {exc}"
    errors = comm.allgather(error)
    error = next((e for e in errors if e), None)
    if error and rank == 0 and (setup.replaces is not None or setup.created):
        Path(setup.path).unlink(missing_ok=True)  # made by this run, never written (the file it replaces stays)
    raise_collectively(rank, error)

    # 3. Open the file (every rank under mpio; rank 0 alone in gather mode) and compute.
    done = setup.done
    workers = size if rank0_works else size - 1
    chunks = []  # (rank 0 hands them out)
    if rank == 0:
        chunks = pending_chunks(done, chunk_size) if chunk_size else guided_chunks(done, workers)
    recorder = None
    if mode == "mpio" or rank == 0:
        try:
            recorder = RunRecorder.begin(
                setup.path,
                ranks=size,
                mode=f"mpi-{mode}" + ("" if rank0_works else "-dedicated"),
                start=setup.start,
                is_root=rank == 0,
                publish_to=setup.replaces,
                **({"driver": "mpio", "comm": comm} if mode == "mpio" else {}),
            )
        except UserError as exc:  # (every rank must hear of it: the others would wait for chunks)
            error = str(exc)
    errors = comm.allgather(error)
    raise_collectively(rank, next((e for e in errors if e), None))

    def work():
        _work(comm, worker, setup.grid, recorder if mode == "mpio" else None, stop)

    outcome = {"finished": 0, "failure": None}
    if rank == 0:
        if progress and chunks and worker is not None and worker.plan:
            print(f"dsurf: {worker_line(worker, threads)}", file=sys.stderr, flush=True)
        bar = Progress(total=int(done.size), initial=int(np.count_nonzero(done)), enabled=progress)

        def coordinate():
            gather = recorder if mode == "gather" else None
            outcome["finished"], outcome["failure"] = _coordinate(comm, chunks, workers, recorder, gather, bar, stop)

        if rank0_works:
            thread = threading.Thread(target=_guarded, args=(coordinate,), name="dsurf-coordinator", daemon=True)
            thread.start()
            _guarded(work)
            thread.join()
        else:
            _guarded(coordinate)
        bar.close()
    else:
        _guarded(work)
    if outcome["failure"]:
        status = Status.FAILED
    else:
        status = Status.COMPLETE if outcome["finished"] == len(chunks) else Status.INTERRUPTED
    status, failure, end_time = comm.bcast((status, outcome["failure"], time.time()), root=0)
    if recorder is not None:
        status = recorder.end(status, end_time=end_time)
    if failure:
        if rank == 0:
            raise UserError(failure)
        raise SystemExit(2)
    return status


def broadcast_arrays(comm: MPI.Comm, arrays: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Rank 0's ``arrays`` on every rank: their names, shapes and dtypes pickled, their bytes sent as
    buffers in pieces of at most ``BROADCAST_PIECE_BYTES`` (an MPI count is a C int), never pickled."""
    if comm.Get_rank() == 0:
        arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
        layout = {name: (a.shape, a.dtype.str) for name, a in arrays.items()}
    else:
        layout = None
    layout = comm.bcast(layout, root=0)
    if comm.Get_rank() != 0:
        arrays = {name: np.empty(shape, dtype=np.dtype(dtype)) for name, (shape, dtype) in layout.items()}
    for name in layout:
        data = arrays[name].reshape(-1).view(np.uint8)
        for start in range(0, data.size, BROADCAST_PIECE_BYTES):
            comm.Bcast([data[start : start + BROADCAST_PIECE_BYTES], MPI.BYTE], root=0)
    return arrays


class World:
    """Every rank of the job, for a task they run in step (``dsurf hessian``: each holds a part of the
    data, and sums what it computes with the others): this rank, how many, the rank on its node, sums
    over all ranks, and the first error any rank met. ``threads``: as :class:`~.task.LocalWorld`'s."""

    threads = ""

    def __init__(self):
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()

    def sum(self, array: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(array)
        total = np.empty_like(array)
        self.comm.Allreduce(array, total, op=MPI.SUM)
        return total

    def verdict(self, error: str | None) -> str | None:
        return next((e for e in self.comm.allgather(error) if e), None)


def _say(rank: int, message: str) -> None:
    print(f"dsurf: rank {rank}: {message}", file=sys.stderr, flush=True)


def _guarded(action) -> None:
    """Run ``action``; on any exception abort the whole job, so that no rank is left waiting for a
    message that will never come."""
    try:
        action()
    except BaseException as exc:  # noqa: BLE001 - whatever it is, the job must end
        _abort(exc)


def _abort(exc: BaseException) -> None:
    """Print this rank's failure and end every rank of the job."""
    rank = MPI.COMM_WORLD.Get_rank()
    detail = "" if isinstance(exc, UserError) else "\n" + traceback.format_exc()
    print(
        f"dsurf: error: rank {rank} on {socket.gethostname()} failed: {type(exc).__name__}: {exc}{detail}",
        file=sys.stderr,
        flush=True,
    )
    MPI.COMM_WORLD.Abort(1)


def _coordinate(comm: MPI.Comm, chunks, workers: int, recorder, gather_recorder, bar: Progress, stop: StopRequest):
    """Hand ``chunks`` out one at a time to whichever worker asks; return how many were finished and
    the first failure reported (or None). Rank 0's ``recorder`` hears of every stored chunk; in gather
    mode (``gather_recorder``) the coordinator writes them itself. Once any rank reports a stop request or a failure (or rank 0
    has a stop request), no more chunks are handed out: every worker is told to stop at its next
    request."""
    next_chunk, finished, active = 0, 0, workers
    stopping, failure = False, None
    status = MPI.Status()
    pause = POLL_MIN_SECONDS
    while active:
        if not comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_REQUEST, status=status):
            time.sleep(pause)
            pause = min(2 * pause, POLL_MAX_SECONDS)
            continue
        pause = POLL_MIN_SECONDS
        source = status.Get_source()
        report, worker_stopping, worker_failure = comm.recv(source=source, tag=TAG_REQUEST)
        failure = failure or worker_failure
        stopping = stopping or worker_stopping or stop.requested or failure is not None
        if report is not None:
            if gather_recorder is not None:
                gather_recorder.write_result(report)
            recorder.stored()
            finished += 1
            bar.update(report.indices.size if isinstance(report, ChunkResult) else report)
        if next_chunk < len(chunks) and not stopping:
            comm.send(chunks[next_chunk], dest=source, tag=TAG_ASSIGN)
            next_chunk += 1
        else:
            comm.send(None, dest=source, tag=TAG_ASSIGN)
            active -= 1
    return finished, failure


def _work(comm: MPI.Comm, worker, grid, recorder, stop: StopRequest) -> None:
    """Ask for chunks until told to stop; evaluate each, write it (mpio) or send it to rank 0. A stop
    request, or the message of a batch the job's evaluation failed on, goes to the coordinator with the
    next request."""
    rank = comm.Get_rank()
    report, failure = None, None
    while True:
        comm.send((report, stop.requested, failure), dest=0, tag=TAG_REQUEST)
        assignment = comm.recv(source=0, tag=TAG_ASSIGN)
        if assignment is None:
            return
        indices = assignment
        report = None
        try:
            with stop.abandonable():
                result = evaluate_chunk(worker, grid, indices, rank=rank)
        except Interrupted:
            continue  # abandoned: the coordinator hears of the stop with the next request
        except UserError as exc:
            failure = f"rank {rank} on {socket.gethostname()}: {exc}" if comm.Get_size() > 1 else str(exc)
            continue
        if recorder is not None:
            recorder.write_result(result)
            report = len(indices)
        else:
            report = result

