"""The numerical core: directions, grid and evaluation. It imports torch and numpy only."""

from .directions import base_tensors, make_directions, normalize_direction, random_direction
from .evaluate import SurfaceEvaluator
from .grid import Axis, Grid, chunk_bounds, pending_chunks

__all__ = [
    "Axis",
    "Grid",
    "SurfaceEvaluator",
    "base_tensors",
    "chunk_bounds",
    "make_directions",
    "normalize_direction",
    "pending_chunks",
    "random_direction",
]
