"""Opening an existing surface file: checked to be one, whether a run may continue it, and its
directions."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..core.errors import UserError
from .layout import DIRECTION_AXES, FORMAT, FORMAT_VERSION


def open_checked(path: str, mode: str = "r", **kwargs) -> h5py.File:
    """Open an existing surface file, or raise :class:`UserError` if it is missing or not a surface."""
    if not Path(path).is_file():
        raise UserError(f"{path!r}: no such file")
    if mode == "r":
        # Readers (info, plot, a resume check) must not be locked out by a run that is writing.
        kwargs.setdefault("locking", False)
    try:
        f = h5py.File(path, mode, **kwargs)
    except OSError as exc:
        raise UserError(f"{path!r} is not a readable HDF5 file ({exc})") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise UserError(f"{path!r} is not a distributed_surface file")
    return f


def check_resumable(f: h5py.File, path: str) -> None:
    """Refuse to resume a file of another format version (its records are laid out otherwise)."""
    version = int(f.attrs.get("format_version", 0))
    if version != FORMAT_VERSION:
        raise UserError(
            f"--resume: {path!r} is in format version {version} (this is {FORMAT_VERSION}); it can be read, "
            "plotted and exported, but a run continues only files of this version: start anew with --overwrite"
        )


def read_directions(f: h5py.File) -> list[dict[str, np.ndarray]]:
    """The stored directions, in the file's parameter order."""
    result = []
    for axis in DIRECTION_AXES:
        if axis in f["directions"]:
            group = f["directions"][axis]
            result.append({name: np.asarray(group[name][()]) for name in group})  # (0-d ones too)
    return result
