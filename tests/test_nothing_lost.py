"""Nothing lost, ever: one writer per surface file, a failed run never destroys a surface, one line
(never a traceback or a crash) for a full disk, a read-only target, odd paths and huge grids, and
truthful statuses and exit codes whatever signal comes when. Every test here failed before the file
was made crash-safe (distributed_surface 0.1.0)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest

import torch

from distributed_surface import cli
from distributed_surface.core.errors import UserError
from distributed_surface.storage import STATUSES, read_surface
from helpers import SLOW_ARGS, assert_one_line_error, file_bytes, write_slow_model

MPIRUN = shutil.which("mpirun")
GRID = ["--x", "-1:1:4", "--y", "-1:1:4", "--chunk-size", "2"]
QUIET = ["--no-plot", "--no-progress"]

# A tiny problem whose model fails on batches of more than 2 samples where FAIL_BIG_BATCHES is set; one
# that, after its first two passes over the whole data, waits while a file "hold" exists (a run held
# mid-way, for as long as a test needs); and one whose factory takes LOAD_SECONDS.
FAULTY = '''
import os
import time
from pathlib import Path

import torch
from torch import nn

from tiny import data, model as tiny_model


class Faulty(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = tiny_model()

    def forward(self, x):
        if os.environ.get("FAIL_BIG_BATCHES") and len(x) > 2:
            raise RuntimeError("this model fails on batches of more than 2 samples")
        return self.inner(x)


def model():
    return Faulty()


class Held(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = tiny_model()
        self.passes = 0

    def forward(self, x):
        if len(x) == len(data()[0]):  # a pass over the whole data, not a probe
            self.passes += 1
            while self.passes > 2 and Path("hold").exists():
                time.sleep(0.01)
        return self.inner(x)


def held_model():
    return Held()


def bad_label_data():
    x, y = data()
    y = y.clone()
    y[40] = 7  # the model has 3 outputs
    return x, y


def slow_factory_model():
    Path("loading").write_text("the model is loading")
    time.sleep(float(os.environ.get("LOAD_SECONDS", "3")))
    return tiny_model()
'''


@pytest.fixture
def faulty(tiny, tmp_path, monkeypatch):
    (tmp_path / "faulty.py").write_text(textwrap.dedent(FAULTY))
    monkeypatch.syspath_prepend(str(tmp_path))  # faulty.py imports tiny.py from beside it
    return tmp_path


def env(**extra):
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", **extra)


def dsurf_process(args, cwd, ranks=None, **extra_env):
    command = [sys.executable, "-m", "distributed_surface", *args]
    if ranks:
        command = [MPIRUN, "--oversubscribe", "-np", str(ranks), *command]
    return subprocess.Popen(command, cwd=cwd, env=env(**extra_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip


def signal_session(session: int, signum: int) -> None:
    """Send ``signum`` to every process of a session: mpirun and each of its ranks (Open MPI puts every
    rank in a process group of its own)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session:
                try:
                    os.kill(int(entry), signum)
                except ProcessLookupError:
                    pass


def wait_until(condition, what: str, process=None, timeout: float = 120.0) -> None:
    """Wait for an event (polling it), failing if the process ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process is None or process.poll() is None, f"the run ended before {what}: {process.communicate()[1]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def done_points(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f["done"][()].sum())
    except (OSError, KeyError):
        return 0


@contextmanager
def tmpfs(directory: Path, options: str):
    """A tmpfs mounted at ``directory`` (root only; skipped where mounting is not allowed)."""
    directory.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


# ---------------------------------------------------------------- one writer per file


def test_a_second_run_is_refused_naming_the_first_and_a_dead_runs_lock_is_taken_over(faulty, dsurf):
    tmp_path = faulty
    args = ["run", "--model", "faulty.py:held_model", "--data", "tiny.py:data", *GRID, *QUIET, "--out", "s.h5"]
    (tmp_path / "hold").write_text("the first run waits while this file exists")
    first = dsurf_process(args, tmp_path)
    try:
        wait_until(lambda: done_points(tmp_path / "s.h5") >= 1, "a point is done", first)
        # the second run, serial, while the first writes: refused, with the holder named
        second = subprocess.run([sys.executable, "-m", "distributed_surface", *args, "--resume"], cwd=tmp_path,
                                env=env(), capture_output=True, text=True, timeout=120)  # fmt: skip
        assert_one_line_error(second.returncode, second.stdout, second.stderr, "being written by another run",
                              f"pid {first.pid}", os.uname().nodename)  # fmt: skip
        # readers are not locked out, and say who writes
        rc, out, err = dsurf("info", str(tmp_path / "s.h5"))
        assert rc == 0 and f"running (pid {first.pid} on" in out
        rc, out, err = dsurf("plot", str(tmp_path / "s.h5"), "--out-dir", str(tmp_path / "pictures"))
        assert rc == 0, err
    finally:
        first.kill()  # SIGKILL: its lock file stays behind
        first.communicate(timeout=60)
    assert (tmp_path / "s.h5.lock").exists()
    (tmp_path / "hold").unlink()
    rc, out, err = dsurf("info", "--status", str(tmp_path / "s.h5"))
    assert out.strip() == "interrupted"  # "running" in the file, but no run holds it: it was killed
    resumed = subprocess.run([sys.executable, "-m", "distributed_surface", *args, "--resume"], cwd=tmp_path, env=env(),
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"took over the lock" in resumed.stderr and f"pid {first.pid}" in resumed.stderr
    assert not (tmp_path / "s.h5.lock").exists()
    data = read_surface(str(tmp_path / "s.h5"))
    assert data.status == "complete" and [r["status"].decode() for r in data.runs] == ["running", "complete"]
    rc, out, err = dsurf("info", str(tmp_path / "s.h5"))
    assert "run 0:" in out and "killed" in out


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="mpirun is not installed")
def test_a_serial_resume_is_refused_while_an_mpi_job_writes(tmp_path):
    """The reported case: a serial --resume completed a file that a paused mpirun job went on writing."""
    write_slow_model(tmp_path, 0.2)
    args = ["run", *SLOW_ARGS, "--x=-1:1:8", "--max-samples", "200", "--chunk-size", "1", *QUIET, "--out", "s.h5"]
    job = dsurf_process(args, tmp_path, ranks=2)
    try:
        wait_until(lambda: done_points(tmp_path / "s.h5") >= 1, "a point is done", job)
        signal_session(job.pid, signal.SIGSTOP)  # the whole job paused, as in the report
        try:
            second = subprocess.run([sys.executable, "-m", "distributed_surface", *args, "--resume"], cwd=tmp_path,
                                    env=env(), capture_output=True, text=True, timeout=120)  # fmt: skip
        finally:
            signal_session(job.pid, signal.SIGCONT)
        assert_one_line_error(second.returncode, second.stdout, second.stderr, "being written by another run")
        _, err = job.communicate(timeout=300)
        assert job.returncode == 0, err
    finally:
        if job.poll() is None:
            job.kill()
    data = read_surface(str(tmp_path / "s.h5"))
    assert data.status == "complete" and len(data.runs) == 1 and (data.point_runs == 0).all()


# ---------------------------------------------------------------- a failed run never destroys a surface


def test_a_reader_with_hdf5s_own_lock_does_not_stop_a_run(tmp_path, dsurf, run_args):
    assert dsurf(*run_args, *GRID, "--out", "s.h5")[0] == 0
    # another process reads the file with h5py's defaults (HDF5's own file lock, shared) ...
    code = "import h5py, sys; f = h5py.File(sys.argv[1], 'r'); print('open', flush=True); sys.stdin.read()"
    reader = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s.h5")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert reader.stdout.readline().strip() == "open"
        rc, out, err = dsurf(*run_args, *GRID, "--out", "s.h5", "--resume")  # ... and a run opens it to write
        assert rc == 0, err
    finally:
        reader.communicate("", timeout=60)


def test_overwrite_stopped_before_its_first_chunk_leaves_the_old_file(faulty, dsurf, run_args):
    assert dsurf(*run_args, *GRID, "--out", "s.h5")[0] == 0
    before = file_bytes(faulty / "s.h5")
    run = dsurf_process(["run", "--model", "faulty.py:slow_factory_model", "--data", "tiny.py:data", *GRID, *QUIET,
                         "--out", "s.h5", "--overwrite"], faulty, LOAD_SECONDS="3")  # fmt: skip
    wait_until(lambda: (faulty / "loading").exists(), "the model loads", run)
    run.send_signal(signal.SIGUSR1)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 3 and "unchanged" in err, err
    assert file_bytes(faulty / "s.h5") == before
    assert not list(faulty.glob(".s.h5.*.tmp")) and not (faulty / "s.h5.lock").exists()


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="mpirun is not installed")
def test_a_rank_that_cannot_load_the_data_leaves_no_file(faulty):
    (faulty / "rank_data.py").write_text(textwrap.dedent('''
        import os
        from tiny import data as tiny_data

        def data():
            if os.environ.get("OMPI_COMM_WORLD_RANK") == "1":
                raise FileNotFoundError("no such data set on this node")
            return tiny_data()
    '''))
    job = dsurf_process(["run", "--model", "faulty.py:model", "--data", "rank_data.py:data", *GRID, *QUIET, "--out",
                         "s.h5"], faulty, ranks=2)  # fmt: skip
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0 and "rank 1" in err and "no such data set on this node" in err, err
    assert err.count("dsurf: error:") == 1 and "Traceback" not in err
    assert not (faulty / "s.h5").exists() and not list(faulty.glob(".s.h5*"))


def test_running_out_of_device_memory_is_one_line():
    from distributed_surface.run import _naming_failures

    class Plan:
        batch_size, points_per_pass = 4096, 8

    class Evaluator:
        plan, device = Plan(), "cuda:0"

        def evaluate(self, offsets):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(UserError, match="out of memory on cuda:0 with batches of 4096 samples.*--batch-size"):
        _naming_failures(Evaluator())(np.zeros((1, 2)))


def test_overwrite_with_bad_labels_is_refused_before_the_file_is_touched(faulty, dsurf, run_args):
    assert dsurf(*run_args, *GRID, "--out", "s.h5")[0] == 0
    before = file_bytes(faulty / "s.h5")
    rc, out, err = dsurf("run", "--model", "faulty.py:model", "--data", "faulty.py:bad_label_data", *GRID, *QUIET,
                         "--out", "s.h5", "--overwrite")  # fmt: skip
    assert_one_line_error(rc, out, err, "class label 7 of sample 40", "3 outputs")
    assert file_bytes(faulty / "s.h5") == before
    assert sorted(p.name for p in faulty.iterdir() if p.name.startswith(("s.h5", ".s.h5"))) == ["s.h5"]


def test_a_model_failing_mid_run_names_the_batch_and_never_destroys_a_surface(faulty, dsurf, monkeypatch):
    args = ["run", "--model", "faulty.py:model", "--data", "tiny.py:data", *GRID, *QUIET, "--batch-size", "8",
            "--vmap", "off"]  # fmt: skip
    assert dsurf(*args, "--out", "s.h5")[0] == 0
    before = file_bytes(faulty / "s.h5")
    monkeypatch.setenv("FAIL_BIG_BATCHES", "1")  # the probe (2 samples) passes; the first batch of 8 fails
    rc, out, err = dsurf(*args, "--out", "s.h5", "--overwrite")
    assert_one_line_error(rc, out, err, "failed on train samples 0..7", "more than 2 samples")
    assert file_bytes(faulty / "s.h5") == before  # the new file never held a chunk: the old one stays
    assert not list(faulty.glob(".s.h5.*.tmp")) and not (faulty / "s.h5.lock").exists()
    # a new file that fails mid-run is kept as "failed", and --resume completes it
    rc, out, err = dsurf(*args, "--out", "new.h5")
    assert_one_line_error(rc, out, err, "failed on train samples 0..7")
    assert read_surface(str(faulty / "new.h5")).status == "failed"
    rc, out, err = dsurf("info", "--status", "new.h5")
    assert out.strip() == "failed"
    monkeypatch.delenv("FAIL_BIG_BATCHES")
    assert dsurf(*args, "--out", "new.h5", "--resume")[0] == 0
    np.testing.assert_array_equal(read_surface(str(faulty / "new.h5")).metrics["train_loss"],
                                  read_surface(str(faulty / "s.h5")).metrics["train_loss"])  # fmt: skip


@pytest.mark.parametrize("kind", ["text", "foreign_hdf5"])
def test_overwrite_refuses_a_file_that_is_not_a_surface(tmp_path, dsurf, run_args, kind):
    path = tmp_path / "precious.h5"
    if kind == "text":
        path.write_text("my notes\n")
    else:
        with h5py.File(path, "w") as f:
            f["weights"] = np.arange(10)
    before = file_bytes(path)
    rc, out, err = dsurf(*run_args, *GRID, "--out", str(path), "--overwrite")
    assert_one_line_error(rc, out, err, "--overwrite refuses", "not a surface")
    assert file_bytes(path) == before


def test_export_refuses_to_overwrite_a_file_it_did_not_write(tmp_path, dsurf, surface_2d):
    other = tmp_path / "notes.csv"
    other.write_text("my own spreadsheet\n")
    rc, out, err = dsurf("export", str(surface_2d), "--format", "csv", "--out", str(other))
    assert_one_line_error(rc, out, err, "--force", "did not write")
    assert other.read_text() == "my own spreadsheet\n"
    assert dsurf("export", str(surface_2d), "--format", "csv", "--out", str(other), "--force")[0] == 0
    assert other.read_text().startswith("x,y,train_loss")
    # its own earlier export it overwrites without asking
    for fmt in ("csv", "vtp", "vts"):
        assert dsurf("export", str(surface_2d), "--format", fmt)[0] == 0
        assert dsurf("export", str(surface_2d), "--format", fmt)[0] == 0


# ---------------------------------------------------------------- one line, never a traceback


def test_a_grid_too_large_is_refused_before_anything_is_loaded(tmp_path, dsurf):
    started = time.monotonic()
    rc, out, err = dsurf("run", "--x=-1:1:100000", "--y=-1:1:100000", *QUIET, "--out", "huge.h5")
    assert_one_line_error(rc, out, err, "10,000,000,000 points")
    assert "TB" in err or "GiB" in err
    assert time.monotonic() - started < 5 and not (tmp_path / "huge.h5").exists()


def test_a_binary_config_file_is_one_line(tmp_path, dsurf):
    (tmp_path / "bad.toml").write_bytes(bytes(range(256)))
    rc, out, err = dsurf("run", "bad.toml")
    assert_one_line_error(rc, out, err, "bad.toml", "not a text")


def test_out_naming_a_directory_leaves_no_stray_file(tmp_path, dsurf, run_args):
    rc, out, err = dsurf(*run_args, *GRID, "--out", "newdir/")
    assert_one_line_error(rc, out, err, "is a directory")
    assert not (tmp_path / "newdir").exists()


@pytest.mark.parametrize("size", ["100k", "120k"])
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, dsurf, run_args, size):
    with tmpfs(tmp_path / "small", f"size={size}") as disk:
        rc, out, err = dsurf(*run_args, *GRID, "--out", str(disk / "s.h5"))
        assert_one_line_error(rc, out, err, "needs", "free")
        assert list(disk.iterdir()) == []


def test_a_read_only_target_is_refused_before_anything_is_written(tmp_path, dsurf, run_args, surface_2d):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as disk:
        rc, out, err = dsurf(*run_args, *GRID, "--out", str(disk / "s.h5"))
        assert_one_line_error(rc, out, err, "read-only file system")
        rc, out, err = dsurf("export", str(surface_2d), "--format", "csv", "--out", str(disk / "s.csv"))
        assert_one_line_error(rc, out, err, "read-only file system")


# ---------------------------------------------------------------- signals and start-up


def test_the_status_words_in_the_help_are_what_files_hold():
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["info"].format_help()
    for word in STATUSES:
        assert word in help_text
    assert "created" not in help_text


def test_a_signal_while_the_model_loads_stops_the_run_with_exit_3(faulty):
    """Before the file exists (torch importing, the model loading): the run still ends cleanly."""
    run = dsurf_process(["run", "--model", "faulty.py:slow_factory_model", "--data", "tiny.py:data", *GRID, *QUIET,
                         "--out", "s.h5"], faulty, LOAD_SECONDS="3")  # fmt: skip
    wait_until(lambda: (faulty / "loading").exists(), "the model loads", run)
    run.send_signal(signal.SIGTERM)
    run.send_signal(signal.SIGTERM)  # and a second one: it must not cut the run's end short
    _, err = run.communicate(timeout=120)
    assert run.returncode == 3, err
    assert "Traceback" not in err
    data = read_surface(str(faulty / "s.h5"))
    assert data.status == "interrupted" and not data.done.any()


def test_a_second_sigterm_mid_run_still_closes_the_file(tmp_path):
    write_slow_model(tmp_path, 0.2)
    run = dsurf_process(["run", *SLOW_ARGS, "--x=-1:1:8", "--max-samples", "200", "--chunk-size", "1", *QUIET,
                         "--out", "s.h5"], tmp_path)  # fmt: skip
    wait_until(lambda: done_points(tmp_path / "s.h5") >= 1, "a point is done", run)
    run.send_signal(signal.SIGTERM)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 3, err
    assert read_surface(str(tmp_path / "s.h5")).status == "interrupted"


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="mpirun is not installed")
def test_sigterm_to_mpirun_leaves_the_file_interrupted(tmp_path):
    write_slow_model(tmp_path, 0.2)
    job = dsurf_process(["run", *SLOW_ARGS, "--x=-1:1:10", "--max-samples", "200", "--chunk-size", "1", *QUIET,
                         "--out", "s.h5"], tmp_path, ranks=2)  # fmt: skip
    wait_until(lambda: done_points(tmp_path / "s.h5") >= 2, "points are done", job)
    job.send_signal(signal.SIGTERM)
    job.communicate(timeout=120)
    data = read_surface(str(tmp_path / "s.h5"))
    assert data.status == "interrupted" and 0 < data.done.sum() < data.done.size
    assert not (tmp_path / "s.h5.lock").exists()


def test_a_bad_setting_is_refused_before_torch_is_imported():
    code = textwrap.dedent("""
        import sys
        from distributed_surface import cli
        rc = cli.main(["run", "--norm", "bogus"])
        sys.exit(10 + rc if "torch" in sys.modules else rc)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr  # (12: refused, but only after importing torch)
    assert result.stderr.startswith("dsurf: error: --norm 'bogus'")


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="mpirun is not installed")
def test_under_mpirun_a_bad_setting_is_said_once(tmp_path):
    result = subprocess.run([MPIRUN, "--oversubscribe", "-np", "3", sys.executable, "-m", "distributed_surface", "run",
                             "--norm", "bogus"], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.count("dsurf: error:") == 1, result.stderr
