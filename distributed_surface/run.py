"""``dsurf run``: from a config to a complete surface file, in one process.

The steps are separate functions so that the MPI engine can run each on the ranks that need it.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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


def prepare(config: RunConfig, *, resume: bool, overwrite: bool) -> tuple[Prepared, dict[str, object]]:
    """Load the problem and the directions, creating the surface file or checking the one to resume.
    Returns the prepared run and the problem's fingerprint."""
    resuming = check_output(config, resume=resume, overwrite=overwrite)
    device = resolve_device(config.device)
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


def run(config: RunConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> str:
    """Compute the surface of ``config`` in this process; return the file's final status."""
    from .engine.serial import run_serial

    prepared, prints = prepare(config, resume=resume, overwrite=overwrite)
    evaluator = make_evaluator(prepared)
    if prepared.resuming:
        with open_checked(config.out, "r") as f:
            done = f["done"][()]
    else:
        create_file(prepared, evaluator, prints)
        done = np.zeros(config.grid.shape, dtype=np.uint8)
    chunk_size = config.chunk_size or default_chunk_size(config.grid.size)
    chunks = pending_chunks(done, chunk_size)
    recorder = RunRecorder.begin(config.out, pending=len(chunks), ranks=1, mode="serial")
    bar = _progress_bar(total=int(done.size), initial=int(np.count_nonzero(done)), enabled=progress)
    try:
        run_serial(evaluator.evaluate, config.grid, chunks, recorder, device=str(prepared.device), progress=bar)
    finally:
        bar.close()
        status = recorder.end()
    return status


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="pt",
        desc="surface",
        disable=None if enabled else True,  # None: shown on a terminal, not in logs
        file=sys.stderr,
        dynamic_ncols=True,
    )
