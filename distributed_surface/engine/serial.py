"""The serial engine: one process evaluates every pending chunk in turn and stores it at once."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.grid import Grid
from ..storage import RunRecorder
from .stop import Interrupted, NoStop, StopRequest

Evaluate = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass
class ChunkResult:
    """What one evaluated chunk leaves behind: its point indices, values and timing record."""

    slot: int
    indices: np.ndarray
    values: dict[str, np.ndarray]
    timing: dict[str, object]


def evaluate_chunk(evaluate: Evaluate, grid: Grid, slot: int, indices: np.ndarray, *, rank: int, device: str) -> ChunkResult:
    """Evaluate the points ``indices`` of ``grid`` and time it."""
    start = time.time()
    values = evaluate(grid.offsets(indices))
    timing = {"rank": rank, "host": socket.gethostname(), "device": device, "start": start, "seconds": time.time() - start}
    return ChunkResult(slot, indices, values, timing)


def run_serial(
    evaluate: Evaluate,
    grid: Grid,
    chunks: Sequence[np.ndarray],
    recorder: RunRecorder,
    *,
    device: str,
    progress=None,
    stop: StopRequest | None = None,
) -> bool:
    """Evaluate ``chunks`` (flat point indices) with ``evaluate`` and write each chunk to ``recorder``
    as soon as it is done, so that an interrupted run keeps every finished chunk. Returns True when
    every chunk is done, False when ``stop`` asked to stop first."""
    stop = stop or NoStop()
    for slot, indices in enumerate(chunks):
        if stop.requested:
            return False
        try:
            with stop.abandonable():
                result = evaluate_chunk(evaluate, grid, slot, indices, rank=0, device=device)
        except Interrupted:
            return False
        recorder.write_result(result)
        if progress is not None:
            progress.update(len(indices))
    return True
