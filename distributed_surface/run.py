"""``dsurf run``: from a config to a complete surface file, in one process.

The steps are separate functions so that the MPI engine can run each on the ranks that need it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .config import RunConfig
from .core.directions import base_tensors, make_directions
from .core.evaluate import SurfaceEvaluator
from .core.grid import default_chunk_size, pending_chunks
from .errors import UserError
from .problem import (
    Problem,
    build_model,
    check_model_accepts_data,
    load_checkpoint,
    load_data,
    resolve_device,
    resolve_loss,
)
from .engine.serial import run_serial
from .engine.stop import StopRequest
from .storage import RunRecorder, check_writable, create_surface, open_checked, read_directions


@dataclass
class Prepared:
    """A loaded problem and the directions of its surface, ready to evaluate."""

    config: RunConfig
    problem: Problem
    device: torch.device
    directions: list[dict[str, torch.Tensor]]
    resuming: bool


def load_problem(config: RunConfig) -> Problem:
    """Build model (with its checkpoint), data and loss from the config's import strings."""
    model = build_model(config.model)
    if config.checkpoint is not None:
        load_checkpoint(model, config.checkpoint)
    inputs, targets = load_data(config.data, config.max_samples)
    return Problem(model=model, inputs=inputs, targets=targets, loss_fn=resolve_loss(config.loss))


def fingerprint(problem: Problem) -> dict[str, object]:
    """Content hashes of θ0 and the data, and the sample count: a resumed run must match them."""
    return {
        "theta0_sha256": _sha256(problem.model.state_dict().items()),
        "data_sha256": _sha256([("inputs", problem.inputs), ("targets", problem.targets)]),
        "num_samples": len(problem.inputs),
    }


def _sha256(named_tensors) -> str:
    digest = hashlib.sha256()
    for name, tensor in named_tensors:
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)};".encode())
        digest.update(array.reshape(-1).view(torch.uint8).numpy().tobytes() if array.numel() else b"")
    return digest.hexdigest()


def check_output(config: RunConfig, *, resume: bool, overwrite: bool) -> bool:
    """Check that the output may be written; return True where an existing file is to be resumed.
    Never changes a file."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: choose one")
    path = Path(config.out)
    check_writable(config.out)
    if not path.exists():
        return False
    if not resume and not overwrite:
        raise UserError(f"{config.out!r} exists: pass --resume to continue it or --overwrite to replace it")
    if overwrite:
        return False
    with open_checked(config.out, "r") as f:
        stored = RunConfig.from_json(f.attrs["config"])
    differences = config.surface_differences(stored)
    if differences:
        name = differences[0]
        raise UserError(
            f"--resume: {config.out!r} was made with {name.replace('_', '-')}={getattr(stored, name)!r}, "
            f"this run has {getattr(config, name)!r}"
        )
    return True


def check_fingerprint(path: str, expected: dict[str, object]) -> None:
    """Refuse to resume a file computed for other weights or data."""
    with open_checked(path, "r") as f:
        for key, value in expected.items():
            if key in f.attrs and f.attrs[key] != value:
                what = {"theta0_sha256": "the model's weights (θ0)", "data_sha256": "the data"}.get(key, key)
                raise UserError(f"--resume: {what} differ from those {path!r} was computed with")


def prepare(
    config: RunConfig, *, resume: bool, overwrite: bool, local_rank: int = 0
) -> tuple[Prepared, dict[str, object]]:
    """Load the problem and the directions and check the file to resume, if any. Returns the prepared
    run and the problem's fingerprint. Changes no file."""
    resuming = check_output(config, resume=resume, overwrite=overwrite)
    device = resolve_device(config.device, local_rank)
    problem = load_problem(config)
    check_model_accepts_data(problem, device)
    prints = fingerprint(problem)
    if resuming:
        check_fingerprint(config.out, prints)
        with open_checked(config.out, "r") as f:
            directions = read_directions(f)
    else:
        base = base_tensors(problem.model, config.dir_type)
        directions = make_directions(base, config.grid.ndim, config.norm, config.ignore, config.seed)
    return Prepared(config, problem, device, directions, resuming), prints


def make_evaluator(prepared: Prepared) -> SurfaceEvaluator:
    config, problem = prepared.config, prepared.problem
    return SurfaceEvaluator(
        problem.model,
        prepared.directions,
        problem.inputs,
        problem.targets,
        problem.loss_fn,
        batch_size=config.batch_size,
        device=prepared.device,
        dir_type=config.dir_type,
        points_per_pass=config.points_per_pass,
        vmap=config.vmap,
        precision=config.precision,
        compile=config.compile,
        channels_last=None if config.channels_last == "auto" else config.channels_last,
    )


def create_file(prepared: Prepared, evaluator: SurfaceEvaluator, prints: dict[str, object]) -> None:
    """Write a new, empty surface file for this run (replacing any old one in one step)."""
    config = prepared.config
    create_surface(
        config.out,
        config_json=config.to_json(),
        grid=config.grid,
        outputs=evaluator.outputs,
        directions=prepared.directions,
        direction_attrs={
            "dir_type": config.dir_type,
            "norm": config.norm,
            "ignore": config.ignore,
            "seed": config.seed,
            "kind": "random_normal",
        },
        fingerprint=prints,
    )


def start_file(prepared: Prepared, evaluator: SurfaceEvaluator, prints: dict[str, object]) -> np.ndarray:
    """Create the surface file, or read the file being resumed; return its done mask."""
    if prepared.resuming:
        with open_checked(prepared.config.out, "r") as f:
            return f["done"][()]
    create_file(prepared, evaluator, prints)
    return np.zeros(prepared.config.grid.shape, dtype=np.uint8)


def run(config: RunConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> str:
    """Compute the surface of ``config``: distributed where this process is one of several MPI ranks,
    else in this process. Returns the file's final status."""
    if mpi_world_size() > 1:
        from .engine.mpi import run_distributed

        return run_distributed(config, resume=resume, overwrite=overwrite, progress=progress)
    return run_in_process(config, resume=resume, overwrite=overwrite, progress=progress)


def run_in_process(config: RunConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> str:
    """Compute the surface of ``config`` in this process alone."""
    prepared, prints = prepare(config, resume=resume, overwrite=overwrite)
    evaluator = make_evaluator(prepared)
    done = start_file(prepared, evaluator, prints)
    chunks = pending_chunks(done, config.chunk_size or default_chunk_size(config.grid.size))
    recorder = RunRecorder.begin(config.out, pending=len(chunks), ranks=1, mode="serial", start=time.time())
    announce_plan(evaluator, progress and bool(chunks))
    bar = progress_bar(total=int(done.size), initial=int(np.count_nonzero(done)), enabled=progress)
    complete = False
    # The handlers stay until the file is closed: a second signal must not cut the close short.
    with StopRequest() as stop:
        try:
            complete = run_serial(
                evaluator.evaluate, config.grid, chunks, recorder, device=str(prepared.device), progress=bar, stop=stop
            )
        finally:
            bar.close()
            status = recorder.end(complete)
    return status


def mpi_world_size() -> int:
    """The number of ranks this process was launched with by mpirun/srun (1 if none), read from the
    launcher's environment so that a plain run never imports MPI."""
    names = ("OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
    return _launcher_value(names, "SLURM_STEP_NUM_TASKS", 1)


def mpi_rank() -> int:
    """This process's rank as its launcher set it (0 if none)."""
    names = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")
    return _launcher_value(names, "SLURM_PROCID", 0)


def _launcher_value(mpi_names: tuple[str, ...], slurm_name: str, default: int) -> int:
    """The first whole number among the MPI launchers' variables; else SLURM's, inside a job step."""
    for name in mpi_names:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    if os.environ.get("SLURM_STEP_ID") is not None and os.environ.get(slurm_name, "").isdigit():
        return int(os.environ[slurm_name])
    return default


def announce_plan(evaluator: SurfaceEvaluator, enabled: bool) -> None:
    """One line on stderr: how the evaluator runs (vmap or one point per pass, batch size) and why."""
    if enabled:
        plan = evaluator.plan
        data = "on the device" if plan.resident else "streamed"
        print(f"dsurf: {plan.reason}; batch {plan.batch_size}, data {data} ({evaluator.device})", file=sys.stderr)


def progress_bar(total: int, initial: int, enabled: bool):
    """A tqdm bar of grid points on stderr."""

    return tqdm(
        total=total,
        initial=initial,
        unit="pt",
        desc="surface",
        disable=None if enabled else True,  # None: shown on a terminal, not in logs
        file=sys.stderr,
        dynamic_ncols=True,
    )
