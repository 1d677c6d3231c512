"""The surface file's layout: its format's name and version, the datasets' names, the records' dtypes,
and the fixed-size attributes rewritten in place (the full format: ``docs/format.md``)."""

from __future__ import annotations

import time

import numpy as np

FORMAT = "distributed_surface"
# 2: records reserved at creation (a timing slot per point, a ring of run slots), status rewritten in place
FORMAT_VERSION = 2
DIRECTION_AXES = ("x", "y")
MAX_RUNS = 256  # run records kept; older ones are overwritten in turn
STATUS_DTYPE, STAMP_DTYPE = np.dtype("S16"), np.dtype("S32")

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


def fixed(text: str, dtype: np.dtype) -> np.ndarray:
    """``text`` as a fixed-size string of ``dtype`` (an attribute rewritten in place keeps its size)."""
    return np.array(text.encode()[: dtype.itemsize], dtype=dtype)


def plain(value):
    """An attribute or scalar dataset as Python: bytes decoded, numpy scalars unwrapped."""
    if isinstance(value, bytes):  # fixed-size strings (np.bytes_) too
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return plain(value.item())
    if isinstance(value, np.generic):
        return value.item()
    return value
