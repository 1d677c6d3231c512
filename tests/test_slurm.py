"""`dsurf sbatch` and preemption, on a real one-node SLURM cluster (launch/slurm/start_local_cluster.sh).

Without a cluster these tests skip, with the reason; in CI (CI=true) they fail instead, since CI starts
one. Every wait is bounded and waits on an event (the job's state, the file's done count)."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from distributed_surface.cli import main
from helpers import SLOW_ARGS, overwritten_chunks, write_slow_model

GOLDEN = Path(__file__).parent / "golden" / "sbatch_two_nodes.sbatch"
GRID = ["--x=-1:1:10", "--y=-1:1:8", "--max-samples", "200", "--chunk-size", "2"]
# The jobs evaluate the example network slowed to 0.1 s a point (write_slow_model), so that a signal
# sent after a few points surely arrives before the last one.
JOB = ["--gpus-per-node", "0", "--tasks-per-node", "2", "--time", "00:10:00", "--signal-seconds", "60"]


def slurm_problem() -> str | None:
    """Why no SLURM cluster can be used here, or None where one answers with an idle node."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM is not installed (run launch/slurm/start_local_cluster.sh as root)"
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0 or not re.search(r"idle|mixed|allocated", result.stdout):
        return f"no SLURM node is up ({(result.stderr or result.stdout).strip() or 'no nodes'}); run launch/slurm/start_local_cluster.sh"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = slurm_problem()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the SLURM tests: {problem}")
        pytest.skip(problem)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("slurm")
    write_slow_model(path, 0.1)
    return path


@pytest.fixture(scope="module")
def reference(workdir, slurm):
    """The serial run's surface, computed in a subprocess with the same environment as the jobs."""
    out = workdir / "serial.h5"
    result = subprocess.run(
        [sys.executable, "-m", "distributed_surface", "run", *GRID, "--no-plot", "--no-progress", "--out", str(out)],
        cwd=workdir, capture_output=True, text=True, timeout=300, env=job_env(workdir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return read(out)


def job_env(workdir: Path) -> dict[str, str]:
    """The environment the jobs inherit (sbatch passes it on): one model cache, Open MPI as root."""
    return dict(
        os.environ,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
    )


def read(path):
    with h5py.File(path, "r", locking=False) as f:
        timings = f["timings"][()]
        return {
            "loss": f["train_loss"][()],
            "done": f["done"][()],
            "status": f.attrs["status"].decode(),
            "points": int((timings["points"] > 0).sum()),  # one record a point
            "overwritten": overwritten_chunks(path),
            "runs": [r.decode() for r in f["runs"]["status"][np.argsort(f["runs"]["index"])] if r],
        }


def sbatch(workdir, out, *flags):
    """Submit the slowed example with `dsurf sbatch`, in the environment the job inherits; return the
    job id."""
    env = job_env(workdir)
    result = subprocess.run(
        [sys.executable, "-m", "distributed_surface", "sbatch", *SLOW_ARGS, *GRID, *JOB, "--no-plot", "--out", out, *flags],
        cwd=workdir, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return re.search(r"submitted job (\d+)", result.stdout).group(1)


def job_field(job: str, field: str) -> str:
    shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    match = re.search(rf"\b{field}=(\S+)", shown.stdout)
    return match.group(1) if match else ""


def wait_for(condition, what: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_for_state(job: str, *states: str, timeout: float = 180) -> str:
    return wait_for(lambda: job_field(job, "JobState") in states and job_field(job, "JobState"), f"{job} in {states}", timeout)


def done_count(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f["done"][()].sum())
    except (OSError, KeyError):
        return 0


def step_daemons(job: str) -> str:
    """The slurmstepd processes still alive for the job's steps (they outlive the step by seconds)."""
    found = subprocess.run(["pgrep", "-f", rf"slurmstepd: \[{job}\."], capture_output=True, text=True, timeout=30)
    return found.stdout.strip()


def start_now(job: str) -> None:
    """A requeued job waits out SLURM's requeue delay; let it start at once. Not before the last run's
    step daemon has gone, though: the new step reuses the step id, and its PMIx socket would still be
    taken (the requeue delay that this skips is what prevents that on a real cluster)."""
    wait_for_state(job, "PENDING")
    wait_for(lambda: not step_daemons(job), f"the step daemons of job {job} to exit", timeout=60)
    # The last run's end revoked the job's credential, and slurmd refuses every credential made in the
    # same second as a revocation or before ("Job credential revoked": the requeued job then fails at
    # once). The revocation is behind us now, so a start from the next whole second on is accepted.
    revoked_by = time.time()
    wait_for(lambda: time.time() >= math.floor(revoked_by) + 1, "the second after the credential's revocation", timeout=5)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)


def assert_finished_without_recomputing(path: Path, reference) -> None:
    got = read(path)
    assert got["status"] == "complete"
    np.testing.assert_allclose(got["loss"], reference["loss"], rtol=1e-7)
    assert got["done"].all()
    assert got["points"] == got["done"].size and got["overwritten"] == 0, "a point was computed twice"
    assert got["runs"][0] == "interrupted" and got["runs"][-1] == "complete"


def test_generated_script_matches_golden_file(monkeypatch, capsys):
    monkeypatch.setattr(sys, "executable", "/opt/venv/bin/python")
    monkeypatch.chdir("/")
    # (r20.pt is on the imagined cluster, not here: the check that inputs exist is tested below)
    monkeypatch.setattr("distributed_surface.preflight.check_inputs_exist", lambda config: None)
    code = main([
        "sbatch", "--model", "mypkg.models:resnet20", "--data", "mypkg.data:cifar10", "--checkpoint", "r20.pt",
        "--x", "-1:1:51", "--y", "-1:1:51", "--batch-size", "512", "--out", "/scratch/r20.h5",
        "--nodes", "2", "--gpus-per-node", "4", "--time", "12:00:00", "--partition", "gpu", "--account", "ml",
        "--signal-seconds", "600", "--requeue", "--dry-run",
    ])  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out == GOLDEN.read_text()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--time", "soon"], "--time"),
        (["--time", "00:01:00", "--signal-seconds", "120"], "--signal-seconds"),
        (["--gpus-per-node", "0", "--time", "1:00:00"], "--tasks-per-node"),
        (["--nodes", "0", "--time", "1:00:00"], "--nodes"),
        (["--time", "1:00:00", "--norm", "sideways"], "--norm"),
        (["--time", "1:00:00", "--overwrite"], "--overwrite"),
    ],
)
def test_bad_sbatch_flags_get_one_line(flags, message, capsys):
    assert main(["sbatch", *flags, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dsurf: error:") and message in err[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--to", "missing.pt"], "--to 'missing.pt': no such file"),
        (["--plane", "missing_b.pt", "missing_c.pt", "--y", "-1:1:3"], "--plane (B) 'missing_b.pt': no such file"),
        (["--checkpoint", "missing.pt"], "--checkpoint 'missing.pt': no such file"),
        (["--model", "missing.py:model", "--data", "missing.py:data"], "no such file 'missing.py'"),
        (["--points", "missing.csv"], "--points 'missing.csv'"),
    ],
)
def test_sbatch_refuses_inputs_that_are_not_there_before_writing_a_script(flags, message, capsys, tmp_path, monkeypatch):
    """A run that would fail in the queue fails now: nothing printed (--dry-run), nothing written."""
    monkeypatch.chdir(tmp_path)
    assert main(["sbatch", "--x", "-1:1:3", "--time", "1:00:00", *flags, "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err, err
    assert main(["sbatch", "--x", "-1:1:3", "--time", "1:00:00", *flags]) == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slurm
def test_submitted_job_computes_the_serial_surface(slurm, workdir, reference):
    job = sbatch(workdir, "plain.h5")
    wait_for_state(job, "COMPLETED", "FAILED", "CANCELLED")
    assert job_field(job, "JobState") == "COMPLETED", (workdir / f"dsurf-{job}.out").read_text()
    got = read(workdir / "plain.h5")
    assert got["status"] == "complete"
    np.testing.assert_allclose(got["loss"], reference["loss"], rtol=1e-7)
    assert got["points"] == got["done"].size
    assert (workdir / "plain.sbatch").is_file()


@pytest.mark.slurm
def test_preempted_job_requeued_by_slurm_resumes(slurm, workdir, reference):
    """A preemption: every rank gets USR1 (`scancel --signal=USR1`), then the job is requeued
    (`scontrol requeue`); the requeued job finishes the file without recomputing a point."""
    out = workdir / "preempted.h5"
    job = sbatch(workdir, out.name)
    wait_for(lambda: done_count(out) >= 6, "6 points done")
    subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
    wait_for_state(job, "COMPLETED", "FAILED")
    assert read(out)["status"] == "interrupted"
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    start_now(job)
    wait_for_state(job, "COMPLETED", "FAILED", "CANCELLED")
    assert job_field(job, "JobState") == "COMPLETED", (workdir / f"dsurf-{job}.out").read_text()
    assert_finished_without_recomputing(out, reference)


@pytest.mark.slurm
def test_warned_job_requeues_itself_and_resumes(slurm, workdir, reference):
    """The time-limit warning (USR1 to the batch shell, as `--signal=B:USR1@S` sends it): the script
    stops the ranks, sees dsurf's exit code 3 and requeues the job, which resumes the file."""
    out = workdir / "warned.h5"
    job = sbatch(workdir, out.name, "--requeue")
    wait_for(lambda: done_count(out) >= 6, "6 points done")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, timeout=30)
    wait_for(lambda: job_field(job, "Restarts") == "1", "the job to requeue itself")
    start_now(job)
    wait_for_state(job, "COMPLETED", "FAILED", "CANCELLED")
    log = (workdir / f"dsurf-{job}.out").read_text()
    assert job_field(job, "JobState") == "COMPLETED", log
    assert "requeueing" in log
    assert_finished_without_recomputing(out, reference)
