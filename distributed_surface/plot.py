"""Pictures of a surface file, drawn from the file alone (matplotlib, no screen needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .errors import UserError  # noqa: E402
from .storage import SurfaceData, read_surface  # noqa: E402


def default_out_dir(path: str) -> Path:
    surface = Path(path)
    return surface.with_name(surface.stem + "_plots")


def plot_surface(path: str, out_dir: str | None = None) -> list[Path]:
    """Draw the surface in ``path``: contours of loss and accuracy for 2D, a loss-and-accuracy curve for
    1D. Points not computed yet are left blank. Returns the files written."""
    data = read_surface(path)
    if not np.any(data.done):
        raise UserError(f"{path!r}: no point is computed yet, nothing to plot")
    target = Path(out_dir) if out_dir else default_out_dir(path)
    target.mkdir(parents=True, exist_ok=True)
    stem = Path(path).stem
    if data.y is None:
        return [_curve(data, target / f"{stem}_1d_loss_acc.png")]
    return [
        _contour(data, name, target / f"{stem}_2d_contour_{name}.png") for name in ("train_loss", "train_acc")
        if name in data.metrics
    ]


def _title(data: SurfaceData, what: str) -> str:
    model = str(data.config.get("model", "?")).rsplit(":", 1)[-1]
    done, total = data.progress
    partial = "" if done == total else f" — partial: {done}/{total} points ({data.status})"
    return (
        f"{what} of {model}, {data.config.get('norm')}-normalised directions, "
        f"{data.attrs.get('num_samples')} samples{partial}"
    )


def _masked(data: SurfaceData, name: str) -> np.ma.MaskedArray:
    values = data.metrics[name]
    return np.ma.masked_where((data.done == 0) | ~np.isfinite(values), values)


def _contour(data: SurfaceData, name: str, out: Path) -> Path:
    z = _masked(data, name).T  # rows of the picture are y
    x, y = np.meshgrid(data.x, data.y)
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    if len(data.x) > 1 and len(data.y) > 1 and z.count() >= 4:
        filled = ax.contourf(x, y, z, levels=30, cmap="viridis")
        lines = ax.contour(x, y, z, levels=12, colors="white", linewidths=0.6)
        ax.clabel(lines, fontsize=7, fmt="%.3g")
        fig.colorbar(filled, ax=ax, label=name)
    else:
        mesh = ax.pcolormesh(x, y, z, cmap="viridis", shading="nearest")
        fig.colorbar(mesh, ax=ax, label=name)
    ax.plot([0], [0], marker="*", color="red", markersize=10, label="θ0")
    ax.set_xlabel("x (direction 1)")
    ax.set_ylabel("y (direction 2)")
    ax.set_title(_title(data, name), fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _curve(data: SurfaceData, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    loss = _masked(data, "train_loss")
    ax.plot(data.x, loss, color="tab:blue", marker=".", label="train loss")
    ax.set_xlabel("x (direction 1)")
    ax.set_ylabel("loss", color="tab:blue")
    if "train_acc" in data.metrics:
        twin = ax.twinx()
        twin.plot(data.x, _masked(data, "train_acc"), color="tab:red", marker=".", label="train accuracy")
        twin.set_ylabel("accuracy (%)", color="tab:red")
        twin.set_ylim(0, 100)
    ax.set_title(_title(data, "train loss and accuracy"), fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
