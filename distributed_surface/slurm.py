"""``dsurf sbatch``: a SLURM batch script from the package's template, submitted or printed.

The script runs one task per GPU with ``srun dsurf run ... --resume``, asks SLURM for a warning signal
before the time limit (the ranks then finish their chunk and close the file as ``interrupted``), and,
with ``--requeue``, requeues itself so that the next run resumes the same file.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template

from .core.errors import UserError
from .storage import Status

# Package data (pyproject.toml), so that an installed wheel finds it as well as a checkout does.
DEFAULT_TEMPLATE = files("distributed_surface") / "templates" / "dsurf.sbatch.in"

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def time_limit_seconds(text: str) -> int:
    """Seconds in a SLURM time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS."""
    match = _TIME.match(str(text))
    if not match:
        raise UserError(f"--time {text!r}: expected HH:MM:SS (or MM, MM:SS, D-HH, D-HH:MM, D-HH:MM:SS)")
    days, first, second, third = match.groups()
    parts = [int(p) for p in (first, second, third) if p is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
        total = int(days) * 86400 + hours * 3600 + minutes * 60 + seconds
    elif len(parts) == 3:
        total = parts[0] * 3600 + parts[1] * 60 + parts[2]
    elif len(parts) == 2:
        total = parts[0] * 60 + parts[1]
    else:
        total = parts[0] * 60
    if total <= 0:
        raise UserError(f"--time {text!r}: must be positive")
    return total


@dataclass(frozen=True)
class JobSpec:
    """What the batch script asks SLURM for."""

    nodes: int
    gpus_per_node: int
    tasks_per_node: int | None
    time: str
    partition: str | None = None
    account: str | None = None
    job_name: str = "dsurf"
    warning_seconds: int = 300
    requeue: bool = False
    srun_mpi: str = "pmix"

    def validate(self) -> None:
        if self.nodes < 1:
            raise UserError(f"--nodes must be at least 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise UserError(f"--gpus-per-node must not be negative, got {self.gpus_per_node}")
        if self.gpus_per_node == 0 and not self.tasks_per_node:
            raise UserError("--gpus-per-node 0 (CPU only) needs --tasks-per-node")
        if self.tasks_per_node is not None and self.tasks_per_node < 1:
            raise UserError(f"--tasks-per-node must be at least 1, got {self.tasks_per_node}")
        limit = time_limit_seconds(self.time)
        if not 0 < self.warning_seconds < limit:
            raise UserError(f"--signal-seconds {self.warning_seconds} must be between 0 and the time limit ({limit} s)")
        for name in ("partition", "account", "job_name", "srun_mpi"):
            value = getattr(self, name)
            if value is not None and not re.match(r"^[A-Za-z0-9_.,+-]+$", value):
                raise UserError(f"--{name.replace('_', '-')} {value!r}: unexpected characters")


def render(
    job: JobSpec, run_args: list[str], *, out: Path, script: Path, workdir: Path, template: Path | None = None
) -> str:
    """The batch script's text: ``template`` filled with the job's settings and the run command."""
    job.validate()
    path = template or DEFAULT_TEMPLATE
    if not path.is_file():
        raise UserError(f"the batch script template {str(path)!r} is missing; pass --template PATH")
    tasks = job.tasks_per_node or job.gpus_per_node
    resource_lines = "".join(
        f"#SBATCH {line}\n"
        for line in (
            f"--gpus-per-node={job.gpus_per_node}" if job.gpus_per_node else None,
            f"--partition={job.partition}" if job.partition else None,
            f"--account={job.account}" if job.account else None,
        )
        if line
    )
    command = shlex.join([sys.executable, "-m", "distributed_surface", "run", *run_args, "--resume", "--no-progress"])
    return Template(path.read_text()).substitute(
        script=shlex.quote(str(script)),
        job_name=job.job_name,
        nodes=job.nodes,
        tasks_per_node=tasks,
        resource_lines=resource_lines,
        time=job.time,
        workdir=shlex.quote(str(workdir)),
        log=shlex.quote(str(workdir / f"{job.job_name}-%j.out")),
        warning_seconds=job.warning_seconds,
        requeue=int(job.requeue),
        exit_interrupted=Status.INTERRUPTED.exit_code,
        srun_mpi=job.srun_mpi,
        command=command,
        status_command=shlex.join([sys.executable, "-m", "distributed_surface", "info", "--status", str(out)]),
    )


def submit(script: Path) -> str:
    """Submit ``script`` with sbatch; return SLURM's job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError(f"sbatch is not on PATH: wrote {script}, submit it on a SLURM login node")
    result = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise UserError(f"sbatch refused {script}: {message[-1] if message else 'exit ' + str(result.returncode)}")
    return result.stdout.strip().split(";")[0]
