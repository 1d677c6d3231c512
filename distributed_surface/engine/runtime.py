"""Process-wide settings that a run makes at its start-up, outside the numerical core."""

from __future__ import annotations

import ctypes
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

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


# libgomp (the OpenMP of torch's pip builds) lets a thread that waits for the others spin 300,000
# rounds before it sleeps. Where another process holds a core, the spinning threads wait for one that
# is not running: with two busy processes beside it, the built-in example ran 17-45x slower. A bound of
# 1,000 rounds costs nothing measurable on idle cores (benchmarks/results/load_cpu.md).
SPIN_COUNT = 1000
# The variables by which a user has chosen how OpenMP's threads wait: where one is set, it is kept.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# ``DSURF_THREADS=torch`` keeps torch's and OpenMP's own defaults: no bound on spinning, no threads
# taken away for other work (what runs did before; the load benchmark's baseline).
CHOICE_VARIABLE = "DSURF_THREADS"
# Other work of at least this many cores, seen as the run starts, takes threads away.
BUSY_CORES = 0.5


@dataclass(frozen=True)
class CpuSample:
    """What the cores this process may run on had done at one moment: their busy seconds (every
    process's), this process's own CPU seconds, and the wall clock."""

    cores_busy_s: float
    own_s: float
    wall_s: float


def _cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def sample_cpu(stat: str | None = None) -> CpuSample | None:
    """The cores' busy time from ``/proc/stat`` (its text may be given); None where it cannot be read."""
    try:
        text = Path("/proc/stat").read_text() if stat is None else stat
        hertz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    wanted = {f"cpu{core}" for core in _cores()}
    busy = 0
    for line in text.splitlines():
        name, *fields = line.split()
        if name in wanted and len(fields) >= 8:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
            busy += user + nice + system + irq + softirq + steal
    own = os.times()
    return CpuSample(busy / hertz, own.user + own.system, time.monotonic())


_started: CpuSample | None = None


def prepare_cpu_threads(environ=None) -> None:
    """At a command's start, before torch is imported: bound OpenMP's spinning (:data:`SPIN_COUNT`,
    unless the user chose a wait policy or ``DSURF_THREADS=torch``), and note what the cores have done
    so far, so that :func:`use_threads` can see the other work on them since. (OpenMP reads its
    variables once, when torch loads it: set later, they change nothing.)"""
    global _started
    environ = os.environ if environ is None else environ
    if environ.get(CHOICE_VARIABLE) == "torch":
        return
    if not any(environ.get(name) for name in WAIT_VARIABLES):
        environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    _started = sample_cpu()


def other_work(before: CpuSample | None, after: CpuSample | None, min_window_s: float = 0.3) -> float | None:
    """How many cores other processes kept busy between two samples (this process's own CPU time taken
    out); None where there is no first sample or the window is too short to tell."""
    if before is None or after is None or after.wall_s - before.wall_s < min_window_s:
        return None
    others = (after.cores_busy_s - before.cores_busy_s) - (after.own_s - before.own_s)
    return max(0.0, others / (after.wall_s - before.wall_s))


def threads_beside(busy: float | None, threads: int, cores: int) -> int:
    """Threads for a process alone on its node, whose default is ``threads``, where other work keeps
    ``busy`` of its ``cores`` busy: one fewer for each core taken (at least one); the default where
    little or nothing else runs. Threads that wait for a core another process holds slow the whole
    pass (each parallel region ends when its slowest thread does)."""
    if busy is None or busy < BUSY_CORES:
        return threads
    return max(1, min(threads, cores - round(busy)))


def current_threads() -> int:
    """The CPU threads torch uses now."""
    import torch

    return torch.get_num_threads()


_default: int | None = None


def _torch_default(torch) -> int:
    """torch's threads as first seen: where a process runs several times (tests, a notebook), threads
    taken away for one run's neighbours are given back to the next."""
    global _default
    if _default is None:
        _default = torch.get_num_threads()
    return _default


def use_threads(ranks_on_node: int) -> str:
    """Set torch's threads for this rank (:func:`threads_per_rank`); one line that says how many and why.
    A process alone on its node without either variable keeps torch's own default, less the cores that
    other processes kept busy since the command started (:func:`threads_beside`)."""
    import torch

    threads, source = threads_per_rank(ranks_on_node)
    if ranks_on_node > 1 or source in THREAD_VARIABLES:
        torch.set_num_threads(threads)
        return f"{threads} CPU thread(s) per rank ({source})"
    default = _torch_default(torch)
    busy = other_work(_started, sample_cpu()) if os.environ.get(CHOICE_VARIABLE) != "torch" else None
    threads = threads_beside(busy, default, len(_cores()))
    torch.set_num_threads(threads)
    if threads == default:
        return f"{threads} CPU thread(s) per rank (torch's default)"
    return f"{threads} CPU thread(s) per rank (other work kept {busy:.1f} of {len(_cores())} cores busy as the run started)"


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

