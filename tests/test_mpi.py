"""Tier 3: real ``mpirun -np N`` runs against the serial run. mpi4py is never imported here: every MPI
process is a subprocess, under a time limit, since a parallel mistake hangs rather than fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from distributed_surface.storage import read_surface

pytestmark = pytest.mark.mpi

MPIRUN = shutil.which("mpirun")
if MPIRUN is None:  # pragma: no cover - the set-up installs Open MPI
    pytest.skip("mpirun is not installed", allow_module_level=True)

GRIDS = {"1d": ["--x=-1:1:7"], "2d": ["--x=-1:1:5", "--y=-0.5:0.5:4"]}
# Every run evaluates a test split too: test_* must equal the serial run's as train_* do.
TEST_SPLIT = ["--test-data", "distributed_surface.example:digits_test_data", "--max-test-samples", "100"]
COMMON = ["--max-samples", "200", *TEST_SPLIT, "--no-plot", "--no-progress", "--chunk-size", "2"]
FAILING_MODEL = '''
import os
import torch
from distributed_surface.example import trained_digits_cnn


class FailsOnRankOne(torch.nn.Module):
    """The example network, which raises on rank 1 after a few forward passes when asked to."""

    def __init__(self):
        super().__init__()
        self.inner = trained_digits_cnn()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if os.environ.get("FAIL_ON_RANK_ONE") and os.environ.get("OMPI_COMM_WORLD_RANK") == "1" and self.calls > 3:
            raise RuntimeError("injected failure")
        return self.inner(x)


def model():
    return FailsOnRankOne()
'''


@pytest.fixture(scope="module")
def env():
    """The environment of every run: Open MPI's permission to run as root on these machines (and the
    session's example cache, from conftest.py)."""
    return dict(
        os.environ,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
    )


def dsurf(args, env, cwd, ranks=None, timeout=120):
    """Run ``dsurf`` serially (ranks=None) or under ``mpirun -np ranks``, with a time limit."""
    command = [sys.executable, "-m", "distributed_surface", *args]
    if ranks is not None:
        command = [MPIRUN, "--oversubscribe", "-np", str(ranks), *command]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def serial_surfaces(tmp_path_factory, env):
    """The serial run's surface for each grid: the reference every MPI run must match."""
    cwd = tmp_path_factory.mktemp("serial")
    surfaces = {}
    for name, grid in GRIDS.items():
        out = cwd / f"{name}.h5"
        result = dsurf(["run", *grid, *COMMON, "--out", str(out)], env, cwd)
        assert result.returncode == 0, result.stderr
        surfaces[name] = read(out)
    return surfaces


def read(path):
    data = read_surface(str(path))
    return {
        "loss": data.metrics["train_loss"],
        "acc": data.metrics["train_acc"],
        "test_loss": data.metrics.get("test_loss"),
        "test_acc": data.metrics.get("test_acc"),
        "done": data.done,
        "status": data.status,
        "timings": data.timings,  # one record a chunk
        "point_runs": data.point_runs,  # the run that computed each point
        "runs": data.runs,
    }


def assert_same_surface(got, expected):
    np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-7, atol=0)
    np.testing.assert_allclose(got["acc"], expected["acc"], rtol=1e-7, atol=0)
    for name in ("test_loss", "test_acc"):
        assert (got[name] is None) == (expected[name] is None), name
        if expected[name] is not None:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-7, atol=0)
    assert got["done"].all()


def covered_points(timings):
    """Every point index each timing record stands for (chunks are contiguous in fresh runs)."""
    return np.concatenate([np.arange(r["first_index"], r["first_index"] + r["points"]) for r in timings])


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_mpi_run_equals_serial_run(ranks, grid, serial_surfaces, env, tmp_path):
    out = tmp_path / "surface.h5"
    result = dsurf(["run", *GRIDS[grid], *COMMON, "--out", str(out)], env, tmp_path, ranks=ranks)
    assert result.returncode == 0, result.stderr
    got = read(out)
    assert got["status"] == "complete"
    assert_same_surface(got, serial_surfaces[grid])
    # Every point computed exactly once.
    points = covered_points(got["timings"])
    assert sorted(points) == list(range(got["done"].size))
    expected_mode = "serial" if ranks == 1 else ("mpi-mpio" if h5py.get_config().mpi else "mpi-gather")
    assert got["runs"][-1]["mode"].decode() == expected_mode
    if ranks > 1:
        # Chunks go to whichever rank asks first (after the collective open of the file): on 2 cores
        # shared by 4 ranks a descheduled rank may find them all taken (seen once with 4 chunks for 4
        # ranks), so that every rank gets one is not the engine's promise; that the work is shared,
        # and only among the job's ranks, is.
        workers = set(got["timings"]["rank"].tolist())
        assert workers <= set(range(ranks)) and len(workers) >= 2, f"the work is shared among the ranks: {workers}"


def test_mpio_mode_writes_from_every_rank(env, tmp_path):
    """Where h5py is parallel, all ranks open the file with the mpio driver and workers write their own
    chunks: the run records the mode, and chunks of every rank are in the file."""
    if not h5py.get_config().mpi:
        pytest.skip("this h5py was built without MPI")
    out = tmp_path / "surface.h5"
    result = dsurf(["run", *GRIDS["2d"], *COMMON, "--out", str(out)], env, tmp_path, ranks=3)
    assert result.returncode == 0, result.stderr
    got = read(out)
    assert got["runs"][-1]["mode"].decode() == "mpi-mpio"
    assert set(got["timings"]["rank"]) == {0, 1, 2}


@pytest.mark.parametrize(
    "variant, extra_env, flags, mode",
    [
        ("gather", {"DSURF_IO": "gather"}, [], "mpi-gather"),
        ("dedicated", {}, ["--rank0", "coordinate"], None),
    ],
)
def test_variants_equal_serial(variant, extra_env, flags, mode, serial_surfaces, env, tmp_path):
    out = tmp_path / "surface.h5"
    result = dsurf(
        ["run", *GRIDS["2d"], *COMMON, *flags, "--out", str(out)], dict(env, **extra_env), tmp_path, ranks=3
    )
    assert result.returncode == 0, result.stderr
    got = read(out)
    assert_same_surface(got, serial_surfaces["2d"])
    if mode:
        assert got["runs"][-1]["mode"].decode() == mode
    if variant == "dedicated":
        assert 0 not in set(got["timings"]["rank"]), "rank 0 only coordinates"
        assert got["runs"][-1]["mode"].decode().endswith("-dedicated")


def test_failing_worker_ends_job_and_resume_completes(serial_surfaces, env, tmp_path):
    (tmp_path / "failing.py").write_text(FAILING_MODEL)
    args = ["run", "--model", "failing.py:model", "--data", "distributed_surface.example:digits_train_data"]
    args += [*GRIDS["2d"], *COMMON, "--out", "surface.h5"]
    started = time.monotonic()
    result = dsurf(args, dict(env, FAIL_ON_RANK_ONE="1"), tmp_path, ranks=3, timeout=60)
    assert time.monotonic() - started < 30
    assert result.returncode != 0
    assert "rank 1" in result.stderr and "injected failure" in result.stderr and "train samples" in result.stderr
    assert "Traceback" not in result.stderr  # a batch the model fails on is a one-line error, named
    partial = read(tmp_path / "surface.h5")  # the file opens, closed by every rank as failed
    assert partial["status"] == "failed"
    done_before = int(partial["done"].sum())
    assert 0 < done_before < partial["done"].size
    assert int(partial["timings"]["points"].sum()) == done_before

    result = dsurf([*args, "--resume"], env, tmp_path, ranks=3)
    assert result.returncode == 0, result.stderr
    final = read(tmp_path / "surface.h5")
    assert final["status"] == "complete"
    assert_same_surface(final, serial_surfaces["2d"])
    # No done point recomputed: each point appears in exactly one timing record across both runs.
    assert sorted(covered_points(final["timings"])) == list(range(final["done"].size))
    assert [r["status"].decode() for r in final["runs"]] == ["failed", "complete"]


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="no CUDA device")  # (before the serial surfaces are made)
def test_two_ranks_share_one_gpu(serial_surfaces, env, tmp_path):
    out = tmp_path / "surface.h5"
    result = dsurf(["run", *GRIDS["2d"], *COMMON, "--device", "cuda", "--out", str(out)], env, tmp_path, ranks=2)
    assert result.returncode == 0, result.stderr
    got = read(out)
    np.testing.assert_allclose(got["loss"], serial_surfaces["2d"]["loss"], rtol=1e-4)
    assert {d.decode() for d in got["timings"]["device"]} == {"cuda:0"}
    assert set(got["timings"]["rank"]) == {0, 1}


BROADCAST_SCRIPT = '''
import numpy as np
from mpi4py import MPI
from distributed_surface.engine import mpi

mpi.BROADCAST_PIECE_BYTES = 1000  # (so that an array goes in several pieces, one not full)
comm = MPI.COMM_WORLD
made = {"train/input_ids": np.arange(12345, dtype=np.int64).reshape(15, 823), "test/labels": np.zeros(0, np.float32),
        "train/mask": np.asfortranarray(np.eye(7, dtype=bool))}
got = mpi.broadcast_arrays(comm, made if comm.Get_rank() == 0 else None)
assert set(got) == set(made), got
for name, array in made.items():
    assert got[name].dtype == array.dtype and np.array_equal(got[name], array), name
open(f"ok{comm.Get_rank()}", "w").close()  # (not printed: the ranks' lines may interleave)
'''


def test_broadcast_arrays_sends_rank_0s_arrays_in_pieces(env, tmp_path):
    (tmp_path / "broadcast.py").write_text(BROADCAST_SCRIPT)
    done = subprocess.run([MPIRUN, "--oversubscribe", "-np", "3", sys.executable, "broadcast.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.glob("ok*")) == ["ok0", "ok1", "ok2"]
