"""``--trajectory GLOB``: the first two principal components of a training run's checkpoints' offsets
θ_i − θ0 (:mod:`..core.pca`), with each checkpoint's projection drawn on the pictures. The directions
are not drawn or normalised (``--norm`` and ``--seed`` are refused); under ``--ignore biasbn`` the 1-D
offsets are zero, as in the paper's ``setup_PCA_directions``."""

from __future__ import annotations

import glob
import re
from pathlib import Path

from ..core.errors import UserError
from .base import DirectionKind, Made
from .checkpoints import check_path


def trajectory_files(pattern: str) -> list[str]:
    """The checkpoints a glob matches (files, or model folders), in natural order (epoch_2 before epoch_10)."""
    files = sorted(glob.glob(pattern), key=_natural)
    files = [f for f in files if Path(f).is_file() or Path(f).is_dir()]
    if len(files) < 2:
        raise UserError(f"--trajectory {pattern!r} matches {len(files)} checkpoint(s): a trajectory needs at least 2")
    return files


def _natural(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


class TrajectoryPCA(DirectionKind):
    name = "pca"
    settings = ("trajectory",)
    ndim = 2
    ignored_settings = ("norm", "seed")

    def check(self, config) -> None:
        check_path("--trajectory", config.directions.trajectory)

    def sources(self, config) -> list[tuple[str, str]]:
        return [(f"checkpoint {k}", path) for k, path in enumerate(trajectory_files(config.directions.trajectory))]

    def make(self, config, problem, base, ndim, device) -> Made:
        from ..core.directions import is_movable
        from ..core.pca import trajectory_pca
        from ..problem import read_state

        files = trajectory_files(config.directions.trajectory)
        states = [read_state(path, problem.model, "--trajectory", mmap=True) for path in files]
        ignore_biasbn = config.directions.ignore == "biasbn"

        def moving(name, tensor):
            return is_movable(tensor) and (tensor.dim() > 1 or not ignore_biasbn)

        try:
            found = trajectory_pca(base, states, moving)
        except ValueError as exc:
            raise UserError(f"--trajectory {config.directions.trajectory!r}: {exc}") from None
        ratios = found.explained_variance_ratio
        return Made(
            directions=found.directions,
            description=f"principal directions of {len(files)} checkpoints",
            axis_labels=[f"PC{k + 1}: {100 * ratio:.1f}%" for k, ratio in enumerate(ratios[:2])],
            markers=[{"label": "θ0", "at": [0.0, 0.0]}],
            trajectory={"x": found.projections[:, 0], "y": found.projections[:, 1], "names": [Path(f).name for f in files],
                        "explained_variance_ratio": ratios},  # fmt: skip
            record={"ignore": config.directions.ignore, "explained_variance_ratio": ratios},
        )

    def auto_span(self, config, made, axis, evaluate) -> tuple[float, float]:
        from ..span import model_span

        return model_span(made.trajectory["xy"[axis]])  # the checkpoints' path, with a margin
