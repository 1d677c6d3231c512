"""``dsurf report``: one self-contained HTML file to explore surfaces in a browser, offline.

For each surface file: its 3D surface (turn and zoom it; the value under the pointer is shown), its
contour map with θ0, the checkpoints (each named at its point) and a trajectory's path marked, the 1D
curves of a 1D surface, the Hessian's λ maps where the surface measured them (``--measure hessian``),
the table (:func:`.table.table_rows`), and its provenance: what ``dsurf info`` shows. A Hessian spectrum
file (``dsurf hessian``) given among them adds its spectrum. plotly.js is embedded in the page, once, and
nothing is fetched from a network.

Every plot is a ``<div>`` with a stable id, so that a script (or the browser test) finds its data:
``surface-K-3d-MEASUREMENT``, ``surface-K-contour-MEASUREMENT``, ``surface-K-curve``,
``surface-K-hessian``, ``spectrum-K`` (K: the file's place among the arguments, from 0).

This is the one module that imports plotly. It reads files only (storage, the core, the table and
``dsurf info``'s text); the report is written under the one rule for replacing a file
(:func:`~.storage.atomic.write_atomically`).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .core.errors import UserError
from .core.measurements import SPLITS, TRAIN, measurement_name, ordered, quantity_of
from .info import describe_spectrum, describe_surface
from .storage import MARK, SurfaceData, carries_mark, check_replaceable, check_target, is_spectrum, read_any_surface
from .storage import write_atomically
from .table import cell, columns_of, computed_values, table_rows

WHO = "dsurf report"
_QUANTITY_WORDS = {"loss": "loss", "acc": "accuracy (%)", "err": "error (%)"}
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def default_out(first: str) -> Path:
    surface = Path(first)
    return surface.with_name(surface.stem + "_report.html")


def write_report(paths: Sequence[str], out: str | None = None, *, force: bool = False) -> Path:
    """Write the report of ``paths`` (surface files, and any Hessian spectrum files) to ``out``
    (default: ``<first>_report.html`` beside the first) and return its path. An ``out`` that cannot be
    written, or that exists and is not a report (without ``force``), is refused before anything is read."""
    paths = [str(p) for p in paths]
    if not paths:
        raise UserError("dsurf report needs a surface file")
    _check_plotly()
    target = Path(out) if out else default_out(paths[0])
    check_target(target, flag="--out")
    check_replaceable(target, ours=carries_mark, force=force, who=WHO, flag="--out")
    for path in paths:
        if target.exists() and Path(path).exists() and target.resolve() == Path(path).resolve():
            raise UserError(f"--out {str(target)!r} is one of the surface files")
    parts = []
    for k, path in enumerate(paths):
        if Path(path).is_file() and is_spectrum(path):
            parts.append(_spectrum_section(k, path))
            continue
        data = read_any_surface(path)
        if not np.any(data.done):
            raise UserError(f"{path!r}: no point is computed yet, nothing to report")
        parts.append(_surface_section(k, path, data))
    page = _page(paths, parts)
    return write_atomically(target, lambda temporary: temporary.write_text(page, encoding="utf-8"), ours=carries_mark,
                            force=force, who=WHO, flag="--out")  # fmt: skip


def fragment(path: str, key: str) -> str:
    """The report of one surface file as an HTML fragment that carries plotly.js: a notebook's output
    (:mod:`.notebook`). ``key`` makes its plots' ids unique on a page that shows several."""
    _check_plotly()
    from plotly.offline import get_plotlyjs

    data = read_any_surface(path)
    if not np.any(data.done):
        raise UserError(f"{path!r}: no point is computed yet, nothing to report")
    return f'<script type="text/javascript">{get_plotlyjs()}</script>{_surface_section(key, path, data)}'


def _check_plotly() -> None:
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise UserError("dsurf report needs plotly: pip install plotly (launch/setup.sh installs it)") from None


# ---------------------------------------------------------------- the page


def _page(paths: Sequence[str], parts: Sequence[str]) -> str:
    from plotly.offline import get_plotlyjs

    title = "dsurf report: " + ", ".join(Path(p).name for p in paths)
    contents = "".join(f'<li><a href="#file-{k}">{html.escape(Path(p).name)}</a></li>' for k, p in enumerate(paths))
    return (
        "<!DOCTYPE html>\n"
        f"<!-- {MARK} ({WHO}, distributed_surface {__version__}) -->\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<style>{_STYLE}</style>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
        "</head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f"<nav><ul>{contents}</ul></nav>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;max-width:1400px}"
    "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #bbb;padding:0.2em 0.6em;text-align:right}"
    "th{background:#eee}pre{background:#f6f6f6;padding:0.8em;overflow-x:auto;font-size:0.85em}"
    ".plot{max-width:1000px;margin:1em 0}"
    "section{border-top:2px solid #888;margin-top:2em}"
)


def _figure_html(figure, div_id: str) -> str:
    import plotly.io as pio

    return pio.to_html(figure, full_html=False, include_plotlyjs=False, div_id=div_id, config=_PLOT_CONFIG)


def _table_html(rows: Sequence[dict]) -> str:
    columns = columns_of(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _provenance(text: str) -> str:
    return f"<details open><summary>provenance (dsurf info)</summary><pre>{html.escape(text)}</pre></details>"


# ---------------------------------------------------------------- a surface


def _surface_section(k: int | str, path: str, data: SurfaceData) -> str:
    done, total = data.progress
    heading = f"<h2>{html.escape(Path(path).name)}</h2>"
    if done < total:
        heading += f"<p>partial: {done}/{total} points computed ({html.escape(data.status)}); the rest are left blank.</p>"
    plots = []
    if data.points is not None and data.curve is None:
        plots += [_figure_html(_points(data, metric), f"surface-{k}-points-{metric}") for metric in _shown(data)]
    elif data.y is None:
        plots.append(_figure_html(_curves(data), f"surface-{k}-curve"))
    else:
        for metric in _shown(data):
            plots.append(_figure_html(_surface3d(data, metric), f"surface-{k}-3d-{metric}"))
            plots.append(_figure_html(_contour(data, metric), f"surface-{k}-contour-{metric}"))
        if all(measurement_name(TRAIN, q) in data.metrics for q in ("hess_max", "hess_min")):
            plots.append(_figure_html(_hessian_maps(data), f"surface-{k}-hessian"))
    rows = table_rows(path, data=data)
    body = "".join(f'<div class="plot">{p}</div>' for p in plots)
    table = f"<h3>table</h3>{_table_html(rows)}" if rows else ""
    return f'<section id="file-{k}">{heading}{body}{table}{_provenance(describe_surface(path))}</section>'


def _per_point(data: SurfaceData) -> list[str]:
    """The floating measurements with one value per point, in display order."""
    return ordered(
        name for name, values in data.metrics.items()
        if np.shape(values) == data.done.shape and np.asarray(values).dtype.kind == "f"
    )  # fmt: skip


def _shown(data: SurfaceData) -> list[str]:
    """The measurements drawn as surfaces and contours: losses and accuracies (the Hessian's λ have
    their own maps)."""
    return [m for m in _per_point(data) if quantity_of(m) in _QUANTITY_WORDS]


def _words(metric: str) -> str:
    split, _, quantity = metric.partition("_")
    return f"{split} {_QUANTITY_WORDS.get(quantity, quantity)}"


def _axis_titles(data: SurfaceData) -> tuple[str, str]:
    labels = data.frame.get("axis_short_labels") or data.frame.get("axis_labels")
    found = [str(v) for v in json.loads(labels)] if isinstance(labels, str) else []
    return (found[0] if found else "x (along d1)", found[1] if len(found) > 1 else "y (along d2)")


def _grid_values(data: SurfaceData, metric: str) -> np.ndarray:
    """The values as plotly's grids take them: rows are y (the file's are x), NaN (a gap) where not
    computed or not finite."""
    values = computed_values(data, metric)
    return np.where(np.isfinite(values), values, np.nan).T


def _surface3d(data: SurfaceData, metric: str):
    import plotly.graph_objects as go

    ax, ay = _axis_titles(data)
    z = _grid_values(data, metric)
    figure = go.Figure(go.Surface(
        x=data.x, y=data.y, z=z, colorscale="Viridis_r" if quantity_of(metric) == "acc" else "Viridis",
        colorbar=dict(title=dict(text=_words(metric))),
        hovertemplate=f"x %{{x:.4g}}<br>y %{{y:.4g}}<br>{_words(metric)} %{{z:.6g}}<extra></extra>",
    ))  # fmt: skip
    figure.update_layout(
        title=f"{_words(metric)}: 3D surface (drag to turn, scroll to zoom)", height=560,
        scene=dict(xaxis_title=ax, yaxis_title=ay, zaxis_title=_words(metric)), margin=dict(l=0, r=0, t=50, b=0),
    )  # fmt: skip
    return figure


def _contour(data: SurfaceData, metric: str):
    import plotly.graph_objects as go

    ax, ay = _axis_titles(data)
    z = _grid_values(data, metric)
    figure = go.Figure(go.Contour(
        x=data.x, y=data.y, z=z, colorscale="Viridis_r" if quantity_of(metric) == "acc" else "Viridis",
        contours=_levels(metric, z), colorbar=dict(title=dict(text=_words(metric))), connectgaps=False,
        hovertemplate=f"x %{{x:.4g}}<br>y %{{y:.4g}}<br>{_words(metric)} %{{z:.6g}}<extra></extra>", name=_words(metric),
    ))  # fmt: skip
    for trace in _marks(data):
        figure.add_trace(trace)
    figure.update_layout(
        title=f"{_words(metric)}: contour map", height=560, xaxis=dict(title=ax, constrain="domain"), yaxis_title=ay,
        yaxis=dict(scaleanchor="x", scaleratio=1), legend=dict(orientation="h", y=-0.15),
    )  # fmt: skip
    return figure


# As in the pictures: about 20 contour levels, the loss's capped at the paper's 10 (beyond it the model
# has blown up, and levels there hide the basin). The values themselves stay the file's.
LOSS_CAP = 10.0
LEVELS = 20


def _levels(metric: str, z: np.ndarray) -> dict:
    """Plotly's contours: labelled lines from the smallest value to the largest (a loss: to at most
    :data:`LOSS_CAP`), about :data:`LEVELS` of them."""
    finite = z[np.isfinite(z)]
    if not finite.size:
        return dict(showlabels=True)
    low, high = float(finite.min()), float(finite.max())
    if quantity_of(metric) == "loss" and low < LOSS_CAP < high:
        high = LOSS_CAP
    if not high > low:
        return dict(showlabels=True)
    return dict(showlabels=True, start=low, end=high, size=(high - low) / LEVELS, coloring="heatmap")


# θ0 keeps a star; the checkpoints their own colour each (as in the pictures).
_CHECKPOINT_COLOURS = ("darkorange", "magenta", "deepskyblue", "lime", "gold", "cyan")


def _marks(data: SurfaceData) -> list:
    """θ0 and the checkpoints in the plane (named at their points), and a trajectory's path."""
    import plotly.graph_objects as go

    recorded = [(m["label"], tuple(m["at"])) for m in data.frame.get("markers", [])] or [("θ0", (0.0, 0.0))]
    traces = []
    for k, (label, at) in enumerate(recorded):
        if len(at) != 2:
            continue
        colour = "red" if k == 0 else _CHECKPOINT_COLOURS[(k - 1) % len(_CHECKPOINT_COLOURS)]
        traces.append(go.Scatter(
            x=[at[0]], y=[at[1]], mode="markers+text", text=[label], textposition="top right", name=label,
            marker=dict(symbol="star" if k == 0 else "triangle-up", size=14 if k == 0 else 11, color=colour,
                        line=dict(color="white", width=1)),
            textfont=dict(color=colour), hovertemplate=f"{label}<br>x %{{x:.4g}}<br>y %{{y:.4g}}<extra></extra>",
        ))  # fmt: skip
    path = data.trajectory
    if path is not None:
        traces.append(go.Scatter(
            x=path["x"], y=path["y"], mode="lines+markers", name="trajectory", text=list(path["names"]),
            line=dict(color="black", width=1.5), marker=dict(size=5, color="black"),
            hovertemplate="%{text}<br>x %{x:.4g}<br>y %{y:.4g}<extra></extra>",
        ))  # fmt: skip
    return traces


def _curves(data: SurfaceData):
    """A 1D surface: loss on the left axis, accuracy on the right; train solid, test dashed."""
    import plotly.graph_objects as go

    figure = go.Figure()
    order = np.argsort(data.x, kind="stable") if data.curve is None else np.flatnonzero(np.asarray(data.curve) == 0)
    if data.curve is not None:
        order = order[np.argsort(data.x[order], kind="stable")]
    x = data.x[order]
    dashes = dict(zip(SPLITS, ("solid", "dash")))
    has_acc = False
    for metric in _shown(data):
        quantity, split = quantity_of(metric), metric.partition("_")[0]
        values = computed_values(data, metric)[order]
        on_right = quantity != "loss"
        has_acc |= on_right
        figure.add_trace(go.Scatter(
            x=x, y=np.where(np.isfinite(values), values, np.nan), mode="lines+markers", name=_words(metric),
            yaxis="y2" if on_right else "y",
            line=dict(color="firebrick" if on_right else "royalblue", dash=dashes.get(split, "dot")),
            hovertemplate=f"x %{{x:.4g}}<br>{_words(metric)} %{{y:.6g}}<extra></extra>",
        ))  # fmt: skip
    layout = dict(title="1D curves", height=480, xaxis_title=_axis_titles(data)[0],
                  yaxis=dict(title="loss"), legend=dict(orientation="h", y=-0.2))  # fmt: skip
    if has_acc:
        layout["yaxis2"] = dict(title="accuracy (%)", overlaying="y", side="right", range=[0, 100])
    figure.update_layout(**layout)
    return figure


def _points(data: SurfaceData, metric: str):
    import plotly.graph_objects as go

    values = computed_values(data, metric)
    keep = np.isfinite(values)
    figure = go.Figure(go.Scatter(
        x=data.points[keep, 0], y=data.points[keep, 1], mode="markers",
        marker=dict(color=values[keep], colorscale="Viridis", size=11, colorbar=dict(title=dict(text=_words(metric)))),
        hovertemplate=f"a %{{x:.4g}}<br>b %{{y:.4g}}<br>{_words(metric)} %{{marker.color:.6g}}<extra></extra>",
    ))  # fmt: skip
    figure.update_layout(
        title=f"{_words(metric)}: {int(keep.sum())} points", xaxis_title="a (along d1)", yaxis_title="b (along d2)"
    )
    return figure


def _hessian_maps(data: SurfaceData):
    """λmax, λmin and |λmin / λmax| of the Hessian at every point (the paper's Fig. 7 is the last)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    top = _grid_values(data, measurement_name(TRAIN, "hess_max"))
    bottom = _grid_values(data, measurement_name(TRAIN, "hess_min"))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(bottom) / np.abs(top)
    ratio = np.where(np.isfinite(ratio), ratio, np.nan)
    titles = ("λmax", "λmin", "|λmin / λmax|")
    figure = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.08)
    for col, (name, values, scale) in enumerate(zip(titles, (top, bottom, ratio), ("Viridis", "RdBu", "Viridis")), start=1):
        figure.add_trace(go.Heatmap(
            x=data.x, y=data.y, z=values, colorscale=scale, name=name, showscale=True,
            colorbar=dict(x=col / 3 - 0.02, len=0.9, thickness=10),
            hovertemplate=f"x %{{x:.4g}}<br>y %{{y:.4g}}<br>{name} %{{z:.6g}}<extra></extra>",
        ), row=1, col=col)  # fmt: skip
    figure.update_layout(title="the Hessian's extreme eigenvalues at every point (train loss)", height=430)
    return figure


# ---------------------------------------------------------------- a Hessian spectrum


def _spectrum_section(k: int, path: str) -> str:
    import plotly.graph_objects as go

    from .storage import read_spectrum

    spectrum = read_spectrum(path)
    floor = max(float(np.max(spectrum.density)) * 1e-8, 1e-300)
    figure = go.Figure(go.Scatter(
        x=spectrum.density_grid, y=np.maximum(spectrum.density, floor), mode="lines", name="density (SLQ)",
        hovertemplate="eigenvalue %{x:.4g}<br>density %{y:.3g}<extra></extra>",
    ))  # fmt: skip
    for value in spectrum.eigenvalues:
        figure.add_vline(x=float(value), line=dict(color="red", dash="dash", width=1))
    figure.add_vline(x=float(spectrum.min_eigenvalue), line=dict(color="green", dash="dot", width=1))
    figure.update_layout(
        title=f"Hessian spectrum: λmax {spectrum.eigenvalues[0]:.4g}, λmin {spectrum.min_eigenvalue:.4g}, "
        f"trace {spectrum.trace:.4g} (top eigenvalues red, smallest green)",
        xaxis_title="eigenvalue of the Hessian of the mean loss", yaxis=dict(title="density", type="log"), height=460,
    )  # fmt: skip
    return (
        f'<section id="file-{k}"><h2>{html.escape(Path(path).name)}: Hessian spectrum</h2>'
        f"{_figure_html(figure, f'spectrum-{k}')}{_provenance(describe_spectrum(path))}</section>"
    )
