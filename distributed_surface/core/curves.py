"""Curves among a surface's points: which points lie on which curve (a ``curve`` index per point, as
:func:`.grid.bezier_points` gives), the curves' names, and the loss barrier along each. Pure numpy: the
pictures and ``dsurf info`` compute the same barriers from what a file stores."""

from __future__ import annotations

import json

import numpy as np

from .measurements import SPLITS, measurement_name


def curve_names(recorded, indices) -> dict[int, str]:
    """A name for each curve index: the one recorded (a list, or its JSON text), else "curve K"."""
    names = json.loads(recorded) if isinstance(recorded, str) else list(recorded or [])
    return {int(k): str(names[k]) if 0 <= k < len(names) else f"curve {int(k)}" for k in np.unique(indices)}


def curve_order(parameter: np.ndarray, curve: np.ndarray, index: int) -> np.ndarray:
    """The points of curve ``index``, in the order of their parameter (t)."""
    members = np.flatnonzero(curve == index)
    return members[np.argsort(parameter[members], kind="stable")]


def loss_barriers(parameter: np.ndarray, curve: np.ndarray | None, metrics: dict, recorded_names) -> dict[str, float]:
    """The loss barrier along each curve: the highest (first split's) loss on it minus the mean of its
    two ends, by the curve's name (``recorded_names``: see :func:`curve_names`). Empty where the points
    lie on no curves; a curve not computed whole (a value not finite) is left out."""
    loss = measurement_name(SPLITS[0], "loss")
    if curve is None or loss not in metrics:
        return {}
    result = {}
    for index, name in curve_names(recorded_names, curve).items():
        along = np.asarray(metrics[loss])[curve_order(parameter, curve, index)]
        if along.size >= 2 and np.all(np.isfinite(along)):
            result[name] = float(along.max() - (along[0] + along[-1]) / 2)
    return result
