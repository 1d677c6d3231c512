"""Under load: a run alone on its node bounds OpenMP's spinning and takes threads away for the cores
other processes keep busy (engine/runtime.py; measured in benchmarks/results/load_cpu.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from distributed_surface.engine import runtime
from distributed_surface.engine.runtime import CpuSample, other_work, prepare_cpu_threads, sample_cpu, threads_beside
from helpers import TINY_MODULE


def _stat(busy_jiffies: dict[int, int], idle: int = 1000) -> str:
    """A /proc/stat text whose cores have the given busy jiffies, split over its busy fields."""
    lines = ["cpu  1 1 1 1 1 1 1 1 0 0"]
    for core, busy in busy_jiffies.items():
        user, nice, system, irq, softirq, steal = busy - 5, 1, 1, 1, 1, 1
        lines.append(f"cpu{core} {user} {nice} {system} {idle} 7 {irq} {softirq} {steal} 0 0")
    lines.append("intr 12345")
    return "\n".join(lines) + "\n"


def test_sample_counts_the_busy_fields_of_the_cores_this_process_may_use():
    cores = sorted(os.sched_getaffinity(0))
    other = max(cores) + 1  # a core this process may not run on: left out
    sample = sample_cpu(_stat({**{core: 100 * (i + 1) for i, core in enumerate(cores)}, other: 10**6}))
    hertz = os.sysconf("SC_CLK_TCK")
    expected = sum(100 * (i + 1) for i in range(len(cores))) / hertz  # idle and iowait not counted
    assert sample.cores_busy_s == pytest.approx(expected)


def test_other_work_leaves_out_this_process_and_short_windows():
    before = CpuSample(cores_busy_s=10.0, own_s=1.0, wall_s=100.0)
    # 2 s of wall time: the cores were busy 3.5 s, 1.5 s of them this process's own
    assert other_work(before, CpuSample(13.5, 2.5, 102.0)) == pytest.approx(1.0)
    assert other_work(before, CpuSample(10.5, 1.5, 102.0)) == 0.0  # only ourselves
    assert other_work(before, CpuSample(13.5, 2.5, 100.1)) is None  # too short to tell
    assert other_work(None, CpuSample(13.5, 2.5, 102.0)) is None  # nothing noted at the start


@pytest.mark.parametrize(
    "busy,threads,cores,expected",
    [
        (None, 2, 2, 2),  # nothing known: torch's default
        (0.3, 2, 2, 2),  # little else running
        (1.0, 2, 2, 1),  # one core taken: one thread fewer
        (1.75, 2, 2, 1),  # both nearly taken: one thread, never none
        (1.6, 8, 8, 6),
        (0.9, 4, 16, 4),  # cores to spare beyond torch's default: the default
    ],
)
def test_threads_beside_other_work(busy, threads, cores, expected):
    assert threads_beside(busy, threads, cores) == expected


def test_spinning_is_bounded_unless_the_user_chose(monkeypatch):
    monkeypatch.setattr(runtime, "_started", None)
    environ: dict[str, str] = {}
    prepare_cpu_threads(environ)
    assert environ == {"GOMP_SPINCOUNT": str(runtime.SPIN_COUNT)}
    assert runtime._started is not None  # the start is noted for use_threads
    for chosen in ({"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "50"}, {"DSURF_THREADS": "torch"}):
        environ = dict(chosen)
        prepare_cpu_threads(environ)
        assert environ == chosen


def _threads_line(tmp_path, environ: dict[str, str]) -> str:
    module = tmp_path / "tiny.py"
    module.write_text(textwrap.dedent(TINY_MODULE))
    command = [sys.executable, "-m", "distributed_surface", "run", "--model", f"{module}:model", "--data", f"{module}:data",
               "--x", "-1:1:3", "--no-plot", "--overwrite", "--out", str(tmp_path / "t.h5")]  # fmt: skip
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return next(line for line in done.stderr.splitlines() if "CPU thread" in line)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or torch.get_num_threads() < 2,
                    reason="needs two cores and torch's default of two threads or more")
def test_a_busy_core_beside_the_run_takes_a_thread_away(tmp_path):
    environ = {k: v for k, v in os.environ.items() if k not in ("DSURF_THREADS", "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        line = _threads_line(tmp_path, environ)
        baseline = _threads_line(tmp_path, {**environ, "DSURF_THREADS": "torch"})
    finally:
        busy.kill()
        busy.wait()
    default = int(baseline.split("; ")[-1].split()[0])
    assert "(torch's default)" in baseline
    chosen = int(line.split("; ")[-1].split()[0])
    assert chosen < default, line
    assert "other work kept" in line and "cores busy as the run started" in line
