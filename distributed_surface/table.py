"""The table of surfaces that ``dsurf compare`` and ``dsurf report`` show: one row per surface and loss
measurement, as Markdown or CSV.

:func:`table_rows` is the one place that decides what a row holds. Today it holds the values read
straight off the grid — the loss at θ0 where the grid has the origin, the grid's smallest loss and where
it is, the largest — named as such ("grid minimum", not "the minimum"). The landscape metrics of a
surface (sharpness, basin, convexity, topology) plug in here, in one function, once they are computed
from the file; every caller then shows them without a change of its own.

Reads the file only (storage and the core); no picture library.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .core.errors import UserError
from .core.measurements import quantity_of
from .storage import SurfaceData, read_any_surface

# The columns every row has, in order (a metrics hook may add more after them).
COLUMNS = ("surface", "measurement", "points done", "loss at θ0", "grid minimum", "grid minimum at", "grid maximum")


def table_rows(path: str, *, label: str | None = None, data: SurfaceData | None = None) -> list[dict]:
    """One row per loss measurement of the surface in ``path`` (train, test): the values of
    :data:`COLUMNS`, with ``label`` (default: the file's stem) as its surface. ``data``: the file,
    already read. A value the grid cannot give (no point at θ0, nothing finite) is None."""
    data = data if data is not None else read_any_surface(path)
    name = label if label is not None else Path(path).stem
    done, total = data.progress
    rows = []
    for metric in loss_measurements(data):
        values = computed_values(data, metric)
        row = dict.fromkeys(COLUMNS)
        row.update({"surface": name, "measurement": metric, "points done": f"{done}/{total}"})
        origin = origin_index(data)
        if origin is not None and np.isfinite(values[origin]):
            row["loss at θ0"] = float(values[origin])
        if np.isfinite(values).any():
            flat = np.nanargmin(np.where(np.isfinite(values), values, np.nan))
            where = np.unravel_index(flat, values.shape)
            row["grid minimum"] = float(values[where])
            row["grid minimum at"] = _coordinates(data, where)
            row["grid maximum"] = float(np.nanmax(np.where(np.isfinite(values), values, np.nan)))
        rows.append(row)
    return rows


def loss_measurements(data: SurfaceData) -> list[str]:
    """The file's loss measurements with one value per point (``train_loss``, ``test_loss``)."""
    return [
        name for name, values in data.metrics.items()
        if quantity_of(name) == "loss" and np.shape(values) == data.done.shape
    ]  # fmt: skip


def computed_values(data: SurfaceData, metric: str) -> np.ndarray:
    """The measurement's values as float64, NaN where the point is not computed."""
    values = np.asarray(data.metrics[metric], dtype=np.float64)
    return np.where(data.done != 0, values, np.nan)


def origin_index(data: SurfaceData) -> tuple[int, ...] | None:
    """The index of the grid's point at θ0 (every offset zero), or None where the grid has none."""
    if data.points is not None:
        at = np.flatnonzero(np.all(np.asarray(data.points) == 0, axis=1))
        return (int(at[0]),) if at.size else None
    axes = [data.x] if data.y is None else [data.x, data.y]
    index = []
    for axis in axes:
        zero = np.flatnonzero(np.asarray(axis) == 0)
        if not zero.size:
            return None
        index.append(int(zero[0]))
    return tuple(index)


def _coordinates(data: SurfaceData, index: tuple[int, ...]) -> str:
    if data.points is not None:
        return "(" + ", ".join(f"{v:.4g}" for v in np.asarray(data.points)[index[0]]) + ")"
    if data.y is None:
        return f"x={data.x[index[0]]:.4g}"
    return f"(x={data.x[index[0]]:.4g}, y={data.y[index[1]]:.4g})"


def check_rows(rows: Sequence[dict], path: str) -> None:
    """Refuse a surface whose table would be empty: it has no loss measurement."""
    if not rows:
        raise UserError(f"{path!r} holds no loss values to tabulate")


# ---------------------------------------------------------------- text


def columns_of(rows: Sequence[dict]) -> list[str]:
    """Every column of ``rows``, in the order they first appear."""
    return list(dict.fromkeys(key for row in rows for key in row))


def cell(value) -> str:
    """A value as the table shows it: numbers to 6 significant digits, nothing as "-"."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def to_markdown(rows: Sequence[dict]) -> str:
    """A Markdown table (pipes in values escaped)."""
    columns = columns_of(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict]) -> str:
    """CSV with a header row; numbers in full precision (repr), nothing as an empty field."""
    columns = columns_of(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else repr(row[c]) if isinstance(row[c], float) else row[c] for c in columns])
    return out.getvalue()


def is_table_csv(path: Path) -> bool:
    """Whether ``path`` is a table CSV that this module wrote (known by its header, as a CSV carries no
    mark), so that writing the table again may replace it."""
    try:
        with Path(path).open("rb") as handle:
            head = handle.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    return head.splitlines()[0].split(",")[:2] == list(COLUMNS[:2]) if head else False
