"""The numerical core: directions, grid, losses, evaluation and curvature, and the one exception type
for user mistakes (:mod:`.errors`). It imports torch and numpy only (and scipy's eigensolver, for the
Hessian).

Names are loaded on first use, so that the torch-free parts (:mod:`.grid`, :mod:`.measurements`,
:mod:`.options`) can be imported without importing torch.
"""

from importlib import import_module

_EXPORTS = {
    "Axis": "grid",
    "Grid": "grid",
    "chunk_bounds": "grid",
    "pending_chunks": "grid",
    "Measurement": "measurements",
    "SPLITS": "measurements",
    "Samples": "samples",
    "SurfaceEvaluator": "evaluate",
    "base_tensors": "directions",
    "make_directions": "directions",
    "normalize_direction": "directions",
    "random_direction": "directions",
    "cross_entropy": "losses",
    "causal_lm": "losses",
    "mse": "losses",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
