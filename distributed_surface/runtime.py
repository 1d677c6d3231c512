"""Process-wide settings that a run makes at its start-up, outside the numerical core."""

from __future__ import annotations

import ctypes
import os

# glibc's malloc serves blocks above its mmap threshold (128 KiB at first, raised only as such blocks are
# freed) with fresh mmap()s, and trims freed heap memory at 128 KiB. A CPU forward pass allocates and
# frees activations of 0.1-10 MiB per layer, so every batch paid page faults and zeroing for them: the
# built-in example ran 2.5-3× slower (benchmarks/README.md).
MALLOC_MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest allowed value on 64-bit
MALLOC_TRIM_THRESHOLD_BYTES = 64 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt() parameters, from glibc's malloc.h


def keep_freed_host_memory() -> None:
    """Keep freed activation memory in the process for the next batch (glibc only; elsewhere nothing).
    Process-wide, like the MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ environment variables,
    which take precedence where set."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc: its allocator is its own
        pass
