"""The options that apply to every kind of directions, in one place: ``--points FILE.csv`` (offsets
evaluated instead of a grid) and ``--params REGEX`` (only the matching tensors move; their values are
checked by their declarations in sections.py), and the checks of the points' dimensions against the
kind's."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from ..core.grid import PointList
from ..core.errors import UserError
from .base import DirectionKind


def check_dimensions(config, kind: DirectionKind) -> None:
    """The points asked for fit the kind: ``--points`` without ``--y`` and not with a kind that makes its
    own points; ``--y`` for a kind that spans a plane, none for one that draws a curve."""
    if config.directions.points is not None:
        if config.directions.y is not None:
            raise UserError("--points gives the points: leave out --y")
        if kind.own_points:
            raise UserError(f"{kind.flag} makes its own points: leave out --points")
    elif kind.ndim == 2 and config.directions.y is None:
        raise UserError(f"{kind.flag} spans a plane: give --y as well as --x")
    elif kind.ndim == 1 and config.directions.y is not None:
        raise UserError(f"{kind.flag} draws a curve: leave out --y{kind.curve_hint}")


def read_points(path: str) -> PointList:
    """The offsets of a CSV file: one or two numbers a row (a header row of names is allowed)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--points {path!r}: no such file")
    rows = []
    try:
        with file.open(newline="") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                cells = [c.strip() for c in row if c.strip()]
                if not cells or cells[0].startswith("#"):
                    continue
                try:
                    rows.append([float(c) for c in cells])
                except ValueError:
                    if number == 1 and not rows:
                        continue  # a header
                    bad = next(c for c in cells if not _is_number(c))
                    raise UserError(f"--points {path!r}: row {number} holds {bad!r}, not a number") from None
    except UnicodeDecodeError:
        raise UserError(f"--points {path!r} is not a text (CSV) file") from None
    widths = {len(r) for r in rows}
    if not rows:
        raise UserError(f"--points {path!r} holds no points")
    if len(widths) > 1 or widths.pop() not in (1, 2):
        raise UserError(f"--points {path!r}: every row must hold one offset (a) or two (a, b)")
    coordinates = np.array(rows, dtype=np.float64)
    if not np.all(np.isfinite(coordinates)):
        raise UserError(f"--points {path!r} holds a number that is not finite")
    return PointList(coordinates, coordinates[:, 0] if coordinates.shape[1] == 1 else None)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def restrict_to(directions: list, base: dict, pattern: str) -> list:
    """Only tensors whose names match ``pattern`` move; refused where none of the moving ones match."""
    from ..core.directions import restrict

    regex = re.compile(pattern)
    moving = [name for name in base if any(bool(d[name].count_nonzero()) for d in directions)]
    kept = [name for name in moving if regex.search(name)]
    if not kept:
        shown = ", ".join(repr(n) for n in moving[:4]) + (" ..." if len(moving) > 4 else "")
        raise UserError(f"--params {pattern!r} matches no parameter that moves ({shown})")
    return [restrict(d, lambda name: bool(regex.search(name))) for d in directions]
