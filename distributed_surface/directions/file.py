"""``--directions FILE``: the directions of a surface file (HDF5), or of a torch file holding one or two
``{parameter name: tensor}`` dicts, checked against the model's names and shapes. They are used as they
are (``--norm``, ``--seed`` and ``--ignore`` are refused)."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import UserError, first_line
from .base import DirectionKind, Made
from .checkpoints import UNNORMALISED, check_path

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class DirectionFile(DirectionKind):
    name = "file"
    settings = ("directions",)  # (a name of a kind given to --directions selects that kind instead)
    ignored_settings = UNNORMALISED

    def check(self, config) -> None:
        check_path("--directions", config.directions.directions)

    def sources(self, config) -> list[tuple[str, str]]:
        return [("directions", config.directions.directions)]

    def make(self, config, problem, base, ndim, device) -> Made:
        return Made(directions=read_direction_file(config.directions.directions, base), description="directions from a file")


def read_direction_file(path: str, base: dict) -> list[dict]:
    """One or two directions from a surface file (HDF5) or a torch file of ``{name: tensor}`` dicts,
    checked against ``base``'s names and shapes."""
    import torch

    file = Path(path)
    if not file.is_file():
        raise UserError(f"--directions {path!r}: no such file")
    with file.open("rb") as handle:
        hdf5 = handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
    if hdf5:
        from ..storage import open_checked, read_directions

        with open_checked(path, "r") as f:
            directions = [{k: torch.from_numpy(v) for k, v in d.items()} for d in read_directions(f)]
    else:
        try:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a damaged or foreign file
            raise UserError(f"--directions {path!r} is neither a surface file nor a readable torch file: {first_line(exc)}") from None
        directions = [loaded] if isinstance(loaded, dict) else list(loaded) if isinstance(loaded, (list, tuple)) else []
        if not 1 <= len(directions) <= 2 or not all(
            isinstance(d, dict) and all(isinstance(t, torch.Tensor) for t in d.values()) for d in directions
        ):
            raise UserError(f"--directions {path!r} must hold one or two {{parameter name: tensor}} dicts")
    for k, direction in enumerate(directions):
        missing = [name for name in base if name not in direction]
        unexpected = [name for name in direction if name not in base]
        if missing or unexpected:
            what = f"no tensor for {missing[0]!r}" if missing else f"a tensor {unexpected[0]!r} the model does not have"
            raise UserError(f"--directions {path!r} is of another model: direction {k + 1} has {what}")
        for name, tensor in base.items():
            if tuple(direction[name].shape) != tuple(tensor.shape):
                raise UserError(
                    f"--directions {path!r} is of another model: {name!r} has shape {tuple(direction[name].shape)}, "
                    f"the model's is {tuple(tensor.shape)}"
                )
        directions[k] = {name: direction[name].to(base[name].dtype) for name in base}
    return directions
