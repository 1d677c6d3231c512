"""The prepared GPU check (benchmarks/gpu_check.sh) cannot rot while no GPU is at hand: its dry run, the
same steps on the CPU at toy sizes, runs every step to its end and fills the summary's targets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.mpi, pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun is not installed")]


def test_the_dry_run_runs_every_step(tmp_path):
    env = {**os.environ, "DSURF_BENCH_RESULTS": str(tmp_path)}
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [line.split("\t") for line in (tmp_path / "gpu_check_steps_dry.tsv").read_text().splitlines()]
    assert [s[0] for s in steps] == ["gpu_tests", "anchor", "efficiency", "precision", "ranks", "vmap_crossover",
                                     "compile", "lm", "summary"]  # fmt: skip
    assert all(s[1] == "ok" for s in steps), steps
    summary = (tmp_path / "gpu_check_dry.md").read_text()
    assert summary == result.stdout  # printed at the end
    for what in ("against the paper's loop", "bf16 matmul rate", "ranks sharing one GPU", "vmap crossover",
                 "channels-last on/off", "--compile on/off", "loss error against fp32", "language model",
                 "against the hand loop"):  # fmt: skip
        line = next((line for line in summary.splitlines() if what in line), None)
        assert line is not None, what
        assert "not measured" not in line, line
    for name in ("anchor_loop_dry", "efficiency_dry", "precision_dry", "ranks_gpu_dry", "vmap_crossover_dry",
                 "efficiency_compile_dry", "lm_dry"):  # fmt: skip
        assert (tmp_path / f"{name}.json").exists() and (tmp_path / f"{name}.md").exists(), name
    # a dry run never touches the committed results
    assert not (ROOT / "benchmarks" / "results" / "gpu_check_dry.md").exists()


def test_a_failing_step_is_reported_and_the_next_one_runs(tmp_path):
    """A failing step (here every one: the Python they run does not exist) does not stop the check: each
    is reported and the next one runs; the exit status says that a step failed."""
    env = {**os.environ, "DSURF_BENCH_RESULTS": str(tmp_path), "PY": str(tmp_path / "no_python")}
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode != 0
    steps = [line.split("\t") for line in (tmp_path / "gpu_check_steps_dry.tsv").read_text().splitlines()]
    assert len(steps) == 9 and all(s[1].startswith("failed") for s in steps), steps
    assert "gpu_tests: failed" in result.stderr and "summary: failed" in result.stderr
