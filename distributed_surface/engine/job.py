"""What the engines run: a job prepares the surface file on rank 0 and builds each rank's worker.

The engines (:mod:`.serial`, :mod:`.mpi`) know nothing of what is computed at a point: they take the
pending points from the file's ``done`` mask, split them into chunks, hand the chunks to workers, and
store the arrays that a worker's ``evaluate`` returns, under their names, through
:class:`~distributed_surface.storage.RunRecorder`. A job is any object with the attributes and methods
of :class:`Job`; ``distributed_surface.run.SurfaceJob`` is the one ``dsurf run`` uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..core.errors import UserError
from ..core.grid import Grid, PointList

Evaluate = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass
class Setup:
    """What rank 0's ``prepare`` leaves for the run: the file's done mask when the run starts, the
    time it started, the file to write (and the one it is to replace, where it is built beside it),
    whatever the job's workers on other ranks need from rank 0 (``shared``: picklable,
    it is broadcast; ``arrays``: numpy arrays, made once by rank 0 and sent to every other rank as raw
    buffers, not pickled, however large: e.g. a tokenised corpus, so that no other rank makes it again
    or waits for a file it cannot see), and what rank 0's own worker may reuse (``local``: never sent;
    dropped where rank 0 only coordinates, to free its memory)."""

    done: np.ndarray
    start: float
    grid: Grid | PointList  # the points: ``grid.offsets(indices)`` are what a worker evaluates
    path: str  # the file the run writes
    replaces: str | None = None  # the file it replaces once it holds a chunk (--overwrite), if any
    created: bool = False  # whether this run made the file (it may then remove it, where it fails at once)
    shared: object = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    local: object = None

    def for_others(self) -> "Setup":
        """What the other ranks are sent, ``arrays`` excepted (the engine sends them on their own)."""
        return Setup(self.done, self.start, self.grid, self.path, self.replaces, self.created, self.shared)


@dataclass
class Worker:
    """One rank's evaluator: ``evaluate(offsets (K, ndim)) -> {measurement name: (K, ...) array}``, the
    device it runs on, a line that says how it runs (rank 0's is printed), and where it keeps its data
    (``device``, ``host`` or ``stream``: recorded with each chunk's timing)."""

    evaluate: Evaluate
    device: str
    plan: str = ""
    placement: str = ""


class Job(Protocol):
    """A surface computation, as the engines see it.

    ``prepare()`` runs on rank 0 only: it checks everything, creates the file (or opens the one to
    resume; a file to replace another is built beside it) and returns the :class:`Setup`; a user
    mistake raises ``UserError`` and changes no file.
    ``worker(setup, local_rank, root)`` runs on every rank that evaluates (rank 0 included, where it
    works), after ``prepare``; on rank 0 it may reuse what ``prepare`` loaded. ``close()`` runs on rank
    0 once the file is closed, however the run ended (it gives back what ``prepare`` took: the lock)."""

    def prepare(self, local_rank: int = 0) -> Setup: ...

    def worker(self, setup: Setup, *, local_rank: int, root: bool) -> Worker: ...

    def close(self) -> None: ...


def raise_collectively(rank: int, error: str | None) -> None:
    """Every rank leaves on a set-up error; only rank 0 reports it, so it is printed once."""
    if error is None:
        return
    if rank == 0:
        raise UserError(error)
    raise SystemExit(2)
