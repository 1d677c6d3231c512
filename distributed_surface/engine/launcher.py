"""Which rank of how many this process is, as its launcher (mpirun, srun) set it: read from the
environment, so that a plain run never imports MPI."""

from __future__ import annotations

import os

_SIZE_NAMES = ("OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_NAMES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")


def world_size() -> int:
    """The number of ranks this process was launched with by mpirun/srun (1 if none)."""
    return _launcher_value(_SIZE_NAMES, "SLURM_STEP_NUM_TASKS", 1)


def rank() -> int:
    """This process's rank as its launcher set it (0 if none)."""
    return _launcher_value(_RANK_NAMES, "SLURM_PROCID", 0)


def _launcher_value(mpi_names: tuple[str, ...], slurm_name: str, default: int) -> int:
    """The first whole number among the MPI launchers' variables; else SLURM's, inside a job step."""
    for name in mpi_names:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    if os.environ.get("SLURM_STEP_ID") is not None and os.environ.get(slurm_name, "").isdigit():
        return int(os.environ[slurm_name])
    return default
