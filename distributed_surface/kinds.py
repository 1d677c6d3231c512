"""Where a surface's directions and points come from: a kind of directions (random normal ones, or
checkpoints and files) and the points they are evaluated at (a grid, a curve, a file of points).

Every kind gives d1 (and d2) and the points; the evaluator, the engine, the storage, resuming, the
pictures and the exports are the same for all of them. Point (a, b) is θ0 + a·d1 + b·d2:

- ``random_normal``: drawn from N(0, 1) with the seed and normalised (``--norm``, ``--ignore``).
- ``interpolate`` (``--to B``): d1 = θB − θ0, so θ0 is at 0 and B at 1 (the paper's ``model_file2``).
- ``plane`` (``--plane B C``): d1 = θB − θ0, d2 = θC − θ0: the three models at (0,0), (1,0), (0,1).
- ``bezier`` (``--bend M --to B``): d1 = θM − θ0, d2 = θ0 − 2θM + θB; the curve
  (1−t)²θ0 + 2t(1−t)θM + t²θB is at (2t, t²) and the straight line from θ0 to B at (2t, t).
- ``pca`` (``--trajectory GLOB``): the first two principal components of the checkpoints' offsets
  θ_i − θ0 (:mod:`.core.pca`), with each checkpoint's projection.
- ``file`` (``--directions FILE``): the directions of a surface file, or of a torch file holding one
  or two ``{name: tensor}`` dicts.

Checkpoint kinds are not normalised. ``--params REGEX`` keeps only the matching tensors moving. Every
file a kind reads is recorded with its sha256, so that a resumed run can refuse other checkpoints.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import RunConfig
from .core.directions import Direction, base_tensors, difference, is_movable, make_directions, restrict
from .core.grid import Grid, PointList, bezier_points
from .core.pca import trajectory_pca
from .core.errors import UserError
from .problem import read_state


@dataclass
class Frame:
    """A kind's directions (on the CPU), the points to evaluate, and what the file records of them:
    ``attrs`` (kind, sources with their sha256, markers of the models in the plane, ...) and, for a
    trajectory, each checkpoint's projection."""

    directions: list[Direction]
    layout: Grid | PointList
    attrs: dict = field(default_factory=dict)
    trajectory: dict | None = None


def make_frame(config: RunConfig, model: nn.Module, *, problem=None, device=None) -> Frame:
    """The directions and points of ``config`` for ``model`` (which holds θ0); the Hessian's
    eigenvectors need the whole ``problem`` (and the ``device`` to compute them on)."""
    base = base_tensors(model, config.dir_type)
    kind = config.kind
    sources, markers, trajectory = [], [], None
    if kind == "random_normal":
        ndim = _points_ndim(config) or config.grid.ndim
        directions = make_directions(base, ndim, config.norm, config.ignore, config.seed)
    elif kind in ("interpolate", "plane", "bezier"):
        if kind == "interpolate":
            roles = [("to", config.to)]
        elif kind == "plane":
            roles = [("B", config.plane[0]), ("C", config.plane[1])]
        else:
            roles = [("bend", config.bend), ("to", config.to)]
        flags = {"to": "--to", "B": "--plane", "C": "--plane", "bend": "--bend"}
        offsets = []
        for role, path in roles:
            state = read_state(path, model, flags[role])
            offsets.append(difference(base, state))
            sources.append(_source(role, path))
        if kind == "bezier":
            middle, end = offsets
            directions = [middle, {name: (end[name].double() - 2 * middle[name].double()).to(t.dtype)
                                   for name, t in middle.items()}]  # fmt: skip
            markers = [{"label": "θ0", "at": [0.0]}, {"label": Path(config.to).stem, "at": [1.0]}]
        else:
            directions = offsets
            unit = np.eye(len(offsets))
            markers = [{"label": "θ0", "at": [0.0] * len(offsets)}]
            markers += [{"label": Path(path).stem, "at": unit[k].tolist()} for k, (_, path) in enumerate(roles)]
    elif kind == "pca":
        directions, trajectory, sources = _trajectory(config, model, base)
        markers = [{"label": "θ0", "at": [0.0, 0.0]}]
    elif kind == "hessian":
        from .spectrum import hessian_directions

        directions = hessian_directions(config, problem, device)
    else:
        directions = read_direction_file(config.directions, base)
        sources.append(_source("directions", config.directions))
    if config.params is not None:
        directions = restrict_to(directions, base, config.params)
    layout = make_layout(config, len(directions))
    attrs = {"kind": kind, "dir_type": config.dir_type, "sources": json.dumps(sources), "markers": json.dumps(markers)}
    if kind in ("random_normal", "hessian"):
        attrs.update(norm=config.norm, ignore=config.ignore, seed=config.seed)
    if kind == "hessian":
        attrs.update(hessian_params=config.hessian_params, hessian_samples=config.hessian_samples or 0)
    if kind == "pca":
        attrs["ignore"] = config.ignore
        attrs["explained_variance_ratio"] = trajectory["explained_variance_ratio"]
    if config.params is not None:
        attrs["params"] = config.params
    return Frame(directions, layout, attrs, trajectory)


def make_layout(config: RunConfig, ndim: int) -> Grid | PointList:
    """The points of ``config`` for ``ndim`` directions: its grid, a Bézier curve, or a file's points."""
    if config.kind == "bezier":
        return bezier_points(config.grid.x.coordinates)
    if config.points is not None:
        points = read_points(config.points)
        if points.ndim != ndim:
            raise UserError(f"--points {config.points!r} has {points.ndim} column(s); these directions need {ndim}")
        return points
    grid = config.grid
    if grid.ndim != ndim:
        raise UserError(
            f"{config.kind_flag} gives {ndim} direction(s), the grid has {grid.ndim} axes: "
            + ("give --x only" if ndim == 1 else "give --x and --y")
        )
    return grid


def check_sources(config: RunConfig, stored: dict) -> None:
    """Refuse to resume a file whose directions came from other checkpoints or files than the ones
    ``config`` names (compared by content)."""
    recorded = stored.get("sources", [])  # (as storage.read_frame decodes it)
    now = _sources_of(config)
    if len(now) != len(recorded):
        raise UserError(f"--resume: {config.kind_flag} names {len(now)} file(s); the surface was made from {len(recorded)}")
    for mine, theirs in zip(now, recorded):
        if mine["sha256"] != theirs["sha256"]:
            raise UserError(
                f"--resume: {mine['path']!r} ({mine['role']}) is not the file the surface was made from "
                f"({theirs['path']!r}: another sha256)"
            )


def _sources_of(config: RunConfig) -> list[dict]:
    kind = config.kind
    if kind == "interpolate":
        return [_source("to", config.to)]
    if kind == "plane":
        return [_source("B", config.plane[0]), _source("C", config.plane[1])]
    if kind == "bezier":
        return [_source("bend", config.bend), _source("to", config.to)]
    if kind == "pca":
        return [_source(f"checkpoint {k}", path) for k, path in enumerate(trajectory_files(config.trajectory))]
    if kind == "file":
        return [_source("directions", config.directions)]
    return []


def _source(role: str, path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{role} {path!r}: no such file")
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return {"role": role, "path": str(path), "sha256": digest.hexdigest()}


# ---------------------------------------------------------------- trajectories


def trajectory_files(pattern: str) -> list[str]:
    """The checkpoints a glob matches, in natural order (epoch_2 before epoch_10)."""
    files = sorted(glob.glob(pattern), key=_natural)
    files = [f for f in files if Path(f).is_file()]
    if len(files) < 2:
        raise UserError(f"--trajectory {pattern!r} matches {len(files)} checkpoint(s): a trajectory needs at least 2")
    return files


def _natural(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _trajectory(config: RunConfig, model: nn.Module, base: dict):
    files = trajectory_files(config.trajectory)
    states = [read_state(path, model, "--trajectory", mmap=True) for path in files]
    ignore_biasbn = config.ignore == "biasbn"

    def moving(name, tensor):
        # the paper's setup_PCA_directions: 1-D offsets are zero under --ignore biasbn
        return is_movable(tensor) and (tensor.dim() > 1 or not ignore_biasbn)

    try:
        found = trajectory_pca(base, states, moving)
    except ValueError as exc:
        raise UserError(f"--trajectory {config.trajectory!r}: {exc}") from None
    trajectory = {
        "x": found.projections[:, 0],
        "y": found.projections[:, 1],
        "names": [Path(f).name for f in files],
        "explained_variance_ratio": found.explained_variance_ratio,
    }
    sources = [_source(f"checkpoint {k}", path) for k, path in enumerate(files)]
    return found.directions, trajectory, sources


# ---------------------------------------------------------------- files of directions and points


def read_direction_file(path: str, base: dict) -> list[Direction]:
    """One or two directions from a surface file (HDF5) or a torch file of ``{name: tensor}`` dicts,
    checked against ``base``'s names and shapes."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--directions {path!r}: no such file")
    if file.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n":
        from .storage import open_checked, read_directions

        with open_checked(path, "r") as f:
            directions = [{k: torch.from_numpy(v) for k, v in d.items()} for d in read_directions(f)]
    else:
        try:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a damaged or foreign file
            raise UserError(f"--directions {path!r} is neither a surface file nor a readable torch file: {exc}") from None
        directions = [loaded] if isinstance(loaded, dict) else list(loaded) if isinstance(loaded, (list, tuple)) else []
        if not 1 <= len(directions) <= 2 or not all(
            isinstance(d, dict) and all(isinstance(t, torch.Tensor) for t in d.values()) for d in directions
        ):
            raise UserError(f"--directions {path!r} must hold one or two {{parameter name: tensor}} dicts")
    for k, direction in enumerate(directions):
        missing = [name for name in base if name not in direction]
        unexpected = [name for name in direction if name not in base]
        if missing or unexpected:
            what = f"no tensor for {missing[0]!r}" if missing else f"a tensor {unexpected[0]!r} the model does not have"
            raise UserError(f"--directions {path!r} is of another model: direction {k + 1} has {what}")
        for name, tensor in base.items():
            if tuple(direction[name].shape) != tuple(tensor.shape):
                raise UserError(
                    f"--directions {path!r} is of another model: {name!r} has shape {tuple(direction[name].shape)}, "
                    f"the model's is {tuple(tensor.shape)}"
                )
        directions[k] = {name: direction[name].to(base[name].dtype) for name in base}
    return directions


def read_points(path: str) -> PointList:
    """The offsets of a CSV file: one or two numbers a row (a header row of names is allowed)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--points {path!r}: no such file")
    rows = []
    try:
        with file.open(newline="") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                cells = [c.strip() for c in row if c.strip()]
                if not cells or cells[0].startswith("#"):
                    continue
                try:
                    rows.append([float(c) for c in cells])
                except ValueError:
                    if number == 1 and not rows:
                        continue  # a header
                    bad = next(c for c in cells if not _is_number(c))
                    raise UserError(f"--points {path!r}: row {number} holds {bad!r}, not a number") from None
    except UnicodeDecodeError:
        raise UserError(f"--points {path!r} is not a text (CSV) file") from None
    widths = {len(r) for r in rows}
    if not rows:
        raise UserError(f"--points {path!r} holds no points")
    if len(widths) > 1 or widths.pop() not in (1, 2):
        raise UserError(f"--points {path!r}: every row must hold one offset (a) or two (a, b)")
    coordinates = np.array(rows, dtype=np.float64)
    if not np.all(np.isfinite(coordinates)):
        raise UserError(f"--points {path!r} holds a number that is not finite")
    return PointList(coordinates, coordinates[:, 0] if coordinates.shape[1] == 1 else None)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _points_ndim(config: RunConfig) -> int | None:
    return read_points(config.points).ndim if config.points is not None else None


def restrict_to(directions: list[Direction], base: dict, pattern: str) -> list[Direction]:
    """Only tensors whose names match ``pattern`` move; refused where none of the moving ones match."""
    regex = re.compile(pattern)
    moving = [name for name in base if any(bool(d[name].count_nonzero()) for d in directions)]
    kept = [name for name in moving if regex.search(name)]
    if not kept:
        shown = ", ".join(repr(n) for n in moving[:4]) + (" ..." if len(moving) > 4 else "")
        raise UserError(f"--params {pattern!r} matches no parameter that moves ({shown})")
    return [restrict(d, lambda name: bool(regex.search(name))) for d in directions]
