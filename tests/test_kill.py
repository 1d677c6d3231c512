"""Interruption without warning: SIGKILL of every rank of an `mpirun` run, at 10 moments drawn at random
(seeded). Each time the file must open, and a resume must finally give the uninterrupted surface with
no point computed twice. Each kill waits for the event (k points done in the file), not for a time."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from distributed_surface.storage import read_surface
from helpers import SLOW_ARGS, overwritten_chunks, write_slow_model

pytestmark = pytest.mark.mpi

MPIRUN = shutil.which("mpirun")
GRID = ["--x=-1:1:12", "--y=-1:1:10", "--max-samples", "300", "--chunk-size", "2"]
FLAGS = ["--no-plot", "--no-progress", "--out", "surface.h5"]
KILLS = 10


def command(*extra):
    return [sys.executable, "-m", "distributed_surface", "run", *GRID, *FLAGS, *extra]


def session_processes(session: int) -> list[int]:
    """The live (not zombie) processes of a session."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":  # fields: state, ppid, pgrp, session, ...
            pids.append(int(entry))
    return pids


def kill_session(session: int) -> None:
    """SIGKILL every process of a session, mpirun and its ranks (Open MPI gives each rank a process group
    of its own, so killing mpirun's group would leave the ranks running), and wait until all are gone."""
    deadline = time.monotonic() + 30
    while pids := session_processes(session):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert time.monotonic() < deadline, f"processes {pids} survive SIGKILL"
        time.sleep(0.01)


def done_count(path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f["done"][()].sum())
    except (OSError, KeyError):
        return -1


@pytest.mark.skipif(MPIRUN is None, reason="mpirun is not installed")
def test_sigkill_at_random_moments_then_resume(tmp_path):
    env = dict(
        os.environ,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
    )
    write_slow_model(tmp_path, 0.05)  # 0.05 s a point: each kill lands while the run is under way
    serial = subprocess.run(command(), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert serial.returncode == 0, serial.stderr
    reference = read_surface(str(tmp_path / "surface.h5")).metrics["train_loss"]
    (tmp_path / "surface.h5").unlink()

    total = reference.size
    done_before_run = []  # the done mask each run started from
    rng = np.random.default_rng(20261123)
    # Ten kill points, increasing, each at least one chunk past the last, so every run is killed after
    # it has begun (a kill inside the file's opening is not what this test is about).
    targets = np.sort(rng.choice(np.arange(2, total - 10, 4), size=KILLS, replace=False))
    for k, target in enumerate(targets):
        extra = ["--resume"] if k else []
        start = read_surface(str(tmp_path / "surface.h5")).done.astype(bool) if k else np.zeros(reference.shape, bool)
        done_before_run.append(start)
        target = max(target, int(start.sum()) + 2)  # each run gets somewhere before its kill
        process = subprocess.Popen(
            [MPIRUN, "--oversubscribe", "-np", "2", *command(*SLOW_ARGS, *extra)],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        try:
            while done_count(tmp_path / "surface.h5") < target:
                assert process.poll() is None, f"run {k} ended before it was killed: {process.stderr.read()}"
                assert time.monotonic() < deadline, f"run {k} never reached {target} points"
                time.sleep(0.02)
        finally:
            kill_session(process.pid)  # mpirun and every rank, with no warning
            process.wait(timeout=30)
            process.stderr.close()
        data = read_surface(str(tmp_path / "surface.h5"))  # the file opens after every kill
        done = data.done.astype(bool)
        assert done.sum() >= target
        np.testing.assert_allclose(data.metrics["train_loss"][done], reference[done], rtol=1e-6)
        # A chunk killed between its values and its done bits has values but is not done: it is computed
        # again. Whatever values are there are right.
        pending = data.metrics["train_loss"][~done]
        np.testing.assert_allclose(pending[~np.isnan(pending)], reference[~done][~np.isnan(pending)], rtol=1e-6)

    done_before_run.append(read_surface(str(tmp_path / "surface.h5")).done.astype(bool))
    final = subprocess.run(
        [MPIRUN, "--oversubscribe", "-np", "2", *command(*SLOW_ARGS, "--resume")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert final.returncode == 0, final.stderr
    data = read_surface(str(tmp_path / "surface.h5"))
    assert data.status == "complete" and data.done.all()
    np.testing.assert_allclose(data.metrics["train_loss"], reference, rtol=1e-6)
    assert len(data.runs) == KILLS + 1
    # Every point has the record of the run that computed it, and no run computed a point that was done
    # when it started.
    point_runs = data.point_runs.reshape(-1)
    assert (point_runs >= 0).all()
    for point, run in enumerate(point_runs):
        assert not done_before_run[run].reshape(-1)[point], f"run {run} recomputed point {point}"
    # At most the chunks in flight at each kill were computed again.
    assert overwritten_chunks(tmp_path / "surface.h5") <= KILLS * 2  # kills × ranks
