"""A collective task: every rank computes one result together (not in chunks), and rank 0 writes it.

``dsurf hessian`` is one: each rank holds a part of the data and sums its Hessian-vector products with
the others', so all ranks run the same iterations in step. The engine runs a task with the contract
of a chunked :class:`~.job.Job`: rank 0 prepares (checks the output, takes the file's lock with the
leftovers of dead runs removed) and every rank hears its verdict; every rank loads, and a mistake on
any rank ends them all, reported once by rank 0; every rank computes; rank 0 writes. In one process
(:class:`LocalWorld`) or on every MPI rank (:class:`.mpi.World`).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Protocol

import numpy as np

from ..core.errors import UserError
from .job import raise_collectively
from .launcher import world_size
from .runtime import use_threads

Say = Callable[[str], None]


class LocalWorld:
    """One process alone: what :class:`~.mpi.World` is for a task, for a run without MPI. ``threads``:
    the line that says how many CPU threads each rank uses (set by the engine)."""

    rank, size, local_rank, local_size = 0, 1, 0, 1
    threads = ""

    def sum(self, array: np.ndarray) -> np.ndarray:
        return array

    def verdict(self, error: str | None) -> str | None:
        """The first error of any rank (here: this one's)."""
        return error


class Task(Protocol):
    """A collective computation, as the engine sees it.

    ``prepare()`` runs on rank 0 only, first: it checks the output and takes what the task holds while
    it runs (the file's lock); a user mistake raises ``UserError`` and changes no file.
    ``load(world)`` runs on every rank once rank 0 prepared: it loads what the rank computes on.
    ``compute(loaded, world, say)`` runs on every rank in step (sums over ``world``); ``say`` prints a
    line of progress (rank 0's, where progress is shown). ``write(result)`` runs on rank 0: it stores the
    result and returns what :func:`run_task` returns there. ``close()`` runs on rank 0 however the task
    ended (it gives back what ``prepare`` took)."""

    def prepare(self) -> None: ...

    def load(self, world) -> object: ...

    def compute(self, loaded, world, say: Say) -> object: ...

    def write(self, result) -> object: ...

    def close(self) -> None: ...


def run_task(task: Task, *, progress: bool = True):
    """Run ``task`` on every MPI rank where this process is one of several, else in this process.
    Returns what ``task.write`` returned (rank 0), None on the other ranks."""
    if world_size() > 1:
        from .mpi import World, aborting

        with aborting():  # (no rank may be left waiting in a sum)
            return run_collective(task, World(), progress=progress)
    return run_collective(task, LocalWorld(), progress=progress)


def run_collective(task: Task, world, *, progress: bool):
    """``task`` on ``world`` (this rank's part): see the module's contract."""
    try:
        error = None
        if world.rank == 0:
            try:
                task.prepare()
            except UserError as exc:
                error = str(exc)
        raise_collectively(world.rank, world.verdict(error))
        # Before any model is built: ranks sharing a node's cores take their share of them.
        world.threads = use_threads(world.local_size)
        loaded, error = None, None
        try:
            loaded = task.load(world)
        except UserError as exc:
            error = str(exc) if world.rank == 0 else f"rank {world.rank} on {socket.gethostname()}: {exc}"
        raise_collectively(world.rank, world.verdict(error))
        show = world.rank == 0 and progress
        say = (lambda text: print(f"dsurf: {text}", file=sys.stderr, flush=True)) if show else (lambda text: None)
        result = task.compute(loaded, world, say)
        return task.write(result) if world.rank == 0 else None
    finally:
        if world.rank == 0:
            task.close()
