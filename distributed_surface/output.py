"""Checks of a run's output and grid, before anything is loaded: torch-free, so that a run refuses
a bad ``--out`` at once (``dsurf run`` calls them before torch is imported; a run calls them again
once it holds the file's lock)."""

from __future__ import annotations

from pathlib import Path

from .config import HessianConfig, RunConfig
from .core.host import host_memory_available
from .core.measurements import Measurement
from .core.errors import UserError
from .storage import check_resumable, check_space, check_writable, open_checked, surface_bytes

# Memory a run's scheduling takes per grid point: the done mask, a point index in a chunk (int64), and
# the offsets of a chunk's points (two float64), with room for copies.
GRID_BYTES_PER_POINT = 64


def preflight(config: RunConfig, *, resume: bool, overwrite: bool) -> None:
    """Every check of the output that needs nothing loaded. Changes no file."""
    check_output(config, resume=resume, overwrite=overwrite)
    check_grid_fits(config)


def check_output(config: RunConfig, *, resume: bool, overwrite: bool) -> bool:
    """Check that the output may be written; return True where an existing file is to be resumed.
    Never changes a file."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: choose one")
    path = Path(config.output.out)
    check_writable(config.output.out)
    if not path.exists():
        return False
    if not resume and not overwrite:
        raise UserError(f"{config.output.out!r} exists: pass --resume to continue it or --overwrite to replace it")
    if overwrite:
        try:
            open_checked(config.output.out, "r").close()
        except UserError as exc:
            raise UserError(f"--overwrite refuses to replace a file that is not a surface: {exc}") from None
        return False
    with open_checked(config.output.out, "r") as f:
        check_resumable(f, config.output.out)
        stored = RunConfig.from_json(f.attrs["config"])
    differences = config.surface_differences(stored)
    if differences:
        name = differences[0]
        raise UserError(
            f"--resume: {config.output.out!r} was made with {name.replace('_', '-')}={stored.value(name)!r}, "
            f"this run has {config.value(name)!r}"
        )
    return True


def check_grid_fits(config: RunConfig) -> None:
    """Refuse a grid whose bookkeeping (done mask, chunks of point indices) does not fit in memory, or
    whose file (with one value a point, the least it can hold) does not fit on the disk, before anything
    is loaded. (The file's real size is checked again when it is created.)"""
    points = config.grid.size
    needed = points * GRID_BYTES_PER_POINT
    available = host_memory_available()
    if needed > available // 2:
        raise UserError(
            f"the grid's {points:,} points need about {needed / 2**30:.3g} GiB of memory to schedule, more than half "
            f"of the {available / 2**30:.3g} GiB available: use a coarser grid, or several runs over parts of it"
        )
    try:
        check_space(config.output.out, surface_bytes(points, [Measurement("loss")]), replacing=Path(config.output.out).exists())
    except UserError as exc:
        raise UserError(f"the grid's {points:,} points: {exc}") from None


def check_spectrum_output(config: HessianConfig, *, overwrite: bool) -> None:
    """``dsurf hessian``'s output may be written: an existing file only with ``--overwrite``, and only
    where it is a spectrum file."""
    check_writable(config.output.out)
    if not Path(config.output.out).exists():
        return
    if not overwrite:
        raise UserError(f"{config.output.out!r} exists: pass --overwrite to replace it")
    from .storage import is_spectrum

    if not is_spectrum(config.output.out):
        raise UserError(f"--overwrite refuses to replace {config.output.out!r}: it is not a Hessian spectrum file")
