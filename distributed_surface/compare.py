"""``dsurf compare``: several surfaces drawn side by side on one scale, with their table.

The surfaces are read, checked to be comparable (:func:`differences`: the same grid, the same kind of
directions, and the same ``--norm``, ``--ignore`` and ``--dir-type``; ``allow_different`` lets them
differ), drawn by :func:`.plot.compare_pictures`, and tabulated (:func:`.table.table_rows`) into
``compare_table.md`` and ``compare_table.csv``. Every output follows the one rule for replacing a file
(:func:`~.storage.atomic.write_atomically`): what ``dsurf compare`` wrote it replaces, anything else only
with ``force``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .core.errors import UserError
from .storage import MARK, SurfaceData, carries_mark, is_spectrum, read_any_surface, write_atomically
from .table import check_rows, is_table_csv, table_rows, to_csv, to_markdown

# What the directions were made with, beyond the grid: these must agree for the pictures to compare.
DIRECTION_SETTINGS = ("kind", "norm", "ignore", "dir_type")
TABLE_STEM = "compare_table"


def default_out_dir(first: str) -> Path:
    surface = Path(first)
    return surface.with_name(surface.stem + "_compare")


def labels_for(paths: Sequence[str], labels: Sequence[str] | None) -> list[str]:
    """The surfaces' names in pictures and tables: ``labels`` as given (one per surface), else the
    files' stems (with their folder where two stems are the same)."""
    if labels:
        if len(labels) != len(paths):
            raise UserError(f"--label gives {len(labels)} name(s) for {len(paths)} surfaces: give one per surface, in order")
        return [str(label) for label in labels]
    stems = [Path(p).stem for p in paths]
    return [f"{Path(p).parent.name}/{stem}" if stems.count(stem) > 1 else stem for p, stem in zip(paths, stems)]


def read_surfaces(paths: Sequence[str], command: str = "dsurf compare") -> list[SurfaceData]:
    """The surfaces in ``paths``, each with at least one computed point (a spectrum file is refused)."""
    surfaces = []
    for path in paths:
        if Path(path).is_file() and is_spectrum(path):
            raise UserError(f"{path!r} is a Hessian spectrum file, not a surface: {command} takes surfaces")
        data = read_any_surface(path)
        if not np.any(data.done):
            raise UserError(f"{path!r}: no point is computed yet, nothing to compare")
        surfaces.append(data)
    return surfaces


def direction_setting(data: SurfaceData, name: str):
    """What the surface's directions were made with (``kind``, ``norm``, ...), as the kind recorded it
    (files from before: their config)."""
    value = data.frame.get(name, data.config.get(name))
    return None if value is None else str(value)


def _layout(data: SurfaceData) -> str:
    if data.points is not None:
        return "list of points"
    return "1D" if data.y is None else "2D"


def differences(first: SurfaceData, other: SurfaceData) -> list[str]:
    """How ``other`` differs from ``first`` in what must agree for a comparison, as short phrases
    (none: comparable)."""
    found = []
    if _layout(first) != _layout(other):
        return [f"a {_layout(other)} surface, not {_layout(first)}"]
    axes = [("x", first.x, other.x)] + ([("y", first.y, other.y)] if first.y is not None else [])
    for name, a, b in axes:
        if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=1e-12):
            found.append(f"its {name} axis is {_axis(b)}, not {_axis(a)}")
    if first.points is not None and (first.points.shape != other.points.shape or not np.allclose(first.points, other.points)):
        found.append("its points are other points")
    for name in DIRECTION_SETTINGS:
        a, b = direction_setting(first, name), direction_setting(other, name)
        if a != b:
            flag = "the direction kind" if name == "kind" else f"--{name.replace('_', '-')}"
            found.append(f"{flag} is {b}, not {a}")
    return found


def _axis(values: np.ndarray) -> str:
    return f"{values[0]:g}..{values[-1]:g} ({len(values)} points)" if len(values) else "empty"


def check_comparable(paths: Sequence[str], surfaces: Sequence[SurfaceData], allow_different: bool) -> None:
    """Refuse surfaces that differ from the first in their grid or directions, in one line (unless
    ``allow_different``); a 1D and a 2D surface never share a picture."""
    for path, data in zip(paths[1:], surfaces[1:]):
        found = differences(surfaces[0], data)
        if not found:
            continue
        if allow_different and _layout(data) == _layout(surfaces[0]):
            continue
        remedy = "" if _layout(data) != _layout(surfaces[0]) else "; pass --allow-different to compare them anyway"
        raise UserError(f"{path!r} cannot be compared with {paths[0]!r}: {'; '.join(found)}{remedy}")


def compare_surfaces(
    paths: Sequence[str],
    out_dir: str | None = None,
    *,
    labels: Sequence[str] | None = None,
    pictures: Iterable[str] | str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    levels: float | None = None,
    log: bool = False,
    fmt: str = "png",
    band: bool = False,
    allow_different: bool = False,
    force: bool = False,
) -> list[Path]:
    """Compare the surfaces in ``paths`` (two or more) into ``out_dir`` (default: ``<first>_compare``
    beside the first) and return the files written: the pictures, then the table as Markdown and CSV.
    The options are :func:`.plot.compare_pictures`'s."""
    paths = [str(p) for p in paths]
    if len(paths) < 2:
        raise UserError("dsurf compare needs two or more surface files (for one, dsurf plot draws it)")
    names = labels_for(paths, labels)
    if band and not labels:
        names = ["repeats"] * len(paths)  # without --label, --band takes every surface for a repeat of one model
    surfaces = read_surfaces(paths)
    if surfaces[0].points is not None and surfaces[0].curve is None:
        raise UserError(f"{paths[0]!r} is a list of points: dsurf compare draws grids and curves")
    check_comparable(paths, surfaces, allow_different)
    rows = []
    for path, name, data in zip(paths, _row_names(paths, names), surfaces):
        found = table_rows(path, label=name, data=data)
        check_rows(found, path)
        rows += found
    from .plot import check_comparison, compare_pictures  # matplotlib: only once the surfaces are known to compare

    options = dict(pictures=pictures, vmin=vmin, vmax=vmax, levels=levels, log=log, fmt=fmt, band=band)
    check_comparison(surfaces[0], **options)  # (before the directory is made)
    target = Path(out_dir) if out_dir else default_out_dir(paths[0])
    _make_directory(target)

    written = compare_pictures(list(zip(names, surfaces)), target, force=force, **options)
    written.append(write_table(rows, target, force=force))
    written.append(write_table(rows, target, force=force, csv=True))
    return written


def _row_names(paths: Sequence[str], names: Sequence[str]) -> list[str]:
    """The table's names of the surfaces: their labels, with the file's stem where a label is shared
    (the repeats of a band), so that every row says which file it is."""
    return [f"{name} ({Path(path).stem})" if list(names).count(name) > 1 else name for path, name in zip(paths, names)]


def _make_directory(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise UserError(f"--out-dir {str(target)!r} is not a directory")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out-dir {str(target)!r}: {exc.strerror or exc}") from None


def write_table(rows: Sequence[dict], target: Path, *, force: bool, csv: bool = False) -> Path:
    """The table in ``target``: ``compare_table.md`` (marked as ours in an HTML comment) or ``.csv``
    (known by its header)."""
    if csv:
        path, text, ours = target / f"{TABLE_STEM}.csv", to_csv(rows), is_table_csv
    else:
        path, text, ours = target / f"{TABLE_STEM}.md", f"<!-- {MARK} (dsurf compare) -->\n" + to_markdown(rows), carries_mark
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"), ours=ours, force=force,
                            who="dsurf compare", flag="--out-dir")  # fmt: skip
