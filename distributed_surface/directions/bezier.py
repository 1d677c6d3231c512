"""``--bend M --to B``: the quadratic Bézier curve from θ0 through M to B, d1 = θM − θ0 and
d2 = θ0 − 2θM + θB, so that the curve (1−t)²θ0 + 2t(1−t)θM + t²θB is at (2t, t²), and the straight line
from θ0 to B, at (2t, t), beside it (``--x`` gives t). Its points are those of both curves."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import UserError
from .base import DirectionKind, Made
from .checkpoints import STATES, UNNORMALISED, check_path, offsets

# The curves of its points (core.grid.bezier_points), by index.
CURVES = ["curve", "straight line"]


class Bezier(DirectionKind):
    name = "bezier"
    settings = ("bend",)
    ndim = 1
    default_x = "0:1:41"  # t from θ0 to B
    dir_type = STATES
    ignored_settings = UNNORMALISED
    own_points = True

    def check(self, config) -> None:
        check_path("--bend", config.directions.bend)
        check_path("--to", config.directions.to)
        if config.directions.to is None:
            raise UserError("--bend M.pt draws the curve from θ0 through M to a checkpoint B: add --to B.pt")

    def sources(self, config) -> list[tuple[str, str]]:
        return [("bend", config.directions.bend), ("to", config.directions.to)]

    def make(self, config, problem, base, ndim, device) -> Made:
        middle, end = offsets(problem.model, base, [("--bend", config.directions.bend), ("--to", config.directions.to)])
        bend = {name: (end[name].double() - 2 * middle[name].double()).to(t.dtype) for name, t in middle.items()}
        return Made(
            directions=[middle, bend],
            description=f"curve through {Path(config.directions.bend).stem} to {Path(config.directions.to).stem}",
            axis_labels=["t: (1−t)²·θ0 + 2t(1−t)·θM + t²·θB (straight line: (1−t)·θ0 + t·θB)"],
            markers=[{"label": "θ0", "at": [0.0]}, {"label": Path(config.directions.to).stem, "at": [1.0]}],
            curves=CURVES,
        )

    def points(self, config):
        from ..core.grid import bezier_points

        return bezier_points(config.grid.x.coordinates)

    def auto_span(self, config, made, axis, evaluate) -> tuple[float, float]:
        return (0.0, 1.0)  # t from θ0 to B
