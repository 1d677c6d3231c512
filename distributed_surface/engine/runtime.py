"""Process-wide settings that a run makes at its start-up, outside the numerical core."""

from __future__ import annotations

import ctypes
import os
import re

# glibc's malloc serves blocks above its mmap threshold (128 KiB at first, raised only as such blocks are
# freed) with fresh mmap()s, and trims freed heap memory at 128 KiB. A CPU forward pass allocates and
# frees activations of 0.1-10 MiB per layer, so every batch paid page faults and zeroing for them: the
# built-in example ran 2.5-3× slower (docs/benchmarks.md).
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


# The environment variables that say how many threads a process is to use, in the order they are
# taken: OpenMP's (set by users and by most launchers' recipes), then SLURM's cores per task.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")


def threads_per_rank(ranks_on_node: int, environ=None) -> tuple[int, str]:
    """Threads for each of ``ranks_on_node`` processes sharing a node's cores, and where the number
    comes from: ``OMP_NUM_THREADS`` or ``SLURM_CPUS_PER_TASK`` where set (the launcher knows the
    machine), else an even share of the cores this process may run on. The right split of cores into
    ranks and threads depends on the machine (benchmarks/results/ranks_threads_cpu.md)."""
    environ = os.environ if environ is None else environ
    for name in THREAD_VARIABLES:
        value = environ.get(name, "").split(",")[0].strip()  # OpenMP's nested form "4,2": the outer level
        if value.isdigit() and int(value) > 0:
            return int(value), name
    cores = os.cpu_count() or 1
    share = max(1, cores // max(1, ranks_on_node))
    try:  # a launcher that binds each rank to its cores (Open MPI does for 2 ranks or fewer) caps the share
        share = max(1, min(share, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        pass
    return share, f"{cores} cores / {ranks_on_node} rank(s) on the node"


def current_threads() -> int:
    """The CPU threads torch uses now."""
    import torch

    return torch.get_num_threads()


def use_threads(ranks_on_node: int) -> str:
    """Set torch's threads for this rank (:func:`threads_per_rank`); one line that says how many and why.
    A process alone on its node without either variable keeps torch's own default."""
    import torch

    threads, source = threads_per_rank(ranks_on_node)
    if ranks_on_node > 1 or source in THREAD_VARIABLES:
        torch.set_num_threads(threads)
    else:
        threads, source = torch.get_num_threads(), "torch's default"
    return f"{threads} CPU thread(s) per rank ({source})"


# Where MPI launchers (Open MPI, MPICH) and SLURM say how many ranks share this node.
LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE")


def ranks_on_node(environ=None) -> int:
    """How many processes of this job share the node (and its memory), from the launcher's environment;
    1 where it says nothing. (Read before MPI is set up: the data is loaded first.)"""
    environ = os.environ if environ is None else environ
    for name in LOCAL_SIZE_VARIABLES:
        digits = re.match(r"\d+", environ.get(name, ""))  # SLURM's "2(x3)": 2 tasks on each of 3 nodes
        if digits and int(digits.group()) > 0:
            return int(digits.group())
    return 1

