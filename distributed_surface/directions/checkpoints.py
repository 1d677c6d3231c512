"""What the kinds made of checkpoints share (``--to``, ``--plane``, ``--bend``): each checkpoint's offset
from θ0, the models to mark, and their span. Not a kind itself.

Between checkpoints the BatchNorm statistics move too, so that each model is itself at its point: these
kinds imply ``--dir-type states`` (as the paper's interpolation scripts use), and their directions are
neither drawn nor normalised (``--norm``, ``--seed`` and ``--ignore`` are refused)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import UserError

UNNORMALISED = ("norm", "seed", "ignore")
STATES = "states"


def check_path(flag: str, value) -> None:
    """A checkpoint setting holds a non-empty string."""
    if value is not None and (not isinstance(value, str) or not value):
        raise UserError(f"{flag} must be a non-empty string")


def offsets(model, base: dict, checkpoints: list[tuple[str, str]]) -> list[dict]:
    """θ − θ0 over ``base``'s tensors for each ``(flag, path)`` checkpoint, checked to fit ``model``."""
    from ..core.directions import difference
    from ..problem import read_state

    return [difference(base, read_state(path, model, flag)) for flag, path in checkpoints]


def model_markers(paths: list[str]) -> list[dict]:
    """θ0 at the origin and the checkpoint of each direction at 1 along it."""
    unit = np.eye(len(paths))
    markers = [{"label": "θ0", "at": [0.0] * len(paths)}]
    return markers + [{"label": Path(path).stem, "at": unit[k].tolist()} for k, path in enumerate(paths)]


def unit_span() -> tuple[float, float]:
    """``--x auto`` along a direction to a checkpoint: θ0 at 0 and the checkpoint at 1, with a margin."""
    from ..span import model_span

    return model_span(np.array([0.0, 1.0]))
