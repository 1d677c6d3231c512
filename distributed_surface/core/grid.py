"""The points of a surface and their division into chunks, the engine's unit of work.

A :class:`Grid` is a 1D or 2D grid of offsets (a, b): points are numbered by a flat index in row-major
order, index ``k`` is ``(i, j) = divmod(k, ny)``, the point ``(xcoordinates[i], ycoordinates[j])``; a
1D grid has ``ny = 1`` and no y axis. A :class:`PointList` is any list of offsets (a curve through the
plane, a user's file of points), numbered in its order. Both give the offsets of points by index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Axis:
    """``num`` evenly spaced coordinates from ``min`` to ``max`` inclusive (``MIN:MAX:NUM``)."""

    min: float
    max: float
    num: int

    def __post_init__(self):
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise ValueError(f"axis bounds must be finite numbers, got {self.min}:{self.max}")
        if self.num < 1:
            raise ValueError(f"NUM must be at least 1, got {self.num}")
        if self.min > self.max:
            raise ValueError(f"MIN must not exceed MAX, got {self.min} > {self.max}")
        if self.num == 1 and self.min != self.max:
            raise ValueError(f"a single point needs MIN == MAX, got {self.min}:{self.max}:1")
        if self.num > 1 and self.min == self.max:
            # (every point would be the same one, computed NUM times)
            raise ValueError(f"{self.num} points need MIN < MAX, got {self.min:g}:{self.max:g}:{self.num}")

    @classmethod
    def parse(cls, text: str) -> "Axis":
        """Parse ``"MIN:MAX:NUM"``, e.g. ``"-1:1:51"``."""
        parts = str(text).split(":")
        if len(parts) != 3:
            raise ValueError(f"expected MIN:MAX:NUM, got {text!r}")
        try:
            lo, hi = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"MIN and MAX must be numbers, got {text!r}") from None
        try:
            num = int(parts[2])
        except ValueError:
            raise ValueError(f"NUM must be a whole number, got {text!r}") from None
        return cls(lo, hi, num)

    def __str__(self) -> str:
        return f"{self.min:g}:{self.max:g}:{self.num}"

    @property
    def coordinates(self) -> np.ndarray:
        return np.linspace(self.min, self.max, self.num, dtype=np.float64)


@dataclass(frozen=True)
class Grid:
    """A 1D (``y is None``) or 2D grid of offsets."""

    x: Axis
    y: Axis | None = None

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.x.num,) if self.y is None else (self.x.num, self.y.num)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def offsets(self, indices: np.ndarray) -> np.ndarray:
        """The offsets of the points with these flat indices: shape (len(indices), ndim), float64."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.y is None:
            return self.x.coordinates[indices][:, None]
        i, j = np.divmod(indices, self.y.num)
        return np.stack([self.x.coordinates[i], self.y.coordinates[j]], axis=1)


class PointList:
    """Explicit points: ``coordinates`` (n, ndim) offsets along the ndim directions; ``parameter`` (n,)
    what each point is drawn against (the curve's t, or the point's number); ``curve`` (n,) small
    integers that tell several curves apart (None: one)."""

    def __init__(self, coordinates, parameter=None, curve=None):
        coordinates = np.asarray(coordinates, dtype=np.float64)
        if coordinates.ndim != 2 or coordinates.shape[1] not in (1, 2) or len(coordinates) == 0:
            raise ValueError(f"points must be a non-empty (n, 1) or (n, 2) array of offsets, got shape {coordinates.shape}")
        if not np.all(np.isfinite(coordinates)):
            raise ValueError("points must be finite numbers")
        self.coordinates = coordinates
        self.parameter = np.arange(len(coordinates), dtype=np.float64) if parameter is None else np.asarray(parameter, np.float64)
        self.curve = None if curve is None else np.asarray(curve, dtype=np.int8)
        if self.parameter.shape != (len(coordinates),) or (self.curve is not None and self.curve.shape != (len(coordinates),)):
            raise ValueError("a point list's parameter and curve need one value a point")

    @property
    def ndim(self) -> int:
        return self.coordinates.shape[1]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.coordinates),)

    @property
    def size(self) -> int:
        return len(self.coordinates)

    def offsets(self, indices: np.ndarray) -> np.ndarray:
        return self.coordinates[np.asarray(indices, dtype=np.int64)]

    def __eq__(self, other) -> bool:
        return isinstance(other, PointList) and np.array_equal(self.coordinates, other.coordinates)

    __hash__ = None


def bezier_points(t: np.ndarray) -> PointList:
    """The quadratic Bézier curve θ(t) = (1−t)²θ0 + 2t(1−t)θM + t²θB at ``t`` and, for comparison, the
    straight line θ0 + t(θB − θ0), as offsets along d1 = θM − θ0 and d2 = θ0 − 2θM + θB: the curve is
    at (2t, t²), the line at (2t, t). Curve 0 is the Bézier curve, curve 1 the line."""
    t = np.asarray(t, dtype=np.float64)
    curve = np.stack([2 * t, t**2], axis=1)
    line = np.stack([2 * t, t], axis=1)
    return PointList(np.concatenate([curve, line]), np.concatenate([t, t]), np.repeat([0, 1], len(t)))


def chunk_bounds(size: int, chunk_size: int) -> list[tuple[int, int]]:
    """The fixed division of flat indices ``0 .. size-1`` into ``[start, stop)`` ranges of
    ``chunk_size`` points (the last one shorter)."""
    if chunk_size < 1:
        raise ValueError(f"chunk size must be at least 1, got {chunk_size}")
    return [(start, min(start + chunk_size, size)) for start in range(0, size, chunk_size)]


def pending_chunks(done: np.ndarray, chunk_size: int) -> list[np.ndarray]:
    """The flat indices still to compute, chunk by chunk: for each fixed chunk, its points whose
    ``done`` flag is 0; chunks with nothing left are left out."""
    flat_done = np.asarray(done).reshape(-1)
    chunks = []
    for start, stop in chunk_bounds(flat_done.size, chunk_size):
        todo = start + np.flatnonzero(flat_done[start:stop] == 0)
        if todo.size:
            chunks.append(todo)
    return chunks


def default_chunk_size(grid_size: int, workers: int = 1) -> int:
    """Chunks small enough to balance ``workers`` (about 8 per worker) and to lose little work when a
    run stops, large enough to amortise per-chunk overhead."""
    return max(1, min(64, grid_size // (8 * max(1, workers)) or 1))


def guided_chunks(done: np.ndarray, workers: int, max_size: int = 64) -> list[np.ndarray]:
    """The flat indices still to compute, in chunks that shrink as the work runs out (guided
    self-scheduling): each is the pending points left over ``2 × workers``, between 1 and ``max_size``.
    Early chunks are large (few messages and writes); the last ones are single points, so that at the
    end no worker, however slow, holds a large chunk while the others wait."""
    pending = np.flatnonzero(np.asarray(done).reshape(-1) == 0)
    chunks, start = [], 0
    while start < pending.size:
        size = min(max_size, max(1, -(-(pending.size - start) // (2 * max(1, workers)))))
        chunks.append(pending[start : start + size])
        start += size
    return chunks
