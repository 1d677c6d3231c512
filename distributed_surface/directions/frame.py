"""A run's directions and points, made by the kind its settings select, and what the file records of
them: the same for every kind.

Point (a, b) is θ0 + a·d1 + b·d2. The kind (:mod:`.registry`) makes d1 (and d2); ``--params`` then
restricts them and the points are the kind's own, ``--points``' or the grid (:mod:`.options`). The
file records, on its ``directions`` group: ``kind``, ``dir_type``, ``sources`` (JSON: every file read,
with its role and sha256), ``markers`` (JSON), ``description``, ``axis_labels`` and
``axis_short_labels`` (JSON lists), ``curves`` (JSON list), ``params``, and what the kind adds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..core.grid import Grid, PointList
from ..core.errors import UserError
from ..hf import file_sha256
from ..model_folders import folder_files
from .base import DirectionKind, Made
from .options import read_points, restrict_to


@dataclass
class Frame:
    """The selected ``kind``, what it ``made`` (directions on the CPU, ``--params`` applied), the points
    to evaluate (``layout``) and the attributes the file records of them (``attrs``)."""

    kind: DirectionKind
    made: Made
    layout: Grid | PointList
    attrs: dict = field(default_factory=dict)

    @property
    def directions(self) -> list:
        return self.made.directions

    @property
    def trajectory(self) -> dict | None:
        return self.made.trajectory


def make_frame(config, problem, *, device=None) -> Frame:
    """The directions and points of ``config`` for ``problem``'s model (which holds θ0)."""
    from ..core.directions import base_tensors

    kind = config.direction_kind
    base = base_tensors(problem.model, config.directions.dir_type)
    ndim = read_points(config.directions.points).ndim if config.directions.points is not None else config.grid.ndim
    made = kind.make(config, problem, base, ndim, device)
    sources = [file_source(role, path) for role, path in kind.sources(config)]  # (read by now: named by their flags)
    if config.directions.params is not None:
        made.directions = restrict_to(made.directions, base, config.directions.params)
    _check_not_zero(kind, made.directions)
    layout = make_layout(config, len(made.directions))
    attrs = {"kind": kind.name, "dir_type": config.directions.dir_type, "sources": json.dumps(sources),
             "markers": json.dumps(made.markers), "description": made.description}  # fmt: skip
    for key, values in (("axis_labels", made.axis_labels), ("axis_short_labels", made.short_labels), ("curves", made.curves)):
        if values:
            attrs[key] = json.dumps(list(values))
    attrs.update(made.record)
    if config.directions.params is not None:
        attrs["params"] = config.directions.params
    return Frame(kind, made, layout, attrs)


def _check_not_zero(kind: DirectionKind, directions: list) -> None:
    """Refuse a direction that is zero everywhere (``--to`` a checkpoint equal to θ0): every point along
    it would be θ0, and a flat line would look like a finding."""
    for k, direction in enumerate(directions):
        if all(not bool(tensor.any()) for tensor in direction.values()):
            raise UserError(
                f"{kind.flag}: direction {k + 1} is zero everywhere (a checkpoint that equals the model's weights?): "
                "every point along it would be the same"
            )


def make_layout(config, ndim: int) -> Grid | PointList:
    """The points of ``config`` for ``ndim`` directions: the kind's own, ``--points``' or the grid."""
    kind = config.direction_kind
    own = kind.points(config)
    if own is not None:
        return own
    if config.directions.points is not None:
        points = read_points(config.directions.points)
        if points.ndim != ndim:
            raise UserError(f"--points {config.directions.points!r} has {points.ndim} column(s); these directions need {ndim}")
        return points
    grid = config.grid
    if grid.ndim != ndim:
        raise UserError(
            f"{kind.flag} gives {ndim} direction(s), the grid has {grid.ndim} axes: "
            + ("give --x only" if ndim == 1 else "give --x and --y")
        )
    return grid


def check_sources(config, stored: dict) -> None:
    """Refuse to resume a file whose directions came from other checkpoints or files than the ones
    ``config`` names (compared by content)."""
    recorded = stored.get("sources", [])  # (as storage.read_frame decodes it)
    now = [file_source(role, path) for role, path in config.direction_kind.sources(config)]
    if len(now) != len(recorded):
        raise UserError(f"--resume: {config.kind_flag} names {len(now)} file(s); the surface was made from {len(recorded)}")
    for mine, theirs in zip(now, recorded):
        if mine["sha256"] != theirs["sha256"]:
            raise UserError(
                f"--resume: {mine['path']!r} ({mine['role']}) is not the file the surface was made from "
                f"({theirs['path']!r}: another sha256)"
            )


def file_source(role: str, path: str) -> dict:
    """A file the directions are made from: its role, path and sha256. A folder (a model or adapter
    folder, :mod:`..model_folders`) is recorded by the sha256 of each file that decides its weights,
    under ``files``, and by the sha256 of those, as JSON, under ``sha256``."""
    file = Path(path)
    if file.is_dir():
        files = folder_files(role, path)
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        return {"role": role, "path": str(path), "sha256": digest, "files": files}
    if not file.is_file():
        raise UserError(f"{role} {path!r}: no such file or folder")
    return {"role": role, "path": str(path), "sha256": file_sha256(file)}
