"""Crash safety, tested the way SQLite tests it: a small run is killed with SIGKILL at every one of its
disk writes in turn (a first run and a resume, serially, and on rank 0 and on rank 1 of ``mpirun -np
2``). After each kill the file must be read by ``dsurf info`` without a traceback, and ``--resume``
must complete it to the uninterrupted values with no point that was done computed again.

strace injects the kill (``-e inject=pwrite64:signal=KILL:when=N``): every write a run makes to its
files is a ``pwrite64`` (HDF5's sec2 driver, MPI-IO, the lock file); the renames and unlinks of the run
(publishing a new file, removing the lock) are killed at too. Slow (minutes): CI runs it; the fast tier
leaves it out (``-m "not mpi and not slurm and not crash"``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from distributed_surface import cli
from distributed_surface.storage import read_surface
from helpers import TINY_MODULE

pytestmark = pytest.mark.crash

STRACE = shutil.which("strace")
MPIRUN = shutil.which("mpirun")
if STRACE is None:  # pragma: no cover - launch/setup.sh installs it
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI must run the crash tests, and strace is not installed (launch/setup.sh installs it)")
    pytest.skip("strace is not installed (launch/setup.sh installs it)", allow_module_level=True)

GRID = ["--x", "-1:1:3", "--y", "-1:1:3", "--chunk-size", "3"]  # 9 points in 3 chunks
SYSCALLS = ("pwrite64", "rename", "unlink")
OUT = "s.h5"
# The tiny problem, and a model that asks its own process to stop (SIGUSR1: finish the chunk, then
# stop) at its n-th forward pass where DSURF_TEST_USR1_AT=n: a partial file, made the way a SLURM
# warning makes one.
CRASH_MODULE = TINY_MODULE + '''

import os
import signal


class _Signalling(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = model()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if str(self.calls) == os.environ.get("DSURF_TEST_USR1_AT"):
            os.kill(os.getpid(), signal.SIGUSR1)
        return self.inner(x)


def signalling_model():
    return _Signalling()
'''


def run_args(*extra: str) -> list[str]:
    """The run, in its working directory (every copy of the problem is the same surface: the paths are
    relative)."""
    return ["run", "--model", "crashy.py:signalling_model", "--data", "crashy.py:data", *GRID, "--out", OUT,
            "--no-plot", "--no-progress", *extra]  # fmt: skip


@contextlib.contextmanager
def working_directory(directory: Path):
    before = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(before)


def python(*args: str) -> list[str]:
    return [sys.executable, "-m", "distributed_surface", *args]


def traced(args: list[str], syscall: str | None = None, when: int | None = None, log: Path | None = None) -> list[str]:
    """``args`` under strace: logging the calls of SYSCALLS to ``log``, or killed at the ``when``-th call
    of ``syscall``."""
    command = [STRACE, "-f", "-qq", "-o", str(log) if log else os.devnull, "-e", f"trace={','.join(SYSCALLS)}"]
    if syscall is not None:
        command += ["-e", f"inject={syscall}:signal=KILL:when={when}"]
    return [*command, "--", *args]


def calls_in(log: Path) -> dict[str, int]:
    """How many calls of each syscall the traced process made (all from one thread: strace counts its
    injections per thread, so the kill points are exactly these)."""
    counts = dict.fromkeys(SYSCALLS, 0)
    pids = set()
    for line in log.read_text().splitlines():
        pid, _, rest = line.partition(" ")
        name = rest.strip().split("(", 1)[0]
        if name in counts:
            counts[name] += 1
            pids.add(pid)
    assert len(pids) <= 1, f"writes from several threads: {sorted(pids)}"
    return counts


@pytest.fixture(scope="module")
def env():
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")


@pytest.fixture(scope="module")
def base(tmp_path_factory, env):
    """A directory with the problem module, the uninterrupted surface and a partial one (one chunk
    done, stopped by SIGUSR1)."""
    root = tmp_path_factory.mktemp("crash")
    (root / "crashy.py").write_text(textwrap.dedent(CRASH_MODULE))
    complete = root / "complete"
    complete.mkdir()
    shutil.copy(root / "crashy.py", complete)
    with working_directory(complete):
        assert cli.main(run_args()) == 0
    partial = root / "partial"
    partial.mkdir()
    shutil.copy(root / "crashy.py", partial)
    made = subprocess.run(python(*run_args()), cwd=partial, env=dict(env, DSURF_TEST_USR1_AT="7"), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert made.returncode == 3, made.stderr
    start = read_surface(str(partial / OUT))
    assert start.status == "interrupted" and 0 < start.done.sum() < start.done.size
    return root, read_surface(str(complete / OUT))


def fresh_copy(root: Path, name: str, start: str | None) -> Path:
    """A new working directory: the problem module, and the partial file where ``start`` says so."""
    directory = root / name
    directory.mkdir()
    shutil.copy(root / "crashy.py", directory)
    if start:
        shutil.copy(root / start / OUT, directory / OUT)
    return directory


def kill_everywhere(root: Path, label: str, start: str | None, command, counts: dict[str, int], env) -> list[tuple]:
    """Run ``command(directory, syscall, n)`` once for every kill point, two at a time; return (syscall,
    n, directory, process) of each."""
    cases = [(syscall, n) for syscall in SYSCALLS for n in range(1, counts[syscall] + 1)]

    def one(case):
        syscall, n = case
        directory = fresh_copy(root, f"{label}-{syscall}-{n}", start)
        process = subprocess.run(command(directory, syscall, n), cwd=directory, env=env, capture_output=True,
                                 text=True, timeout=180)  # fmt: skip
        return syscall, n, directory, process

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(one, cases))


def check_after_kill(directory: Path, reference, start_done: np.ndarray, capsys) -> str:
    """The killed run's file reads and resumes to the reference, with no done point computed again.
    Returns what the kill left (for the summary)."""
    path = directory / OUT
    left = "no file" if not path.exists() else read_surface(str(path)).status
    if path.exists():
        capsys.readouterr()
        assert cli.main(["info", str(path)]) == 0, capsys.readouterr().err
        assert cli.main(["info", "--status", str(path)]) == 0
        killed = read_surface(str(path))
        done_at_kill = killed.done.astype(bool).reshape(-1)
        runs_at_kill = killed.point_runs.reshape(-1).copy()
    else:
        done_at_kill = start_done.reshape(-1).copy()
        runs_at_kill = None
    assert done_at_kill[start_done.reshape(-1)].all(), "a point that was done before the run is no longer done"
    capsys.readouterr()
    with working_directory(directory):
        rc = cli.main(run_args("--resume"))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "Traceback" not in err
    final = read_surface(str(path))
    assert final.status == "complete" and final.done.all()
    for name, values in reference.metrics.items():
        np.testing.assert_allclose(final.metrics[name], values, rtol=1e-6, atol=0, err_msg=name)
    if runs_at_kill is not None:  # points done at the kill kept the record of the run that computed them
        keep = done_at_kill
        np.testing.assert_array_equal(final.point_runs.reshape(-1)[keep], runs_at_kill[keep])
    assert not (directory / f"{OUT}.lock").exists(), "the lock outlived its run"
    assert not list(directory.glob(f".{OUT}.*.tmp")), "a temporary file outlived the run that was killed"
    return left


def summarise(results: list[tuple], lefts: list[str]) -> dict[str, int]:
    summary = {}
    for (_, _, _, process), left in zip(results, lefts):
        key = f"{'killed' if process.returncode in (-9, 137) else f'rc {process.returncode}'}, left {left}"
        summary[key] = summary.get(key, 0) + 1
    return summary


@pytest.mark.parametrize("start", [None, "partial"], ids=["first-run", "resume"])
def test_serial_run_killed_at_every_write(base, env, start, capsys):
    root, reference = base
    label = f"serial-{start or 'first'}"
    probe = fresh_copy(root, f"{label}-probe", start)
    extra = ("--resume",) if start else ()
    log = probe / "trace.log"
    clean = subprocess.run(traced(python(*run_args(*extra)), log=log), cwd=probe, env=env, capture_output=True,
                           text=True, timeout=180)  # fmt: skip
    assert clean.returncode == 0, clean.stderr
    counts = calls_in(log)
    assert counts["pwrite64"] >= 10

    def command(directory, syscall, n):
        return traced(python(*run_args(*extra)), syscall, n)

    results = kill_everywhere(root, label, start, command, counts, env)
    start_done = read_surface(str(root / "partial" / OUT)).done.astype(bool) if start else np.zeros(reference.done.shape, bool)
    lefts = []
    for syscall, n, directory, process in results:
        assert process.returncode in (-9, 137), f"{syscall} #{n}: not killed (rc {process.returncode}): {process.stderr}"
        lefts.append(check_after_kill(directory, reference, start_done, capsys))
    print(f"\n{label}: {len(results)} kills ({counts}): {summarise(results, lefts)}")


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="mpirun is not installed")
@pytest.mark.parametrize("start", [None, "partial"], ids=["first-run", "resume"])
@pytest.mark.parametrize("target", [0, 1], ids=["rank0", "rank1"])
def test_mpi_rank_killed_at_every_write(base, env, target, start, capsys):
    """``mpirun -np 2``, one rank killed at each of its writes in turn (mpirun then ends the other)."""
    root, reference = base
    label = f"mpi-rank{target}-{start or 'first'}"
    extra = ("--resume",) if start else ()

    def command(directory, syscall=None, n=None, log=None):
        run = " ".join(python(*run_args(*extra)))
        traced_run = " ".join(traced(python(*run_args(*extra)), syscall, n, log))
        script = f'if [ "$OMPI_COMM_WORLD_RANK" = {target} ]; then exec {traced_run}; else exec {run}; fi'
        return ["timeout", "120", MPIRUN, "--oversubscribe", "-np", "2", "bash", "-c", script]

    probe = fresh_copy(root, f"{label}-probe", start)
    clean = subprocess.run(command(probe, log=probe / "trace.log"), cwd=probe, env=env, capture_output=True, text=True,
                           timeout=180)  # fmt: skip
    assert clean.returncode == 0, clean.stderr
    counts = calls_in(probe / "trace.log")
    # Which chunks a rank computes varies from run to run: kill up to a few writes past the clean run's.
    counts["pwrite64"] += 4
    results = kill_everywhere(root, label, start, command, counts, env)
    start_done = read_surface(str(root / "partial" / OUT)).done.astype(bool) if start else np.zeros(reference.done.shape, bool)
    lefts, killed = [], 0
    for syscall, n, directory, process in results:
        assert process.returncode != 124, f"{syscall} #{n}: the job hung after the kill"
        killed += process.returncode != 0
        lefts.append(check_after_kill(directory, reference, start_done, capsys))
    # (How many writes a rank makes depends on how many chunks it is handed: under load the kill points
    # past its last write are not reached, and that run completes, checked all the same.)
    assert killed >= len(results) // 3, "the kills must land"
    print(f"\n{label}: {len(results)} kill points ({counts}): {summarise(results, lefts)}")
