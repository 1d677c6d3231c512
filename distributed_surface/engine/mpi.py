"""The distributed engine: ``mpirun -np N dsurf run ...`` (or ``srun``). The only module that imports
MPI.

Rank 0 coordinates: it prepares the run (checks, loads, makes the directions, creates the file), then
hands out chunks dynamically, one at a time, to whichever worker asks next, so a slow GPU never holds
the others back. By default rank 0 also works: its coordinator runs in a thread beside its own worker
loop (``--rank0 coordinate`` keeps rank 0 to coordinating). Every worker keeps its model, θ0, the
directions and the data resident on its own device.

Storage: with a parallel h5py, every rank opens the file with the ``mpio`` driver and each worker
writes its own chunks; without one, workers send their results to rank 0, which writes them.

Failure: an exception on any rank after set-up prints that rank's message and aborts the whole job
(``MPI_Abort``); the file keeps every chunk finished before it.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import traceback

import h5py
import numpy as np
import torch
from mpi4py import MPI

from ..config import RunConfig
from ..core.grid import guided_chunks, pending_chunks
from ..errors import UserError
from ..problem import resolve_device
from ..run import (
    Prepared,
    announce_plan,
    fingerprint,
    load_problem,
    make_evaluator,
    prepare,
    progress_bar,
    start_file,
)
from ..storage import RunRecorder
from .serial import ChunkResult, evaluate_chunk
from .stop import Interrupted, StopRequest

TAG_REQUEST = 11  # worker -> coordinator: the chunk just finished (or None), and a request for the next
TAG_ASSIGN = 12  # coordinator -> worker: (slot, indices) of the next chunk, or None: stop
# The coordinator polls rather than blocks (a blocking receive spins a core in Open MPI), so it leaves the
# CPU to the workers: after each message it looks again at once, then sleeps from 1 ms doubling to 8 ms
# while no worker asks. (A fixed 2 ms cost 1-2% of a core at 64 ranks: benchmarks/results/scaling_cpu.md.)
POLL_MIN_SECONDS = 0.001
POLL_MAX_SECONDS = 0.008


def io_mode() -> str:
    """``mpio`` where h5py was built with MPI (unless DSURF_IO=gather asks otherwise), else ``gather``."""
    if os.environ.get("DSURF_IO") == "gather" or not h5py.get_config().mpi:
        return "gather"
    return "mpio"


def run_distributed(config: RunConfig, *, resume: bool, overwrite: bool, progress: bool) -> str:
    """Run this rank's part of the distributed computation; return the file's final status.

    A user mistake found in set-up is reported once, by rank 0, and every rank exits with it; any other
    failure on any rank aborts the whole job."""
    try:
        # From the start, on every rank (mpirun and srun pass signals on to all of them): a warning
        # that comes while the model loads must not kill the rank; it stops the run at its first chunk.
        # Until the file is closed, too: a second signal must not cut the collective close short.
        with StopRequest() as stop:
            return _run_distributed(config, resume=resume, overwrite=overwrite, progress=progress, stop=stop)
    except (UserError, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001
        _abort(exc)


def _run_distributed(
    config: RunConfig, *, resume: bool, overwrite: bool, progress: bool, stop: StopRequest
) -> str:
    comm = MPI.COMM_WORLD.Dup()
    rank, size = comm.Get_rank(), comm.Get_size()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this node
    local_rank, local_size = node.Get_rank(), node.Get_size()
    mode = io_mode()
    rank0_works = config.rank0 == "work"
    if rank0_works and MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        _say(rank, "MPI lacks THREAD_MULTIPLE: rank 0 coordinates only")
        rank0_works = False

    # 1. Rank 0 checks everything and prepares the file; the others wait for its verdict.
    setup, error, evaluator = None, None, None
    if rank == 0:
        try:
            prepared, prints = prepare(config, resume=resume, overwrite=overwrite, local_rank=local_rank)
            evaluator = make_evaluator(prepared)
            done = start_file(prepared, evaluator, prints)
            if not rank0_works:
                evaluator = None  # (free its device memory: rank 0 only coordinates)
            directions = [{k: v.numpy() for k, v in d.items()} for d in prepared.directions]
            setup = {"prints": prints, "directions": directions, "done": done, "start": time.time()}
        except UserError as exc:
            error = str(exc)
    error, setup = comm.bcast((error, setup), root=0)
    _raise_collectively(rank, error)

    # 2. The other ranks load the problem themselves and check they got the same θ0 and data.
    if rank != 0:
        try:
            device = resolve_device(config.device, local_rank)
            problem = load_problem(config)
            if fingerprint(problem) != setup["prints"]:
                raise UserError("loaded other weights or data than rank 0 (is the checkpoint or data set the same?)")
            directions = [{k: torch.from_numpy(v) for k, v in d.items()} for d in setup["directions"]]
            evaluator = make_evaluator(Prepared(config, problem, device, directions, resuming=True))
        except UserError as exc:
            error = f"rank {rank} on {socket.gethostname()}: {exc}"
    errors = comm.allgather(error)
    _raise_collectively(rank, next((e for e in errors if e), None))

    # 3. Open the file (every rank under mpio; rank 0 alone in gather mode) and compute.
    done = setup["done"]
    # Without --chunk-size, chunks shrink towards the end (guided), so the run ends evenly on all ranks.
    workers = size if rank0_works else size - 1
    chunks = pending_chunks(done, config.chunk_size) if config.chunk_size else guided_chunks(done, workers)
    recorder = None
    if mode == "mpio" or rank == 0:
        recorder = RunRecorder.begin(
            config.out,
            pending=len(chunks),
            ranks=size,
            mode=f"mpi-{mode}" + ("" if rank0_works else "-dedicated"),
            start=setup["start"],
            is_root=rank == 0,
            **({"driver": "mpio", "comm": comm} if mode == "mpio" else {}),
        )
    device_name = str(evaluator.device) if evaluator is not None else "none"
    if evaluator is not None and evaluator.device.type == "cpu":
        # Ranks sharing a node's cores: give each its share rather than every rank all the cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))

    def work():
        _work(comm, evaluator, config, recorder if mode == "mpio" else None, device_name, stop)

    complete = False
    if rank == 0:
        if evaluator is not None:
            announce_plan(evaluator, progress and bool(chunks))
        bar = progress_bar(total=int(done.size), initial=int(np.count_nonzero(done)), enabled=progress)
        outcome = {}

        def coordinate():
            gather = recorder if mode == "gather" else None
            outcome["finished"] = _coordinate(comm, chunks, workers, gather, bar, stop)

        if rank0_works:
            thread = threading.Thread(target=_guarded, args=(coordinate,), name="dsurf-coordinator", daemon=True)
            thread.start()
            _guarded(work)
            thread.join()
        else:
            _guarded(coordinate)
        bar.close()
        complete = outcome["finished"] == len(chunks)
    else:
        _guarded(work)
    complete, end_time = comm.bcast((complete, time.time()), root=0)
    if recorder is not None:
        recorder.end(complete, end_time=end_time)
    return "complete" if complete else "interrupted"


def _raise_collectively(rank: int, error: str | None) -> None:
    """Every rank leaves on a set-up error; only rank 0 reports it, so it is printed once."""
    if error is None:
        return
    if rank == 0:
        raise UserError(error)
    raise SystemExit(2)


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


def _coordinate(comm: MPI.Comm, chunks, workers: int, gather_recorder, bar, stop: StopRequest) -> int:
    """Hand ``chunks`` out one at a time to whichever worker asks; return how many were finished.
    Once any rank reports a stop request (or rank 0 has one), no more chunks are handed out: every
    worker is told to stop at its next request."""
    next_slot, finished, active = 0, 0, workers
    stopping = False
    status = MPI.Status()
    pause = POLL_MIN_SECONDS
    while active:
        if not comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_REQUEST, status=status):
            time.sleep(pause)
            pause = min(2 * pause, POLL_MAX_SECONDS)
            continue
        pause = POLL_MIN_SECONDS
        source = status.Get_source()
        report, worker_stopping = comm.recv(source=source, tag=TAG_REQUEST)
        stopping = stopping or worker_stopping or stop.requested
        if report is not None:
            if gather_recorder is not None:
                gather_recorder.write_result(report)
            finished += 1
            bar.update(report.indices.size if isinstance(report, ChunkResult) else report)
        if next_slot < len(chunks) and not stopping:
            comm.send((next_slot, chunks[next_slot]), dest=source, tag=TAG_ASSIGN)
            next_slot += 1
        else:
            comm.send(None, dest=source, tag=TAG_ASSIGN)
            active -= 1
    return finished


def _work(comm: MPI.Comm, evaluator, config: RunConfig, recorder, device: str, stop: StopRequest) -> None:
    """Ask for chunks until told to stop; evaluate each, write it (mpio) or send it to rank 0. A stop
    request is passed on to the coordinator with the next request."""
    rank, grid = comm.Get_rank(), config.grid
    report = None
    while True:
        comm.send((report, stop.requested), dest=0, tag=TAG_REQUEST)
        assignment = comm.recv(source=0, tag=TAG_ASSIGN)
        if assignment is None:
            return
        slot, indices = assignment
        report = None
        try:
            with stop.abandonable():
                result = evaluate_chunk(evaluator.evaluate, grid, slot, indices, rank=rank, device=device)
        except Interrupted:
            continue  # abandoned: the coordinator hears of the stop with the next request
        if recorder is not None:
            recorder.write_result(result)
            report = len(indices)
        else:
            report = result
