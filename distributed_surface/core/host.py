"""What the host machine has to offer: its available memory. Pure Python (no torch)."""

from __future__ import annotations

import os


def host_memory_available() -> int:
    """Bytes of host memory available (MemAvailable), or a guess of 8 GiB where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30
