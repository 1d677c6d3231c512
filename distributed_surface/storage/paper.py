"""Reading any surface file for pictures and exports: this package's own, or one written by the paper's
original code (loss-landscape, Li et al. 2018), so that its users can re-plot and export old results.

The paper's files hold ``xcoordinates``, optional ``ycoordinates``, ``train_loss``, ``train_acc`` and
maybe ``test_loss``/``test_acc``, and no ``format``, ``done`` or ``config``. Two differences matter:

* Layout. The paper's code fills its 2D arrays through ``losses.ravel()[ind]`` with ``ind`` an index
  into ``np.meshgrid(xcoordinates, ycoordinates)`` (scheduler.py, plot_surface.py), and plots them against
  that meshgrid: its flat order is y-major, the value at ``(x[i], y[j])`` sits at flat index
  ``j * nx + i``. This package stores ``train_loss[i, j]`` at ``(x[i], y[j])``, so 2D arrays are
  reordered on reading (``ravel().reshape(ny, nx).T``; a plain transpose for square grids).
* Not-computed points. The paper's code starts from ``-1`` everywhere and recomputes any value ``<= 0``;
  other copies start from zeros. A point counts as not computed where its loss is NaN or negative, or
  where loss and accuracy are both exactly 0; everything else is computed. Such points become NaN here
  and ``done`` is 0 there, as in this package's own files.

matplotlib is not imported.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from ..core.measurements import SPLITS, TRAIN, measurement_name
from ..core.errors import UserError
from .layout import FORMAT, RUN_DTYPE, TIMING_DTYPE, plain
from .read import SurfaceData, read_surface
from .status import Status

LEGACY_FORMAT = "loss-landscape"
# The paper's code stores the loss and accuracy of its splits.
_PAPER_NAMES = re.compile(f"({'|'.join(SPLITS)})_(loss|acc)")


def read_any_surface(path: str) -> SurfaceData:
    """Read a surface file of this package or of the paper's code.

    Raises :class:`UserError` for a missing file, a file that is not HDF5, or an HDF5 file that is
    neither kind of surface."""
    path = str(path)
    if not Path(path).is_file():
        raise UserError(f"{path!r}: no such file")
    try:
        f = h5py.File(path, "r", locking=False)  # a run may be writing it
    except OSError as exc:
        raise UserError(f"{path!r} is not a readable HDF5 file ({exc})") from None
    with f:
        kind = plain(f.attrs.get("format"))
        if kind is None and "xcoordinates" in f and measurement_name(TRAIN, "loss") in f:
            return _read_legacy(f, path)
        if kind != FORMAT:
            raise UserError(
                f"{path!r} is not a distributed_surface file, nor a loss-landscape surface file "
                f"(one with xcoordinates and {measurement_name(TRAIN, 'loss')})"
            )
    try:
        data = read_surface(path)
    except (KeyError, ValueError, OSError) as exc:
        raise UserError(f"{path!r}: damaged surface file ({exc})") from None
    data.attrs.setdefault("source", FORMAT)
    return data


def is_legacy(data: SurfaceData) -> bool:
    return data.attrs.get("format") == LEGACY_FORMAT


def _read_legacy(f: h5py.File, path: str) -> SurfaceData:
    x = _coordinates(f, "xcoordinates", path)
    y = _coordinates(f, "ycoordinates", path) if "ycoordinates" in f else None
    shape = (len(x),) if y is None else (len(x), len(y))
    raw = {}
    for name in f:
        obj = f[name]
        if not isinstance(obj, h5py.Dataset) or not _PAPER_NAMES.fullmatch(name):
            continue
        values = np.asarray(obj[()], dtype=np.float64)
        if values.size != int(np.prod(shape)):
            raise UserError(f"{path!r}: {name} has {values.size} values, the grid {shape} needs {np.prod(shape)}")
        # The paper's flat order is y-major (see the module's docstring).
        raw[name] = values.reshape(shape) if y is None else values.ravel().reshape(len(y), len(x)).T
    metrics, done = {}, None
    for split in SPLITS:
        loss_name, acc_name = measurement_name(split, "loss"), measurement_name(split, "acc")
        loss, acc = raw.get(loss_name), raw.get(acc_name)
        if loss is None:
            continue
        computed = np.isfinite(loss) & (loss >= 0)
        if acc is not None:
            computed &= ~((loss == 0) & (acc == 0)) & np.isfinite(acc)
        metrics[loss_name] = np.where(computed, loss, np.nan)
        if acc is not None:
            metrics[acc_name] = np.where(computed, acc, np.nan)
        if split == TRAIN:
            done = computed.astype(np.uint8)
    assert done is not None  # train_loss is there: checked by the caller
    config = {"model": Path(path).name}
    dir_file = plain(f["dir_file"][()]) if isinstance(f.get("dir_file"), h5py.Dataset) else None
    if isinstance(dir_file, str):
        config["dir_file"] = dir_file
        norm = re.search(r"xnorm=([a-z]+)", dir_file)
        if norm:
            config["norm"] = norm.group(1)
        if "states" in Path(dir_file).name:
            config["dir_type"] = "states"
    # The paper's files record no status. One with points left was stopped before its last point (its
    # code writes as it goes), as an interrupted run of ours is; no run of ours writes it, so it is not
    # running, and nothing says its run failed.
    status = Status.COMPLETE if np.all(done) else Status.INTERRUPTED
    return SurfaceData(
        path=path,
        attrs={"format": LEGACY_FORMAT, "source": LEGACY_FORMAT, "status": status.value},
        config=config,
        x=x,
        y=y,
        metrics=metrics,
        done=done,
        timings=np.zeros(0, dtype=TIMING_DTYPE),
        runs=np.zeros(0, dtype=RUN_DTYPE),
    )


def _coordinates(f: h5py.File, name: str, path: str) -> np.ndarray:
    obj = f[name]
    values = np.asarray(obj[()], dtype=np.float64) if isinstance(obj, h5py.Dataset) else None
    if values is None or values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise UserError(f"{path!r}: {name} is not a list of finite coordinates")
    return values

