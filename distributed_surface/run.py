"""``dsurf run``: from a config to a complete surface file, in one process or under MPI.

:class:`SurfaceJob` is what the engines run for a loss surface: on rank 0 it checks the output, loads
the problem, checks it, makes (or, to resume, reads) the directions and creates the file; on every
working rank it builds the evaluator of the splits' loss and accuracy. The engines know nothing else
of it (:mod:`.engine.job`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig
from .core.directions import Direction
from .core.grid import Grid, PointList
from .core.curvature import CurvatureEvaluator
from .core.evaluate import BatchError, SurfaceEvaluator
from .core.measurements import Measurement
from .engine.job import Setup, Worker
from .engine.launcher import world_size
from .engine.serial import run_serial
from .engine.stop import StopRequest
from .core.errors import UserError
from .directions.frame import Frame, check_sources, make_frame, make_layout
from .directions.options import read_points
from .span import choose_spans
from .hessian_operator import check_twice_differentiable, operator_for
from .problem import Problem, check_problem, fingerprint, fingerprint_what, load_problem, resolve_device
from .engine.runtime import keep_freed_host_memory
from .output import check_grid_fits, check_output
from .storage import (
    Status,
    check_space,
    check_writable,
    create_surface,
    open_checked,
    publish,
    read_directions,
    read_frame,
    stored_measurements,
    surface_bytes,
    take_lock,
)



@dataclass
class Loaded:
    """What a rank has loaded for its worker: the problem, its device, the directions and the evaluator."""

    problem: Problem
    device: torch.device
    directions: list[Direction]
    evaluator: SurfaceEvaluator


class SurfaceJob:
    """The loss (and accuracy) of every split at every point of ``config``'s grid, into ``config.output.out``."""

    def __init__(self, config: RunConfig, *, resume: bool = False, overwrite: bool = False):
        self.config = config
        self.out = config.output.out
        self.resume = resume
        self.overwrite = overwrite

    def prepare(self, local_rank: int = 0) -> Setup:
        """Take the file's lock, check everything, then create the file (or read the one to resume). A
        mistake raises :class:`UserError` before any file is touched. A new file is in place at once;
        one that replaces an existing file (``--overwrite``) is built beside it, and the engine puts it
        in place once it holds a chunk."""
        config = self.config
        check_writable(config.output.out)
        self._lock = take_lock(config.output.out)
        try:
            return self._prepare(local_rank)
        except BaseException:
            self.close()
            raise

    def _prepare(self, local_rank: int) -> Setup:
        config = self.config
        resuming = check_output(config, resume=self.resume, overwrite=self.overwrite)
        check_grid_fits(config)
        device = resolve_device(config.evaluation.device, local_rank)
        problem = load_problem(config)
        check_problem(problem, device, config.data_flags)
        prints = fingerprint(problem)
        frame = None
        if resuming:
            check_fingerprint(config.output.out, prints)
            with open_checked(config.output.out, "r") as f:
                if config.auto_axes:  # the spans the first run chose
                    stored = RunConfig.from_json(_text(f.attrs["config"]))
                    config = self.config = config.replace(**{a: stored.value(a) for a in config.auto_axes})
                directions = [{k: torch.from_numpy(v) for k, v in d.items()} for d in read_directions(f)]
                done = f["done"][()]
                stored = [m.name for m in stored_measurements(f)]
                check_sources(config, read_frame(f))
                layout = stored_layout(config, f)
        else:
            frame = make_frame(config, problem, device=device)
            directions, layout = frame.directions, frame.layout
        if config.evaluation.measure == "hessian":  # (a wrong Hessian would be stored with exit 0)
            check_twice_differentiable(operator_for(config, problem, device))
        evaluator = make_evaluator(config, problem, device, directions)
        if config.auto_axes and not resuming:
            chosen, notes = choose_spans(config, frame, _naming_failures(evaluator))
            for name, span in chosen.items():
                note = f" ({notes[name]})" if name in notes else ""
                print(f"dsurf: --{name} auto: {span}{note}", file=sys.stderr)
            if notes:
                frame.attrs["auto_span_notes"] = json.dumps(notes)
            config = self.config = config.replace(**chosen)
            frame.layout = layout = make_layout(config, len(frame.directions))
        path, replaces = config.output.out, None
        if resuming:
            measured = [m.name for m in evaluator.measurements]
            if measured != stored:
                raise UserError(f"--resume: {config.output.out!r} holds {', '.join(stored)}; this run measures {', '.join(measured)}")
        else:
            exists = Path(config.output.out).exists()
            temporary = create_file(config, evaluator.measurements, frame, prints, replacing=exists)
            if exists:
                path, replaces = str(temporary), config.output.out
            else:
                publish(temporary, config.output.out)
            done = np.zeros(layout.shape, dtype=np.uint8)
        shared = {"prints": prints, "directions": [{k: v.numpy() for k, v in d.items()} for d in directions]}
        local = Loaded(problem, device, directions, evaluator)
        return Setup(done=done, start=time.time(), grid=layout, path=path, replaces=replaces, created=not resuming,
                     shared=shared, arrays=made_arrays(problem), local=local)  # fmt: skip

    def close(self) -> None:
        """Give back the file's lock (rank 0, once the file is closed)."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None

    def worker(self, setup: Setup, *, local_rank: int, root: bool) -> Worker:
        """This rank's evaluator: rank 0's from ``prepare``; elsewhere loaded here (the data rank 0 made
        from files, a tokenised corpus, taken from ``setup.arrays``, not made again) and checked to hold
        the same θ0 and data as rank 0's."""
        loaded = setup.local if root else None
        if loaded is None:
            config = self.config
            device = resolve_device(config.evaluation.device, local_rank)
            problem = load_problem(config, made=made_tensors(setup.arrays))
            if fingerprint(problem) != setup.shared["prints"]:
                raise UserError("loaded other weights or data than rank 0 (is the checkpoint or data set the same?)")
            directions = [{k: torch.from_numpy(v) for k, v in d.items()} for d in setup.shared["directions"]]
            loaded = Loaded(problem, device, directions, make_evaluator(config, problem, device, directions))
        evaluator = loaded.evaluator
        return Worker(evaluate=_naming_failures(evaluator), device=str(loaded.device), plan=describe_plan(evaluator),
                      placement=evaluator.placement)  # fmt: skip


def made_arrays(problem: Problem) -> dict[str, np.ndarray]:
    """The data rank 0 made from files (:attr:`Problem.made`), as ``{"split/name": array}``: what the
    other ranks are sent (``Setup.arrays``)."""
    return {f"{split}/{name}": tensor.numpy() for split, tensors in problem.made.items() for name, tensor in tensors.items()}


def made_tensors(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, torch.Tensor]]:
    """:func:`made_arrays` undone: ``{split: {name: tensor}}``."""
    made: dict[str, dict[str, torch.Tensor]] = {}
    for key, array in arrays.items():
        split, _, name = key.partition("/")
        made.setdefault(split, {})[name] = torch.from_numpy(array)
    return made


def run(
    config: RunConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True, stop: StopRequest | None = None
) -> Status:
    """Compute the surface of ``config``: distributed where this process is one of several MPI ranks,
    else in this process. Returns the file's final status. Signals (SIGUSR1, SIGTERM, SIGINT) stop the
    run through ``stop`` (default: handlers installed for the run)."""
    job = SurfaceJob(config, resume=resume, overwrite=overwrite)
    # The handlers stay until the file is closed: a second signal must not cut the close short. Under
    # MPI from the start, on every rank: a warning that comes while the model loads must not kill it.
    with stop or StopRequest() as stop:
        if world_size() > 1:
            from .engine.mpi import run_distributed

            return run_distributed(job, chunk_size=config.evaluation.chunk_size, rank0=config.evaluation.rank0, progress=progress, stop=stop)
        return run_serial(job, chunk_size=config.evaluation.chunk_size, progress=progress, stop=stop)


def check_fingerprint(path: str, expected: dict[str, object]) -> None:
    """Refuse to resume a file computed for other weights or data."""
    with open_checked(path, "r") as f:
        for key, value in expected.items():
            if key in f.attrs and f.attrs[key] != value:
                raise UserError(f"--resume: {fingerprint_what(key)} differ from those {path!r} was computed with")


def make_evaluator(config: RunConfig, problem: Problem, device: torch.device, directions) -> SurfaceEvaluator | CurvatureEvaluator:
    if device.type == "cpu":
        keep_freed_host_memory()
    try:
        evaluator = SurfaceEvaluator(
            problem.model,
            directions,
            problem.splits,
            problem.loss,
            batch_size=config.evaluation.batch_size,
            device=device,
            dir_type=config.directions.dir_type,
            points_per_pass=config.evaluation.points_per_pass,
            vmap=config.evaluation.vmap,
            precision=config.evaluation.precision,
            dtype=config.evaluation.dtype,
            compile=config.evaluation.compile,
            channels_last=None if config.evaluation.channels_last == "auto" else config.evaluation.channels_last,
            resident={"device": True, "host": False}.get(config.evaluation.data_placement),
        )
        if config.evaluation.measure == "hessian":
            evaluator = CurvatureEvaluator(evaluator, samples=config.evaluation.hessian_samples, params=config.evaluation.hessian_params,
                                           tol=config.evaluation.hessian_tol, seed=config.evaluation.seed)  # fmt: skip
        return evaluator
    except ValueError as exc:  # the evaluator's checks of the data and directions
        raise UserError(str(exc)) from None


def create_file(
    config: RunConfig, measurements: list[Measurement], frame: Frame, prints: dict[str, object], *, replacing: bool
) -> Path:
    """Write a new, empty surface file for this run beside ``config.output.out``; return where (see
    :func:`~.storage.create.create_surface`). Refused where the disk cannot hold it."""
    arrays = [{k: v.detach().cpu().numpy() for k, v in d.items()} for d in frame.directions]
    nbytes = surface_bytes(frame.layout.size, measurements, sum(a.nbytes for d in arrays for a in d.values()),
                           datasets=sum(len(d) for d in arrays))  # fmt: skip
    check_space(config.output.out, nbytes, replacing=replacing)
    return create_surface(
        config.output.out,
        config_json=config.to_json(),
        grid=frame.layout,
        measurements=measurements,
        directions=arrays,
        direction_attrs=frame.attrs,
        attrs={**prints, "torch_version": str(torch.__version__)},
        trajectory=frame.trajectory,
    )


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def stored_layout(config: RunConfig, f) -> Grid | PointList:
    """The points of the file being resumed; refused where ``--points`` names other points."""
    if "points" not in f:
        return config.grid
    layout = PointList(f["points"][()], f["xcoordinates"][()], f["curve"][()] if "curve" in f else None)
    if config.directions.points is not None and read_points(config.directions.points) != layout:
        raise UserError(f"--resume: --points {config.directions.points!r} holds other points than {config.output.out!r}")
    return layout


def describe_plan(evaluator: SurfaceEvaluator) -> str:
    """One line: how the evaluator runs (vmap or one point per pass, batch size) and why."""
    plan = evaluator.plan
    data = {"device": "on the device", "host": "in host memory, each batch copied to the device",
            "stream": "read from its Dataset on every pass"}[evaluator.placement]  # fmt: skip
    splits = " and ".join(evaluator.splits)
    return f"{plan.reason}; batch {plan.batch_size}, {splits} data {data} ({evaluator.device})"


def _naming_failures(evaluator: SurfaceEvaluator):
    """The evaluator's ``evaluate``, a batch it fails on, or running out of device memory, reported as a
    :class:`UserError`."""

    def evaluate(offsets):
        try:
            return evaluator.evaluate(offsets)
        except BatchError as exc:
            raise UserError(str(exc)) from exc
        except torch.OutOfMemoryError:
            plan = evaluator.plan
            raise UserError(
                f"out of memory on {evaluator.device} with batches of {plan.batch_size} samples and "
                f"{plan.points_per_pass} point(s) per pass: pass a smaller --batch-size (or --points-per-pass)"
            ) from None

    return evaluate
