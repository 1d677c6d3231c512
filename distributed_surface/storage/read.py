"""Reading a surface file back whole (for ``dsurf info``, pictures and exports): its values, done mask,
records, and what the directions' kind recorded. torch is not imported (a reader starts fast)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import h5py
import numpy as np

from ..core import measurements as declared
from ..core.measurements import Measurement
from .layout import plain
from .open import open_checked


@dataclass
class SurfaceData:
    """Everything in a surface file, read into memory (for info, plots and exports). ``timings``: one
    record per chunk; ``point_runs``: the run that computed each point (-1: none yet; None in files
    that kept no record per point)."""

    path: str
    attrs: dict
    config: dict
    x: np.ndarray
    y: np.ndarray | None
    metrics: dict[str, np.ndarray]
    done: np.ndarray
    timings: np.ndarray
    runs: np.ndarray
    point_runs: np.ndarray | None = None
    points: np.ndarray | None = None  # (n, ndim) offsets where the surface is a list of points
    curve: np.ndarray | None = None  # which curve each point is on (a Bézier curve: 0; its straight line: 1)
    frame: dict = field(default_factory=dict)  # what the directions' kind recorded (kind, sources, markers)
    trajectory: dict | None = None  # the checkpoints' projections, for a trajectory's surface

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", "unknown"))

    @property
    def progress(self) -> tuple[int, int]:
        return int(np.count_nonzero(self.done)), int(self.done.size)


def read_surface(path: str) -> SurfaceData:
    """Read a surface file whole (directions excepted)."""
    with open_checked(path, "r") as f:
        attrs = {key: plain(value) for key, value in f.attrs.items()}
        done = f["done"][()]
        timings, point_runs = _chunk_records(f["timings"][()], per_point=int(attrs.get("format_version", 1)) >= 2)
        if point_runs is not None:  # a point killed between its record and its done bit counts as not computed
            point_runs = np.where(done.reshape(-1) != 0, point_runs, -1)
        return SurfaceData(
            path=path,
            attrs=attrs,
            config=json.loads(attrs.get("config", "{}")),
            x=f["xcoordinates"][()],
            y=f["ycoordinates"][()] if "ycoordinates" in f else None,
            metrics={m.name: f[m.name][()] for m in stored_measurements(f)},
            done=done,
            timings=timings,
            runs=_run_records(f["runs"][()]),
            point_runs=point_runs,
            points=f["points"][()] if "points" in f else None,
            curve=f["curve"][()] if "curve" in f else None,
            frame=read_frame(f),
            trajectory=_trajectory(f),
        )


def read_frame(f: h5py.File) -> dict:
    """What the directions' kind recorded: kind, sources and markers (decoded), and the rest."""
    attrs = {key: plain(value) for key, value in f["directions"].attrs.items()} if "directions" in f else {}
    if "x" in f.get("directions", {}) and "kind" not in attrs:  # files from before: on each axis
        attrs.update({key: plain(value) for key, value in f["directions"]["x"].attrs.items()})
    for key in ("sources", "markers"):
        attrs[key] = json.loads(attrs[key]) if isinstance(attrs.get(key), str) else []
    if "description" not in attrs and "norm" in attrs:
        # Files written before the kinds recorded a description: say what their drawn directions
        # recorded (the norm, the ignore rule and the seed), as their kind would now.
        attrs["description"] = f"{attrs['norm']}-normalised directions, ignore {attrs.get('ignore')}, seed {attrs.get('seed')}"
    return attrs


def _trajectory(f: h5py.File) -> dict | None:
    if "trajectory" not in f:
        return None
    group = f["trajectory"]
    return {
        "x": group["x"][()],
        "y": group["y"][()],
        "names": [plain(n) for n in group["names"][()]],
        "explained_variance_ratio": np.asarray(group.attrs["explained_variance_ratio"]),
    }


def _chunk_records(records: np.ndarray, per_point: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """One timing record per chunk, in the order they ran; and each point's run (per-point files)."""
    written = records[records["points"] > 0] if records.size else records
    if not per_point:
        return written, None
    point_runs = np.where(records["points"] > 0, records["run"], -1)
    _, first = np.unique(np.stack([written["run"], written["first_index"]], axis=1), axis=0, return_index=True)
    chunks = written[np.sort(first)] if written.size else written
    return chunks[np.argsort(chunks["start"], kind="stable")], point_runs


def _run_records(rows: np.ndarray) -> np.ndarray:
    """The runs' records in the order they ran (the ring's used slots, by run number)."""
    if "index" not in (rows.dtype.names or ()):
        return rows
    used = rows[rows["index"] >= 0]
    return used[np.argsort(used["index"], kind="stable")]


def stored_measurements(f: h5py.File) -> list[Measurement]:
    """The measurements a surface file holds: its declaration, or (files from before it) every dataset
    named like a measurement with the grid's shape."""
    if "measurements" in f.attrs:
        return declared.from_json(plain(f.attrs["measurements"]))
    shape = f["done"].shape
    return [
        Measurement(name, str(f[name].dtype), f[name].shape[len(shape):])
        for name in declared.ordered(n for n in f if declared.is_measurement_name(n))
        if isinstance(f[name], h5py.Dataset) and f[name].shape[: len(shape)] == shape
    ]
