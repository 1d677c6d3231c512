"""Exports of a surface file: VTK XML for ParaView (``.vtp`` PolyData, ``.vts`` StructuredGrid) and CSV.

The VTK files are written here as plain ASCII XML (no vtk dependency). Points are the grid's
``(x, y, z)`` with ``z`` the chosen measurement (the train loss by default, as the paper's ``h52vtp.py``);
every measurement of the file (one value per point) is a point-data array, with ``done`` beside them.

Points not computed yet: NaN in the value arrays, ``z = 0`` for their position, and hidden: the PolyData
has quads only between four computed points (1D: line segments between two), and the StructuredGrid marks
them as hidden points in VTK's ``vtkGhostType`` array (blanking), which ParaView honours.

The CSV has one row per grid point, ``x, y`` (1D: ``x``) then the values, x outer and y inner; a value not
computed is an empty field (read as NaN by numpy, pandas and spreadsheets).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core.measurements import SPLITS, is_measurement_name, measurement_name, ordered
from .core.errors import UserError
from .storage import (
    MARK,
    SurfaceData,
    carries_mark,
    check_replaceable,
    check_target,
    read_any_surface,
    write_atomically,
)

FORMATS = ("vtp", "vts", "csv")
HIDDEN_POINT = 2  # vtkDataSetAttributes::HIDDENPOINT


def default_out(path: str, fmt: str, metric: str) -> Path:
    surface = Path(path)
    name = f"{surface.stem}.csv" if fmt == "csv" else f"{surface.stem}_{metric}.{fmt}"
    return surface.with_name(name)


def export_surface(path: str, fmt: str, *, out: str | None = None, measure: str = "loss", force: bool = False) -> Path:
    """Write the surface in ``path`` as ``fmt`` (vtp, vts or csv) to ``out`` and return where.

    ``measure`` (``--kind``) picks the measurement used as height ``z`` in the VTK files: a measurement's name
    (``test_loss``), or a quantity (``loss``, ``acc``) of the first split. An existing ``out`` is
    replaced only where an export wrote it (or with ``force``); one that is not a regular file is refused.
    The file is written under a temporary name and renamed, so a failed export leaves nothing behind."""
    fmt = str(fmt).lower().lstrip(".")
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
    data = read_any_surface(path)
    if data.points is not None and fmt != "csv":
        raise UserError(f"{path!r} is a list of points, not a grid: export it with --format csv")
    measure = str(measure)
    metric = measure if is_measurement_name(measure) else measurement_name(SPLITS[0], measure)
    if metric not in _metrics(data):
        raise UserError(f"--kind {measure!r}: {path!r} has no {metric} to export (it holds {', '.join(_metrics(data))})")
    target = Path(out) if out else default_out(path, fmt, metric)
    check_target(target)
    if target.exists() and target.resolve() == Path(path).resolve():
        raise UserError(f"--out {str(target)!r} is the surface file itself")
    rule = {"ours": lambda p: _an_export(p, fmt), "force": force, "who": "an export"}
    check_replaceable(target, **rule)  # (before the text is made)
    if fmt == "csv":
        text = csv_text(data)
    elif fmt == "vtp":
        text = vtp_text(data, metric)
    else:
        text = vts_text(data, metric)
    return write_atomically(target, lambda temporary: temporary.write_text(text, encoding="ascii"), **rule)


# VTK files carry the mark in a comment; a CSV file is known by its header (x[, y], then measurement names).
POINT_COLUMNS = ("a", "b")  # a list of points' offsets along d1 and d2


def _an_export(path: Path, fmt: str) -> bool:
    """Whether ``path`` is a file an export wrote (so that exporting again may replace it)."""
    if fmt != "csv":
        return carries_mark(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(4096).decode("ascii", errors="replace")
    except OSError:
        return False
    columns = head.splitlines()[0].split(",") if head else []
    names = [c for c in (columns[2:] if columns[:2] == ["x", "y"] else columns[1:]) if c not in (*POINT_COLUMNS, "curve")]
    return columns[:1] == ["x"] and bool(names) and all(is_measurement_name(n) for n in names)


def _metrics(data: SurfaceData) -> list[str]:
    """The measurements with one value per point, in display order (arrays per point do not fit a
    point-data column)."""
    return ordered(name for name, values in data.metrics.items() if np.shape(values) == data.done.shape)


def _values(data: SurfaceData, metric: str) -> np.ndarray:
    """The metric with NaN wherever the point is not done."""
    values = np.asarray(data.metrics[metric], dtype=np.float64)
    return np.where(data.done.astype(bool), values, np.nan)


# ---------------------------------------------------------------- CSV


def csv_text(data: SurfaceData) -> str:
    metrics = _metrics(data)
    if data.points is not None:  # a list of points: its parameter, each point's offsets, its curve
        columns = [data.x, *data.points.T]
        header = ["x", *POINT_COLUMNS[: data.points.shape[1]]]
        if data.curve is not None:
            columns.append(data.curve)
            header.append("curve")
    elif data.y is None:
        columns = [data.x]
        header = ["x"]
    else:
        xg, yg = np.meshgrid(data.x, data.y, indexing="ij")
        columns = [xg.ravel(), yg.ravel()]
        header = ["x", "y"]
    columns += [_values(data, m).ravel() for m in metrics]
    lines = [",".join(header + metrics)]
    for row in zip(*columns):
        lines.append(",".join(_number(v) for v in row))
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    """Shortest text that reads back as the same float64; empty for NaN."""
    return "" if not np.isfinite(value) else repr(float(value))


# ---------------------------------------------------------------- VTK XML


def _geometry(data: SurfaceData, metric: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Points (n, 3) in VTK's order (x fastest), the done mask in that order, and the dimensions."""
    done = data.done.astype(bool)
    height = np.where(done, _values(data, metric), 0.0)
    if data.y is None:
        points = np.stack([data.x, np.zeros_like(data.x), height], axis=1)
        return points, done, (len(data.x), 1)
    # our arrays are [i, j] = (x_i, y_j); VTK's structured order has i (x) fastest: transpose, then ravel
    xg, yg = np.meshgrid(data.x, data.y)  # (ny, nx): row j, column i
    points = np.stack([xg.ravel(), yg.ravel(), height.T.ravel()], axis=1)
    return points, done.T.ravel(), (len(data.x), len(data.y))


def _point_arrays(data: SurfaceData) -> list[tuple[str, str, np.ndarray]]:
    arrays = []
    for name in _metrics(data):
        values = _values(data, name)
        arrays.append((name, "Float64", values.T.ravel() if data.y is not None else values))
    done = data.done if data.y is None else data.done.T
    arrays.append(("done", "UInt8", np.asarray(done, dtype=np.uint8).ravel()))
    return arrays


def _data_array(name: str | None, vtk_type: str, values: np.ndarray, components: int = 1, indent: str = "        ") -> str:
    flat = np.asarray(values).ravel()
    if vtk_type.startswith("Float"):
        words = ["nan" if not np.isfinite(v) else repr(float(v)) for v in flat]
        finite = flat[np.isfinite(flat)]
    else:
        words = [str(int(v)) for v in flat]
        finite = flat
    name_attr = f' Name="{name}"' if name else ""
    extra = ""
    if finite.size and components == 1:
        extra = f' RangeMin="{_plain(finite.min())}" RangeMax="{_plain(finite.max())}"'
    per_line = 3 * components if components > 1 else 6
    rows = [" ".join(words[k : k + per_line]) for k in range(0, len(words), per_line)]
    body = "".join(f"{indent}  {row}\n" for row in rows)
    return (
        f'{indent}<DataArray type="{vtk_type}"{name_attr} NumberOfComponents="{components}" format="ascii"{extra}>\n'
        f"{body}{indent}</DataArray>\n"
    )


def _plain(value) -> str:
    value = value.item() if hasattr(value, "item") else value
    return repr(float(value)) if isinstance(value, float) else str(value)


def _header(vtk_type: str) -> str:
    return (
        '<?xml version="1.0"?>\n'
        f"<!-- {MARK} -->\n"
        f'<VTKFile type="{vtk_type}" version="1.0" byte_order="LittleEndian" header_type="UInt64">\n'
    )


def _point_data(data: SurfaceData, metric: str, extra: list[tuple[str, str, np.ndarray]] = ()) -> str:
    text = f'      <PointData Scalars="{metric}">\n'
    for name, vtk_type, values in _point_arrays(data) + list(extra):
        text += _data_array(name, vtk_type, values)
    return text + "      </PointData>\n"


def _points(points: np.ndarray) -> str:
    return "      <Points>\n" + _data_array("Points", "Float64", points, components=3) + "      </Points>\n"


def vtp_text(data: SurfaceData, metric: str) -> str:
    """VTK XML PolyData: the grid's points, quads (2D) or line segments (1D) between computed points."""
    points, done, (nx, ny) = _geometry(data, metric)
    index = np.arange(nx * ny).reshape(ny, nx)  # VTK order: point (i, j) is j * nx + i
    if data.y is None:
        cells = np.stack([index[0, :-1], index[0, 1:]], axis=1)
    else:
        cells = np.stack(
            [index[:-1, :-1].ravel(), index[:-1, 1:].ravel(), index[1:, 1:].ravel(), index[1:, :-1].ravel()], axis=1
        )
    cells = cells[done[cells].all(axis=1)] if len(cells) else cells.reshape(0, 2 if data.y is None else 4)
    width = cells.shape[1]
    connectivity = _data_array("connectivity", "Int64", cells)
    offsets = _data_array("offsets", "Int64", width * np.arange(1, len(cells) + 1))
    block = "Lines" if data.y is None else "Polys"
    lines, polys = (len(cells), 0) if data.y is None else (0, len(cells))
    return (
        _header("PolyData")
        + "  <PolyData>\n"
        + f'    <Piece NumberOfPoints="{len(points)}" NumberOfVerts="0" NumberOfLines="{lines}" '
        f'NumberOfStrips="0" NumberOfPolys="{polys}">\n'
        + _point_data(data, metric)
        + _points(points)
        + f"      <{block}>\n{connectivity}{offsets}      </{block}>\n"
        + "    </Piece>\n  </PolyData>\n</VTKFile>\n"
    )


def vts_text(data: SurfaceData, metric: str) -> str:
    """VTK XML StructuredGrid of nx × ny × 1 points; points not computed are blanked (hidden)."""
    points, done, (nx, ny) = _geometry(data, metric)
    extent = f"0 {nx - 1} 0 {ny - 1} 0 0"
    ghost = [("vtkGhostType", "UInt8", np.where(done, 0, HIDDEN_POINT).astype(np.uint8))]
    return (
        _header("StructuredGrid")
        + f'  <StructuredGrid WholeExtent="{extent}">\n'
        + f'    <Piece Extent="{extent}">\n'
        + _point_data(data, metric, ghost)
        + _points(points)
        + "    </Piece>\n  </StructuredGrid>\n</VTKFile>\n"
    )


__all__ = ["export_surface", "csv_text", "vtp_text", "vts_text", "FORMATS", "default_out"]
