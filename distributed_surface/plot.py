"""Pictures of a surface file, drawn from the file alone (matplotlib, no screen needed).

2D surfaces: contour lines with labels (``contour``), filled contours (``contourf``), a heatmap with a
colour bar (``heatmap``) and a 3D surface (``surface``), each for every measurement of the file (the loss
and accuracy of each split), and where the file has a test split, the generalisation gap between the
splits (``gap``: test loss − train loss, train accuracy − test accuracy). 1D surfaces: loss and accuracy
on twin axes (``curve``), train solid and test dashed. Points not computed yet are masked (left blank) and the title says so, so a
running or interrupted surface plots too. Files of the paper's own code are read as well
(:mod:`distributed_surface.storage.paper`).

This is the one module that imports matplotlib. It draws on :class:`matplotlib.figure.Figure` objects
directly, never through pyplot, so it neither changes the caller's backend nor keeps figures alive.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps, colors
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.tri import Triangulation

from .core.curves import curve_names, curve_order, loss_barriers
from .core.measurements import SPLITS, TEST, TRAIN, measurement_name, ordered, quantity_of
from .core.errors import UserError
from .core.options import PICTURE_FORMATS
from . import __version__
from .storage import MARK, SurfaceData, carries_mark, is_legacy, read_any_surface, write_atomically

# picture (--kind) -> the part of the file name that says what it is
PICTURES_2D = {
    "contour": "2d_contour", "contourf": "2d_contourf", "heatmap": "2d_heatmap", "surface": "3d_surface", "gap": "2d_gap",
    "curvature": "2d_curvature",
}  # fmt: skip
PICTURES_1D = {"curve": "1d"}
PICTURES_POINTS = {"points": "points"}  # a list of points in a plane (--points with two columns)
PICTURES = (*PICTURES_2D, *PICTURES_1D, *PICTURES_POINTS)
# Axis labels of directions that recorded none: (long, short) for d1 and d2.
GENERIC_LABELS = (("x: offset along direction d1", "x (along d1)"), ("y: offset along direction d2", "y (along d2)"))
FORMATS = PICTURE_FORMATS
DPI = 150

# Default levels for loss: nice round values between the smallest loss and LOSS_CAP (the paper's vmax),
# about LOSS_LEVELS of them: on the built-in example (loss 0.003 .. 23) that is the paper's 0.5 apart.
LOSS_CAP = 10.0
LOSS_LEVELS = 20
LABELS = {"loss": "loss", "acc": "accuracy (%)", "err": "error (%)"}


def default_out_dir(path: str) -> Path:
    surface = Path(path)
    return surface.with_name(surface.stem + "_plots")


def plot_surface(
    path: str,
    out_dir: str | None = None,
    *,
    pictures: Iterable[str] | str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    levels: float | None = None,
    log: bool = False,
    fmt: str = "png",
    force: bool = False,
) -> list[Path]:
    """Draw the surface in ``path`` into ``out_dir`` (default: ``<stem>_plots`` next to it) and return
    the files written.

    ``pictures``: names from :data:`PICTURES` (``--kind``; a list, or one comma-separated string); None
    or ``"all"``: every picture that fits the file (the four 2D pictures, or the 1D curve). ``vmin``,
    ``vmax``: the range of loss values mapped to colours and levels; ``levels``: the distance between
    contour levels (the paper's ``vlevel``; in decades with ``log``). They apply to loss pictures; accuracy pictures always
    span their data. ``log``: loss on a log scale. ``fmt``: png, pdf or svg. An existing picture is
    replaced only where ``dsurf plot`` drew it, or with ``force``.
    """
    fmt = _check_format(fmt)
    drawn = draw(path, pictures=pictures, vmin=vmin, vmax=vmax, levels=levels, log=log)
    target = Path(out_dir) if out_dir else default_out_dir(path)
    if target.exists() and not target.is_dir():
        raise UserError(f"--out-dir {str(target)!r} is not a directory")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out-dir {str(target)!r}: {exc.strerror or exc}") from None
    stem = Path(path).stem
    return [_save(figure, target / f"{stem}_{name}.{fmt}", force) for name, figure in drawn]


def draw(
    path: str,
    *,
    pictures: Iterable[str] | str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    levels: float | None = None,
    log: bool = False,
) -> list[tuple[str, Figure]]:
    """The pictures of ``path`` (as :func:`plot_surface` takes them), each with its name (the file name
    :func:`plot_surface` gives it, less the file's stem and the format), not saved anywhere."""
    wanted = _parse_pictures(pictures)
    _check_range(vmin, vmax, levels, log)
    from .storage import is_spectrum

    if is_spectrum(path):
        return [("density", _spectrum(path))]
    data = read_any_surface(path)
    scattered = data.points is not None and data.points.shape[1] == 2 and data.curve is None
    fits = PICTURES_POINTS if scattered else PICTURES_1D if data.y is None else PICTURES_2D
    gaps = _gap_quantities(data)
    curved = all(measurement_name(TRAIN, q) in data.metrics for q in ("hess_max", "hess_min"))
    if wanted is None:
        wanted = [picture for picture in fits if (picture != "gap" or gaps) and (picture != "curvature" or curved)]
    if "curvature" in wanted and not curved:
        raise UserError(f"--kind curvature: {path!r} holds no Hessian eigenvalues (dsurf run --measure hessian)")
    misfit = [picture for picture in wanted if picture not in fits]
    if misfit:
        dims = "points" if scattered else "1D" if data.y is None else "2D"
        raise UserError(
            f"--kind {misfit[0]} does not fit {path!r}, a {dims} surface (its kinds: {', '.join(fits)})"
        )
    if "gap" in wanted and not gaps:
        raise UserError(f"--kind gap: {path!r} has no test split to compare with the train split")
    if not np.any(data.done):
        raise UserError(f"{path!r}: no point is computed yet, nothing to plot")
    style = _Style(vmin=vmin, vmax=vmax, step=levels, log=log)
    drawn = []
    if scattered:
        for metric in _metrics(data):
            suffix = "_log" if log and _is_loss(metric) else ""
            drawn.append((f"points_{metric}{suffix}", _scatter(data, metric, style)))
        return drawn
    if data.y is None:
        return [(f"1d_{_curve_name(data)}{'_log' if log else ''}", _curve(data, style))]
    for picture in wanted:
        if picture == "gap":
            drawn.extend((f"{PICTURES_2D[picture]}_{quantity}", _gap(data, quantity)) for quantity in gaps)
            continue
        if picture == "curvature":
            drawn.append((PICTURES_2D[picture], _convexity(data)))
            continue
        for metric in _metrics(data):
            suffix = "_log" if log and _is_loss(metric) else ""
            drawn.append((f"{PICTURES_2D[picture]}_{metric}{suffix}", _DRAW_2D[picture](data, metric, style)))
    return drawn


# ---------------------------------------------------------------- options


def _check_format(fmt: str) -> str:
    value = str(fmt).lower().lstrip(".")
    if value not in FORMATS:
        raise UserError(f"unknown picture format {fmt!r} (choose from {', '.join(FORMATS)})")
    return value


def _parse_pictures(pictures: Iterable[str] | str | None) -> list[str] | None:
    if pictures is None:
        return None
    items = [pictures] if isinstance(pictures, str) else list(pictures)
    names = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    if not names or "all" in names:
        return None
    for name in names:
        if name not in PICTURES:
            raise UserError(f"unknown plot kind {name!r} (choose from {', '.join(PICTURES)} or all)")
    return list(dict.fromkeys(names))


def _check_range(vmin, vmax, step, log) -> None:
    for flag, value in (("--vmin", vmin), ("--vmax", vmax), ("--levels", step)):
        if value is not None and not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, not {value!r}")
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise UserError(f"--vmin {vmin:g} must be below --vmax {vmax:g}")
    if step is not None and step <= 0:
        raise UserError(f"--levels {step:g}: the distance between contour levels must be positive")
    if log and ((vmin is not None and vmin <= 0) or (vmax is not None and vmax <= 0)):
        raise UserError("--log needs a positive --vmin and --vmax")


class _Style:
    """The user's range options, and the levels and colour norm they give for one set of values."""

    def __init__(self, *, vmin, vmax, step, log):
        self.vmin, self.vmax, self.step, self.log = vmin, vmax, step, log

    def scale(self, metric: str, values: np.ndarray) -> tuple[np.ndarray, colors.Normalize, bool]:
        """Levels, colour norm and whether the scale is logarithmic for ``values`` (finite ones)."""
        finite = values[np.isfinite(values)]
        if not finite.size:  # every computed value overflowed (a blown-up model): an empty picture
            return np.array([0.0]), colors.Normalize(0.0, 1.0), False
        if not _is_loss(metric):
            lo, hi = float(finite.min()), float(finite.max())
            if hi <= lo:
                return np.array([lo]), colors.Normalize(lo - 1, hi + 1), False
            ticks = MaxNLocator(nbins=LOSS_LEVELS, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
            return ticks, colors.Normalize(lo, hi), False
        if self.log:
            positive = finite[finite > 0]
            lo = self.vmin if self.vmin is not None else float(positive.min()) if positive.size else 1e-3
            hi = self.vmax if self.vmax is not None else float(positive.max()) if positive.size else 1.0
            if hi <= lo:
                hi = lo * 10
            return _log_levels(lo, hi, self.step), colors.LogNorm(lo, hi), True
        lo = self.vmin if self.vmin is not None else float(finite.min())
        if self.vmax is not None:
            hi = self.vmax
        else:
            hi = float(finite.max())
            if lo < LOSS_CAP < hi:
                hi = LOSS_CAP  # the paper's vmax: beyond it the loss has blown up, detail there hides the basin
        if hi <= lo:
            return np.array([lo]), colors.Normalize(lo - 1, hi + 1), False
        if self.step is not None:
            count = (hi - lo) / self.step
            if count > 2000:
                raise UserError(f"--levels {self.step:g} gives {count:.0f} contour levels between {lo:g} and {hi:g}")
            levels = lo + self.step * np.arange(int(math.floor(count + 1e-9)) + 1)
        else:
            levels = MaxNLocator(nbins=LOSS_LEVELS, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
        return levels, colors.Normalize(lo, hi), False


def _log_levels(lo: float, hi: float, step: float | None) -> np.ndarray:
    """Levels between lo and hi on a log scale: every ``step`` decades, or round values 1-2-5 (1..9 for a
    narrow range, one per decade for a wide one)."""
    a, b = math.log10(lo), math.log10(hi)
    if step is not None:
        count = (b - a) / step
        if count > 2000:
            raise UserError(f"--levels {step:g} gives {count:.0f} contour levels between {lo:g} and {hi:g}")
        return 10.0 ** (a + step * np.arange(int(math.floor(count + 1e-9)) + 1))
    decades = range(math.floor(a) - 1, math.ceil(b) + 1)

    def within(mantissas):
        values = np.array([m * 10.0**d for d in decades for m in mantissas])
        return values[(values >= lo * (1 - 1e-9)) & (values <= hi * (1 + 1e-9))]

    round_125 = within((1, 2, 5))
    if round_125.size > 25:
        return within((1,))
    if round_125.size >= 5:
        return round_125
    every_digit = within(range(1, 10))
    return every_digit if every_digit.size >= 4 else np.geomspace(lo, hi, 6)


def _is_loss(metric: str) -> bool:
    return quantity_of(metric) == "loss"


def _metrics(data: SurfaceData) -> list[str]:
    """The measurements drawn: floating values, one per point, in display order (counts such as the
    Hessian's products are left out)."""
    return ordered(
        name for name, values in data.metrics.items()
        if np.shape(values) == data.done.shape and np.asarray(values).dtype.kind == "f"
    )  # fmt: skip


def _gap_quantities(data: SurfaceData) -> list[str]:
    """The quantities (loss, acc) that both the train and the test split have."""
    return [q for q in ("loss", "acc") if all(measurement_name(s, q) in data.metrics for s in (TRAIN, TEST))]


def _curve_name(data: SurfaceData) -> str:
    return "loss_acc" if any(quantity_of(m) == "acc" for m in data.metrics) else "loss"


# ---------------------------------------------------------------- titles and values


def describe(data: SurfaceData) -> str:
    """One line: the model, the directions' norm and the data set size, from the stored config."""
    config = data.config
    model = str(config.get("model") or "?").rsplit(":", 1)[-1]
    if config.get("checkpoint"):
        model += f" ({Path(str(config['checkpoint'])).name})"
    parts = [model]
    if is_legacy(data):
        parts[0] = f"{model} (loss-landscape file)"
    # What the directions' kind recorded; files without it (older ones, the paper's) say at most their norm.
    norm = data.frame.get("norm") if data.frame else config.get("norm")
    description = data.frame.get("description") or (f"{norm}-normalised directions" if norm else None)
    if description:
        parts.append(description)
    if config.get("dir_type") == "states":
        parts.append("states")
    samples = data.attrs.get("num_samples") or config.get("max_samples")
    if samples:
        parts.append(f"{samples} samples")
    return ", ".join(parts)


def _title(data: SurfaceData, what: str) -> str:
    lines = [what, describe(data)]
    done, total = data.progress
    if done < total:
        lines.append(f"partial: {done}/{total} points computed ({data.status}), the rest left blank")
    first = next(iter(_metrics(data)), None)
    if first is not None:
        broken = int(np.count_nonzero(data.done.astype(bool) & ~np.isfinite(np.asarray(data.metrics[first], dtype=float))))
        if broken:
            lines.append(f"{broken} computed point(s) not finite (blown up, or BatchNorm variances below zero), left blank")
    return "\n".join(lines)


def _label(metric: str, log: bool = False) -> str:
    split, _, quantity = metric.partition("_")
    text = f"{split} {LABELS.get(quantity, quantity)}"
    return f"{text} (log scale)" if log else text


def _masked(data: SurfaceData, metric: str, log: bool = False) -> np.ma.MaskedArray:
    values = np.asarray(data.metrics[metric], dtype=np.float64)
    bad = (data.done == 0) | ~np.isfinite(values)
    if log:
        bad |= values <= 0
    return np.ma.masked_array(np.where(bad, 0.0, values), mask=bad)


def _axes_labels(ax, data: SurfaceData, short: bool = False) -> None:
    """The axes' labels as the directions' kind recorded them (``short``: for 3D pictures), else generic."""
    long_labels = _recorded(data, "axis_labels")
    labels = (_recorded(data, "axis_short_labels") or long_labels) if short else long_labels
    for k, set_label in enumerate((ax.set_xlabel, ax.set_ylabel)[: 1 if data.y is None else 2]):
        set_label(labels[k] if k < len(labels) else GENERIC_LABELS[k][1 if short else 0])


def _recorded(data: SurfaceData, key: str) -> list[str]:
    """A list the directions' kind recorded as JSON (none in files made before it was recorded)."""
    text = data.frame.get(key)
    return [str(item) for item in json.loads(text)] if isinstance(text, str) else []


def markers(data: SurfaceData) -> list[tuple[str, tuple[float, ...]]]:
    """The models to mark, with their coordinates: the ones the directions' kind recorded, else θ0 at
    the origin."""
    recorded = [(m["label"], tuple(m["at"])) for m in data.frame.get("markers", [])]
    return recorded or [("θ0", (0.0,) * (1 if data.y is None else 2))]


# The checkpoints' colours and shapes, one each (θ0 keeps the red star).
_CHECKPOINT_STYLES = (("darkorange", "^"), ("magenta", "s"), ("deepskyblue", "D"), ("lime", "v"), ("gold", "P"), ("cyan", "X"))


def marker_style(k: int) -> tuple[str, dict]:
    """The colour and marker of the ``k``-th model marked (0: θ0, a red star; then one per checkpoint,
    in turn)."""
    if k == 0:
        return "red", dict(marker="*", markersize=11)
    colour, shape = _CHECKPOINT_STYLES[(k - 1) % len(_CHECKPOINT_STYLES)]
    return colour, dict(marker=shape, markersize=8)


def _mark_minimum(ax, data: SurfaceData) -> None:
    """The models in the plane (θ0, and the checkpoints of --plane), where the grid covers them, and the
    path of a trajectory's checkpoints."""
    shown = False
    for k, (label, at) in enumerate(markers(data)):
        if len(at) == 2 and data.x.min() <= at[0] <= data.x.max() and data.y.min() <= at[1] <= data.y.max():
            colour, style = marker_style(k)
            ax.plot([at[0]], [at[1]], color=colour, markeredgecolor="white", linestyle="", label=label, **style)
            if k > 0:  # each checkpoint named at its point: the legend alone cannot tell two apart on a print
                ax.annotate(label, (at[0], at[1]), xytext=(5, -9), textcoords="offset points", fontsize=7, color=colour,
                            fontweight="bold", gid=f"marker-label-{k}")  # fmt: skip
            shown = True
    path = data.trajectory
    if path is not None and data.y is not None:
        ax.plot(path["x"], path["y"], color="black", linewidth=1.0, marker="o", markersize=3, label="trajectory")
        for name, px, py in ((path["names"][0], path["x"][0], path["y"][0]), (path["names"][-1], path["x"][-1], path["y"][-1])):
            ax.annotate(name, (px, py), fontsize=7, xytext=(4, 4), textcoords="offset points")
        shown = True
    if shown:
        ax.legend(loc="upper right", fontsize=8, framealpha=0.8)


def _equal_aspect(ax, data: SurfaceData) -> None:
    wx, wy = np.ptp(data.x), np.ptp(data.y)
    if wx > 0 and wy > 0 and 1 / 3 <= wx / wy <= 3:
        ax.set_aspect("equal")


def _contourable(z: np.ma.MaskedArray) -> bool:
    """Contours need a varying value over at least one grid cell whose four corners are computed."""
    if z.shape[0] < 2 or z.shape[1] < 2 or z.count() < 4 or not float(z.max()) > float(z.min()):
        return False
    ok = ~np.ma.getmaskarray(z)
    return bool((ok[:-1, :-1] & ok[1:, :-1] & ok[1:, 1:] & ok[:-1, 1:]).any())


def _fmt(value: float) -> str:
    return f"{value:.3g}"


# ---------------------------------------------------------------- 2D pictures


def _figure(data: SurfaceData, metric: str, what: str, log: bool) -> tuple[Figure, object]:
    fig = Figure(figsize=(6.0, 5.4), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(_title(data, f"{_label(metric, log)}: {what}"), fontsize=9)
    _axes_labels(ax, data)
    return fig, ax


def _contour(data: SurfaceData, metric: str, style: _Style) -> Figure:
    levels, norm, log = style.scale(metric, _masked(data, metric).compressed())
    z = _masked(data, metric, log).T  # rows of the picture are y
    fig, ax = _figure(data, metric, "contour lines", log)
    if not _contourable(z):
        return _heatmap_into(fig, ax, data, z, norm, metric, note=True)
    x, y = np.meshgrid(data.x, data.y)
    inside = levels[(levels >= z.min()) & (levels <= z.max())]
    if inside.size:
        lines = ax.contour(x, y, z, levels=inside, cmap=_line_cmap(metric), norm=norm, linewidths=1.0)
        labelled = inside if inside.size <= 12 else inside[:: int(math.ceil(inside.size / 12))]
        ax.clabel(lines, levels=labelled, inline=True, fontsize=7, fmt=_fmt)
    ax.set_xlim(data.x.min(), data.x.max())
    ax.set_ylim(data.y.min(), data.y.max())
    _equal_aspect(ax, data)
    _mark_minimum(ax, data)
    return fig


def _contourf(data: SurfaceData, metric: str, style: _Style) -> Figure:
    levels, norm, log = style.scale(metric, _masked(data, metric).compressed())
    z = _masked(data, metric, log).T
    fig, ax = _figure(data, metric, "filled contours", log)
    if not _contourable(z) or levels.size < 2:
        return _heatmap_into(fig, ax, data, z, norm, metric, note=True)
    x, y = np.meshgrid(data.x, data.y)
    filled = ax.contourf(x, y, z, levels=levels, cmap=_cmap(metric), norm=norm, extend="both")
    inside = levels[(levels >= z.min()) & (levels <= z.max())]
    if inside.size:
        ax.contour(x, y, z, levels=inside, colors="black", linewidths=0.3, alpha=0.5)
    fig.colorbar(filled, ax=ax, label=_label(metric, log))
    _equal_aspect(ax, data)
    _mark_minimum(ax, data)
    return fig


def _heatmap(data: SurfaceData, metric: str, style: _Style) -> Figure:
    _, norm, log = style.scale(metric, _masked(data, metric).compressed())
    z = _masked(data, metric, log).T
    fig, ax = _figure(data, metric, "heatmap", log)
    return _heatmap_into(fig, ax, data, z, norm, metric, note=False)


def _heatmap_into(fig, ax, data, z, norm, metric, note: bool) -> Figure:
    """One coloured cell per grid point; also the picture of grids too small or flat for contours."""
    x, y = np.meshgrid(data.x, data.y)
    cmap = _cmap(metric).with_extremes(bad="white")
    mesh = ax.pcolormesh(x, y, z, cmap=cmap, norm=norm, shading="nearest")
    extend = "neither"
    if z.count():
        extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
            (bool(z.min() < norm.vmin), bool(z.max() > norm.vmax))
        ]
    log = isinstance(norm, colors.LogNorm)
    fig.colorbar(mesh, ax=ax, label=_label(metric, log), extend=extend)
    if note:
        ax.set_title(ax.get_title() + "\n(too few points or too flat for contours: drawn as cells)", fontsize=9)
    if len(data.x) == 1:
        ax.set_xticks(data.x)
    if len(data.y) == 1:
        ax.set_yticks(data.y)
    _equal_aspect(ax, data)
    _mark_minimum(ax, data)
    return fig


def _surface3d(data: SurfaceData, metric: str, style: _Style) -> Figure:
    levels, norm, log = style.scale(metric, _masked(data, metric).compressed())
    z = _masked(data, metric, log)
    values = np.log10(z.filled(1.0)) if log else z.filled(0.0)
    clip = style.vmax if _is_loss(metric) and style.vmax is not None else None
    if clip is not None:  # like the paper's zmax: a flat cap rather than a blown-up wall
        values = np.minimum(values, math.log10(clip) if log else clip)
    shown = np.ma.masked_array(values, mask=np.ma.getmaskarray(z))
    fig = Figure(figsize=(7.0, 5.6), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    ax.set_title(_title(data, f"{_label(metric, log)}: 3D surface"), fontsize=9)
    _axes_labels(ax, data, short=True)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(nbins=5))
    ax.set_zlabel(("log10 " if log else "") + _label(metric))
    if not shown.count():
        ax.text2D(0.5, 0.5, "no finite value computed yet", transform=ax.transAxes, ha="center")
        return fig
    low, high = float(shown.min()), float(shown.max())
    znorm = colors.Normalize(low, high if high > low else low + 1)
    cmap = colormaps["coolwarm_r" if quantity_of(metric) == "acc" else "coolwarm"]
    nx, ny = shown.shape
    if nx >= 2 and ny >= 2 and shown.count() >= 3:
        xg, yg = np.meshgrid(data.x, data.y, indexing="ij")
        if shown.count() == shown.size:
            artist = ax.plot_surface(
                xg, yg, shown.filled(), cmap=cmap, norm=znorm, rstride=1, cstride=1, linewidth=0, antialiased=False
            )
        else:
            # plot_surface mis-colours grids with holes: triangles over the computed points instead
            artist = _trisurf(ax, xg, yg, shown, cmap, znorm)
    else:
        xg, yg = np.meshgrid(data.x, data.y, indexing="ij")
        keep = ~np.ma.getmaskarray(shown)
        artist = ax.scatter(xg[keep], yg[keep], shown.data[keep], c=shown.data[keep], cmap=cmap, norm=znorm, s=30)
        if nx >= 2 or ny >= 2:
            order = np.argsort(xg[keep] + yg[keep])
            ax.plot(xg[keep][order], yg[keep][order], shown.data[keep][order], color="grey", linewidth=1)
    fig.colorbar(artist, ax=ax, shrink=0.6, pad=0.08, label=("log10 " if log else "") + _label(metric))
    ax.view_init(elev=30, azim=-60)
    return fig


def _trisurf(ax, xg, yg, z: np.ma.MaskedArray, cmap, norm):
    """Two triangles per grid cell, kept where all three corners are computed."""
    nx, ny = z.shape
    index = np.arange(nx * ny).reshape(nx, ny)
    a, b, c, d = index[:-1, :-1].ravel(), index[1:, :-1].ravel(), index[1:, 1:].ravel(), index[:-1, 1:].ravel()
    triangles = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    valid = ~np.ma.getmaskarray(z).ravel()
    triangles = triangles[valid[triangles].all(axis=1)]
    if not len(triangles):
        x, y, values = xg.ravel()[valid], yg.ravel()[valid], z.data.ravel()[valid]
        return ax.scatter(x, y, values, c=values, cmap=cmap, norm=norm)
    triangulation = Triangulation(xg.ravel(), yg.ravel(), triangles)
    return ax.plot_trisurf(triangulation, z.data.ravel(), cmap=cmap, norm=norm, linewidth=0, antialiased=False)


def _gap(data: SurfaceData, quantity: str) -> Figure:
    """How much worse the test split is than the train split at every point: test − train for the loss,
    train − test for the accuracy; a diverging map centred on no gap, with the zero line drawn."""
    train, test = (_masked(data, measurement_name(split, quantity)) for split in (TRAIN, TEST))
    gap = (test - train) if quantity == "loss" else (train - test)
    what = "test loss − train loss" if quantity == "loss" else "train accuracy − test accuracy (%)"
    z = np.ma.masked_invalid(gap).T
    fig = Figure(figsize=(6.0, 5.4), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(_title(data, f"generalisation gap: {what}"), fontsize=9)
    _axes_labels(ax, data)
    finite = z.compressed()
    if quantity == "loss":  # beyond the paper's loss cap the gap is that of a blown-up model
        finite = finite[np.abs(finite) <= LOSS_CAP] if np.any(np.abs(finite) <= LOSS_CAP) else finite
    reach = float(np.max(np.abs(finite))) if finite.size else 1.0
    norm = colors.Normalize(-reach, reach) if reach > 0 else colors.Normalize(-1.0, 1.0)
    x, y = np.meshgrid(data.x, data.y)
    mesh = ax.pcolormesh(x, y, z, cmap=colormaps["RdBu_r"].with_extremes(bad="white"), norm=norm, shading="nearest")
    fig.colorbar(mesh, ax=ax, label=what, extend="both" if finite.size < z.count() else "neither")
    if _contourable(z) and float(z.min()) < 0 < float(z.max()):
        ax.contour(x, y, z, levels=[0.0], colors="black", linewidths=0.8)
    _equal_aspect(ax, data)
    _mark_minimum(ax, data)
    return fig


def _convexity(data: SurfaceData) -> Figure:
    """The paper's Fig. 7: |λmin / λmax| of the Hessian at every point, near 0 where the surface is
    convex (λmin ≥ 0, or small next to λmax), towards 1 and above where it curves down as much as up."""
    top = _masked(data, measurement_name(TRAIN, "hess_max"))
    bottom = _masked(data, measurement_name(TRAIN, "hess_min"))
    ratio = np.ma.masked_invalid(np.abs(bottom) / np.abs(top)).T
    fig = Figure(figsize=(6.0, 5.4), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(_title(data, "|λmin / λmax| of the Hessian (the paper's Fig. 7)"), fontsize=9)
    _axes_labels(ax, data)
    x, y = np.meshgrid(data.x, data.y)
    high = float(ratio.max()) if ratio.count() else 1.0
    mesh = ax.pcolormesh(x, y, ratio, cmap=colormaps["viridis"].with_extremes(bad="white"),
                         norm=colors.Normalize(0.0, max(high, 1e-12)), shading="nearest")  # fmt: skip
    fig.colorbar(mesh, ax=ax, label="|λmin / λmax|")
    _equal_aspect(ax, data)
    _mark_minimum(ax, data)
    return fig


def _spectrum(path: str) -> Figure:
    """A Hessian spectrum file: the density on a log scale, the top eigenvalues and the smallest marked."""
    from .storage import read_spectrum

    spectrum = read_spectrum(path)
    fig = Figure(figsize=(6.8, 4.6), layout="constrained")
    ax = fig.add_subplot()
    floor = max(float(spectrum.density.max()) * 1e-8, 1e-300)
    ax.semilogy(spectrum.density_grid, np.maximum(spectrum.density, floor), color="tab:blue", label="density (SLQ)")
    for k, value in enumerate(spectrum.eigenvalues):
        ax.axvline(value, color="tab:red", linewidth=0.8, linestyle="--", label="top eigenvalues" if k == 0 else None)
    ax.axvline(spectrum.min_eigenvalue, color="tab:green", linewidth=0.8, linestyle=":", label="smallest eigenvalue")
    ax.set_xlabel("eigenvalue of the Hessian of the mean loss")
    ax.set_ylabel("density (log scale)")
    config = spectrum.config
    model = str(config.get("model") or "?").rsplit(":", 1)[-1]
    ax.set_title(f"Hessian spectrum: {model}, {spectrum.attrs.get('targets')} targets, {spectrum.attrs.get('parameters')} parameters\n"
                 f"λmax {spectrum.eigenvalues[0]:.4g}, λmin {spectrum.min_eigenvalue:.4g}, trace {spectrum.trace:.4g} ± {spectrum.trace_stderr:.2g}",
                 fontsize=9)  # fmt: skip
    ax.legend(fontsize=8)
    return fig


_DRAW_2D = {"contour": _contour, "contourf": _contourf, "heatmap": _heatmap, "surface": _surface3d}
_LINE_STYLES = {TRAIN: "-", TEST: "--"}


def _cmap(metric: str):
    # low loss and high accuracy share the dark end
    return colormaps["viridis_r" if quantity_of(metric) == "acc" else "viridis"]


def _line_cmap(metric: str):
    """viridis without its pale yellow end, which vanishes on white."""
    part = np.linspace(0.15, 1.0, 256) if quantity_of(metric) == "acc" else np.linspace(0.0, 0.85, 256)
    return colors.ListedColormap(_cmap(metric)(part))


# ---------------------------------------------------------------- 1D picture


def _curve(data: SurfaceData, style: _Style) -> Figure:
    fig = Figure(figsize=(6.8, 4.6), layout="constrained")
    ax = fig.add_subplot()
    _axes_labels(ax, data)
    curves = _curves(data)
    marker = dict(marker="o", markersize=3) if len(data.x) <= 60 * len(curves) else {}
    handles = []
    splits = [s for s in SPLITS if measurement_name(s, "loss") in data.metrics]
    for split in splits:
        loss = _masked(data, measurement_name(split, "loss"), style.log)
        for name, order, alpha in curves:
            (line,) = ax.plot(data.x[order], loss[order], color="tab:blue", linestyle=_LINE_STYLES[split], alpha=alpha,
                              label=f"{split} loss{name}", **marker)  # fmt: skip
            handles.append(line)
    if style.log:
        ax.set_yscale("log")
    ax.set_ylabel("loss (log scale)" if style.log else "loss", color="tab:blue")
    ax.tick_params(axis="y", colors="tab:blue")
    bottom = style.vmin if style.vmin is not None else (None if style.log else 0.0)
    ax.set_ylim(bottom=bottom, top=style.vmax)
    accs = [s for s in SPLITS if measurement_name(s, "acc") in data.metrics]
    if accs:
        twin = ax.twinx()
        for split in accs:
            acc = _masked(data, measurement_name(split, "acc"))
            for name, order, alpha in curves:
                (line,) = twin.plot(data.x[order], acc[order], color="tab:red", linestyle=_LINE_STYLES[split],
                                    alpha=alpha, label=f"{split} accuracy{name}", **marker)  # fmt: skip
                handles.append(line)
        twin.set_ylabel("accuracy (%)", color="tab:red")
        twin.tick_params(axis="y", colors="tab:red")
        twin.set_ylim(0, 100)
    if np.ptp(data.x) > 0:
        ax.set_xlim(data.x.min(), data.x.max())
    for label, at in markers(data):
        if len(at) == 1 and data.x.min() <= at[0] <= data.x.max():
            ax.axvline(at[0], color="grey", linewidth=0.6, linestyle=":")
            ax.annotate(label, (at[0], 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                        textcoords="offset points", fontsize=7, color="grey")  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, ncols=min(len(handles), 4), frameon=False)
    what = " and ".join(["loss"] + (["accuracy"] if accs else []))
    title = f"{' and '.join(splits)} {what}" + (" (log scale)" if style.log else "")
    heights = loss_barriers(data.x, data.curve, data.metrics, data.frame.get("curves"))
    if heights:
        title += "; barrier " + ", ".join(f"{name} {value:.3g}" for name, value in heights.items())
    ax.set_title(_title(data, title), fontsize=9)
    return fig


def _curves(data: SurfaceData) -> list[tuple[str, np.ndarray, float]]:
    """The curves of a 1D surface: (label suffix, the points in order of x, opacity). One curve, or
    for a Bézier surface the curve and the straight line between its ends."""
    if data.curve is None:
        return [("", np.argsort(data.x, kind="stable"), 1.0)]
    names = curve_names(data.frame.get("curves"), data.curve)
    return [(f" ({name})", curve_order(data.x, data.curve, index), 1.0 if index == 0 else 0.45) for index, name in names.items()]


def _scatter(data: SurfaceData, metric: str, style: _Style) -> Figure:
    """A list of points in the plane, each coloured by its value."""
    levels, norm, log = style.scale(metric, _masked(data, metric).compressed())
    values = _masked(data, metric, log)
    fig = Figure(figsize=(6.0, 5.4), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(_title(data, f"{_label(metric, log)}: {len(values)} points"), fontsize=9)
    ax.set_xlabel("a: offset along direction d1")
    ax.set_ylabel("b: offset along direction d2")
    keep = ~np.ma.getmaskarray(values)
    artist = ax.scatter(data.points[keep, 0], data.points[keep, 1], c=values.data[keep], cmap=_cmap(metric), norm=norm,
                        s=40, edgecolors="black", linewidths=0.3)  # fmt: skip
    if (~keep).any():
        ax.scatter(data.points[~keep, 0], data.points[~keep, 1], facecolors="none", edgecolors="grey", s=40, label="not computed")
    fig.colorbar(artist, ax=ax, label=_label(metric, log))
    return fig


# ---------------------------------------------------------------- comparisons (dsurf compare)

COMPARE_PICTURES_2D = ("contour", "contourf", "heatmap", "surface")
_SURFACE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")


def compare_pictures(
    surfaces: Sequence[tuple[str, SurfaceData]],
    target: Path,
    *,
    pictures: Iterable[str] | str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    levels: float | None = None,
    log: bool = False,
    fmt: str = "png",
    band: bool = False,
    force: bool = False,
) -> list[Path]:
    """Draw ``surfaces`` (``(label, data)``, all 2D or all 1D, checked comparable by the caller) into
    the directory ``target`` and return the files written.

    2D: for each picture kind (:data:`COMPARE_PICTURES_2D`; ``pictures`` picks) and each measurement
    that every surface holds, one figure with the surfaces side by side on one colour scale and one set
    of contour levels, computed from all of them together (``vmin``, ``vmax``, ``levels``, ``log`` as
    :func:`plot_surface` takes them). 1D: one figure per quantity (loss, accuracy) with every surface's
    curve overlaid and named in a legend; with ``band``, surfaces that share a label are repeats of one
    model (seeds) and are drawn as their mean and the band of ± one standard deviation."""
    fmt, kinds = check_comparison(surfaces[0][1], pictures=pictures, vmin=vmin, vmax=vmax, levels=levels, log=log,
                                  fmt=fmt, band=band)  # fmt: skip
    style = _Style(vmin=vmin, vmax=vmax, step=levels, log=log)
    if surfaces[0][1].y is None:
        written = []
        for quantity in _shared_quantities(surfaces):
            figure = _compare_curves(surfaces, quantity, style, band)
            suffix = "_log" if log and quantity == "loss" else ""
            written.append(_save(figure, target / f"compare_1d_{quantity}{suffix}.{fmt}", force))
        return written
    shared = [m for m in _metrics(surfaces[0][1]) if all(m in _metrics(data) for _, data in surfaces[1:])]
    written = []
    for kind in kinds:
        for metric in shared:
            figure = _compare_2d(surfaces, kind, metric, style)
            suffix = "_log" if log and _is_loss(metric) else ""
            written.append(_save(figure, target / f"compare_{PICTURES_2D[kind]}_{metric}{suffix}.{fmt}", force))
    return written


def check_comparison(first: SurfaceData, *, pictures, vmin, vmax, levels, log, fmt, band) -> tuple[str, list[str]]:
    """Refuse options that do not fit surfaces like ``first`` (before anything is written); return the
    format and the picture kinds to draw."""
    fmt = _check_format(fmt)
    _check_range(vmin, vmax, levels, log)
    wanted = _parse_pictures(pictures)
    if first.y is None:
        if wanted is not None and wanted != ["curve"]:
            raise UserError(f"--kind {next(k for k in wanted if k != 'curve')} does not fit 1D surfaces (their kind: curve)")
        return fmt, ["curve"]
    if band:
        raise UserError("--band draws 1D curves as mean and spread; 2D surfaces are compared side by side (leave out --band)")
    kinds = wanted or list(COMPARE_PICTURES_2D)
    misfit = [kind for kind in kinds if kind not in COMPARE_PICTURES_2D]
    if misfit:
        raise UserError(f"--kind {misfit[0]}: dsurf compare draws {', '.join(COMPARE_PICTURES_2D)} of 2D surfaces")
    return fmt, kinds


def shared_scale(surfaces: Sequence[tuple[str, SurfaceData]], metric: str, style: "_Style"):
    """The levels, colour norm and log flag that every panel of ``metric`` shares: those of all the
    surfaces' computed values together."""
    values = np.concatenate([_masked(data, metric).compressed() for _, data in surfaces])
    return style.scale(metric, values)


def _compare_2d(surfaces, kind: str, metric: str, style: "_Style") -> Figure:
    levels, norm, log = shared_scale(surfaces, metric, style)
    count = len(surfaces)
    fig = Figure(figsize=(4.4 * count + 1.2, 4.8), layout="constrained")
    what = {"contour": "contour lines", "contourf": "filled contours", "heatmap": "heatmap", "surface": "3D surface"}[kind]
    same = "one height range and colour scale" if kind == "surface" else "one colour scale and one set of levels"
    fig.suptitle(f"{_label(metric, log)}: {what}, {same} for all", fontsize=10)
    cmap = _cmap(metric).with_extremes(bad="white")
    if kind == "surface":
        return _compare_3d(fig, surfaces, metric, norm, log, style)
    axes = [fig.add_subplot(1, count, k + 1) for k in range(count)]
    for ax, (label, data) in zip(axes, surfaces):
        z = _masked(data, metric, log).T
        ax.set_title(_panel_title(label, data), fontsize=8)
        _axes_labels(ax, data)
        x, y = np.meshgrid(data.x, data.y)
        if kind == "heatmap" or not _contourable(z) or levels.size < 2:
            ax.pcolormesh(x, y, z, cmap=cmap, norm=norm, shading="nearest")
            if kind != "heatmap":
                ax.set_title(ax.get_title() + "\n(too few points or too flat for contours: cells)", fontsize=8)
        elif kind == "contourf":
            ax.contourf(x, y, z, levels=levels, cmap=_cmap(metric), norm=norm, extend="both")
            inside = levels[(levels >= z.min()) & (levels <= z.max())]
            if inside.size:
                ax.contour(x, y, z, levels=inside, colors="black", linewidths=0.3, alpha=0.5)
        else:
            inside = levels[(levels >= z.min()) & (levels <= z.max())]
            if inside.size:
                lines = ax.contour(x, y, z, levels=inside, cmap=_line_cmap(metric), norm=norm, linewidths=1.0)
                labelled = inside if inside.size <= 12 else inside[:: int(math.ceil(inside.size / 12))]
                ax.clabel(lines, levels=labelled, inline=True, fontsize=6, fmt=_fmt)
            ax.set_xlim(data.x.min(), data.x.max())
            ax.set_ylim(data.y.min(), data.y.max())
        _equal_aspect(ax, data)
        _mark_minimum(ax, data)
    from matplotlib.cm import ScalarMappable

    mappable = ScalarMappable(norm=norm, cmap=_line_cmap(metric) if kind == "contour" else _cmap(metric))
    fig.colorbar(mappable, ax=axes, label=_label(metric, log), shrink=0.9)
    return fig


def _compare_3d(fig, surfaces, metric: str, norm, log: bool, style: "_Style") -> Figure:
    """3D panels on one height range and one colour norm."""
    shown = []
    for _, data in surfaces:
        z = _masked(data, metric, log)
        values = np.log10(z.filled(1.0)) if log else z.filled(0.0)
        if _is_loss(metric) and style.vmax is not None:
            values = np.minimum(values, math.log10(style.vmax) if log else style.vmax)
        shown.append(np.ma.masked_array(values, mask=np.ma.getmaskarray(z)))
    finite = np.concatenate([s.compressed() for s in shown])
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    znorm = colors.Normalize(low, high if high > low else low + 1)
    cmap = colormaps["coolwarm_r" if quantity_of(metric) == "acc" else "coolwarm"]
    axes = []
    for k, ((label, data), values) in enumerate(zip(surfaces, shown)):
        ax = fig.add_subplot(1, len(surfaces), k + 1, projection="3d")
        axes.append(ax)
        ax.set_title(_panel_title(label, data), fontsize=8)
        _axes_labels(ax, data, short=True)
        ax.set_zlim(znorm.vmin, znorm.vmax)
        xg, yg = np.meshgrid(data.x, data.y, indexing="ij")
        if values.count() >= 3 and min(values.shape) >= 2:
            if values.count() == values.size:
                ax.plot_surface(xg, yg, values.filled(), cmap=cmap, norm=znorm, rstride=1, cstride=1, linewidth=0,
                                antialiased=False)  # fmt: skip
            else:
                _trisurf(ax, xg, yg, values, cmap, znorm)
        else:
            keep = ~np.ma.getmaskarray(values)
            ax.scatter(xg[keep], yg[keep], values.data[keep], c=values.data[keep], cmap=cmap, norm=znorm, s=30)
        ax.view_init(elev=30, azim=-60)
    from matplotlib.cm import ScalarMappable

    fig.colorbar(ScalarMappable(norm=znorm, cmap=cmap), ax=axes, shrink=0.6, label=("log10 " if log else "") + _label(metric))
    return fig


def _panel_title(label: str, data: SurfaceData) -> str:
    import textwrap

    lines = [label, *textwrap.wrap(describe(data), 60)]
    done, total = data.progress
    if done < total:
        lines.append(f"partial: {done}/{total} points computed")
    return "\n".join(lines)


def _shared_quantities(surfaces) -> list[str]:
    """The quantities (loss, acc) whose curves every surface has, for some split."""
    return [q for q in ("loss", "acc") if all(any(quantity_of(m) == q for m in _metrics(data)) for _, data in surfaces)]


def _compare_curves(surfaces, quantity: str, style: "_Style", band: bool) -> Figure:
    """Every surface's curves of ``quantity`` on one axes: a colour per surface (per label with
    ``band``), train solid and test dashed."""
    fig = Figure(figsize=(7.2, 4.8), layout="constrained")
    ax = fig.add_subplot()
    _axes_labels(ax, surfaces[0][1])
    log = style.log and quantity == "loss"
    groups: dict[tuple[str, int], list[SurfaceData]] = {}  # (label, which): with band, one group per label
    for label, data in surfaces:
        groups.setdefault((label, 0) if band else (label, len(groups)), []).append(data)
    for k, ((label, _), members) in enumerate(groups.items()):
        colour = _SURFACE_COLOURS[k % len(_SURFACE_COLOURS)]
        for split in SPLITS:
            metric = measurement_name(split, quantity)
            if not all(metric in data.metrics for data in members):
                continue
            first = members[0]
            order = _curves(first)[0][1]
            x = first.x[order]
            if band and len(members) > 1:
                if any(not np.array_equal(m.x, first.x) for m in members[1:]):
                    raise UserError(f"--band: the repeats of {label!r} are not on the same points; they cannot be averaged")
                stack = np.stack([_masked(m, metric, log).filled(np.nan)[order] for m in members])
                mean = np.nanmean(stack, axis=0)
                spread = np.nanstd(stack, axis=0)
                ax.plot(x, mean, color=colour, linestyle=_LINE_STYLES[split],
                        label=f"{label}: {split} {LABELS[quantity]}, mean of {len(members)}")  # fmt: skip
                ax.fill_between(x, mean - spread, mean + spread, color=colour, alpha=0.2, linewidth=0,
                                label=f"{label}: {split}, ± 1 standard deviation")  # fmt: skip
            else:
                values = _masked(first, metric, log)[order]
                ax.plot(x, values, color=colour, linestyle=_LINE_STYLES[split], marker="o", markersize=2.5,
                        label=f"{label}: {split} {LABELS[quantity]}")  # fmt: skip
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(("loss" if quantity == "loss" else LABELS[quantity]) + (" (log scale)" if log else ""))
    if quantity == "loss":
        ax.set_ylim(bottom=style.vmin if style.vmin is not None else (None if log else 0.0), top=style.vmax)
    else:
        ax.set_ylim(0, 100)
    for label, at in markers(surfaces[0][1]):
        if len(at) == 1:
            ax.axvline(at[0], color="grey", linewidth=0.6, linestyle=":")
    ax.legend(fontsize=7, loc="best")
    what = "loss" if quantity == "loss" else "accuracy"
    ax.set_title(f"{what} of {len(surfaces)} surfaces" + (" (repeats as mean and spread)" if band else "")
                 + "\n" + describe(surfaces[0][1]), fontsize=9)  # fmt: skip
    return fig


def _save(fig: Figure, out: Path, force: bool) -> Path:
    """Write ``fig`` to ``out``, marked as ours in its metadata (an existing picture is replaced only
    where it carries the mark, or with ``force``: see :func:`~.storage.atomic.write_atomically`)."""
    fmt = out.suffix.lstrip(".")
    metadata = {_MARK_KEYS[fmt]: f"{MARK} {__version__}"}
    return write_atomically(out, lambda temporary: fig.savefig(temporary, format=fmt, dpi=DPI, metadata=metadata),
                            ours=carries_mark, force=force, who="dsurf plot", flag="--out-dir")  # fmt: skip


# Where each format's metadata names the program that wrote it.
_MARK_KEYS = {"png": "Software", "pdf": "Creator", "svg": "Creator"}


__all__: Sequence[str] = ("plot_surface", "draw", "compare_pictures", "default_out_dir", "PICTURES", "FORMATS", "describe")
