"""Checks before a surface file is written: that ``--out`` can be written, how large the file will be,
and that the disk holds it. They change nothing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.measurements import Measurement
from ..core.errors import UserError
from .atomic import check_target
from .layout import MAX_RUNS, RUN_DTYPE, TIMING_DTYPE

# Beyond the datasets' bytes: HDF5's metadata and the attributes, with a margin (measured: ~40 kB for
# the built-in example, ~1 kB for each dataset's header).
_OVERHEAD_BYTES = 64 * 2**10
_DATASET_OVERHEAD_BYTES = 2 * 2**10


def check_writable(path: str) -> None:
    """Fail early, with one line, where ``path`` cannot be written: a directory (or a path ending in
    a separator), not a regular file, a missing directory, a read-only file system, no permission."""
    text = os.fspath(path)
    target = Path(text)
    if target.is_dir() or text.endswith(("/", os.sep)):
        raise UserError(f"--out {text!r} is a directory; name the surface file, e.g. {str(target / 'surface.h5')!r}")
    check_target(text)
    if target.exists() and not os.access(target, os.W_OK):
        raise UserError(f"--out {text!r}: permission denied")


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
