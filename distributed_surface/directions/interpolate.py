"""``--to B``: the line from θ0 to checkpoint B, d1 = θB − θ0, so that θ0 is at 0 and B at 1 (the
paper's ``model_file2``)."""

from __future__ import annotations

from pathlib import Path

from .base import DirectionKind, Made
from .checkpoints import STATES, UNNORMALISED, check_path, model_markers, offsets, unit_span


class Interpolate(DirectionKind):
    name = "interpolate"
    settings = ("to",)
    ndim = 1
    default_x = "-0.5:1.5:41"  # past both ends of the line
    dir_type = STATES
    ignored_settings = UNNORMALISED
    curve_hint = " (--plane B.pt C.pt spans a plane)"

    def selects(self, config) -> bool:
        return config.directions.to is not None and config.directions.bend is None  # (with --bend, B is a curve's end)

    def check(self, config) -> None:
        check_path("--to", config.directions.to)

    def sources(self, config) -> list[tuple[str, str]]:
        return [("to", config.directions.to)]

    def make(self, config, problem, base, ndim, device) -> Made:
        return Made(
            directions=offsets(problem.model, base, [("--to", config.directions.to)]),
            description=f"line to {Path(config.directions.to).stem}",
            axis_labels=["t: θ0 + t·(θB − θ0)"],
            markers=model_markers([config.directions.to]),
        )

    def auto_span(self, config, made, axis, evaluate) -> tuple[float, float]:
        return unit_span()
