"""The serial engine: one process evaluates every pending chunk in turn and stores it at once."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence

import numpy as np

from ..core.grid import Grid
from ..storage import RunRecorder

Evaluate = Callable[[np.ndarray], dict[str, np.ndarray]]


def run_serial(
    evaluate: Evaluate,
    grid: Grid,
    chunks: Sequence[np.ndarray],
    recorder: RunRecorder,
    *,
    device: str,
    progress=None,
) -> None:
    """Evaluate ``chunks`` (flat point indices) with ``evaluate`` and write each chunk to ``recorder``
    as soon as it is done, so that an interrupted run keeps every finished chunk."""
    host = socket.gethostname()
    for slot, indices in enumerate(chunks):
        start = time.time()
        values = evaluate(grid.offsets(indices))
        seconds = time.time() - start
        timing = {"rank": 0, "host": host, "device": device, "start": start, "seconds": seconds}
        recorder.write_chunk(indices, values, slot=slot, timing=timing)
        if progress is not None:
            progress.update(len(indices))
