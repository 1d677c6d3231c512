"""``--plane B C``: the plane through θ0 and checkpoints B and C, d1 = θB − θ0 and d2 = θC − θ0, so that
the three models are at (0, 0), (1, 0) and (0, 1)."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import UserError
from .base import DirectionKind, Made
from .checkpoints import STATES, UNNORMALISED, model_markers, offsets, unit_span


class Plane(DirectionKind):
    name = "plane"
    settings = ("plane",)
    ndim = 2
    default_x = default_y = "-0.5:1.5:25"  # holds its three models
    dir_type = STATES
    ignored_settings = UNNORMALISED

    def check(self, config) -> None:
        plane = config.directions.plane
        if len(plane) != 2 or not all(isinstance(p, str) and p for p in plane):
            raise UserError("--plane takes two checkpoints: --plane B.pt C.pt")

    def sources(self, config) -> list[tuple[str, str]]:
        return [("B", config.directions.plane[0]), ("C", config.directions.plane[1])]

    def make(self, config, problem, base, ndim, device) -> Made:
        b, c = config.directions.plane
        return Made(
            directions=offsets(problem.model, base, [("--plane", b), ("--plane", c)]),
            description=f"plane through {Path(b).stem} and {Path(c).stem}",
            axis_labels=["x: θ0 + x·(θB − θ0) + y·(θC − θ0)", "y"],
            short_labels=["x (towards B)", "y (towards C)"],
            markers=model_markers([b, c]),
        )

    def auto_span(self, config, made, axis, evaluate) -> tuple[float, float]:
        return unit_span()
