"""Random directions (the default, where no other kind is selected): drawn from N(0, 1) with
``--seed`` and normalised (``--norm``, ``--ignore``), as many as the grid's axes (or ``--points``'
columns)."""

from __future__ import annotations

from .base import DirectionKind, Made


class RandomNormal(DirectionKind):
    name = "random_normal"

    @property
    def flag(self) -> str:
        return "random"

    def make(self, config, problem, base, ndim, device) -> Made:
        from ..core.directions import make_directions

        return Made(
            directions=make_directions(base, ndim, config.directions.norm, config.directions.ignore, config.evaluation.seed),
            description=f"{config.directions.norm}-normalised random directions, ignore {config.directions.ignore}, seed {config.evaluation.seed}",
            record={"norm": config.directions.norm, "ignore": config.directions.ignore, "seed": config.evaluation.seed},
        )
