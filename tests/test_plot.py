"""``dsurf plot``: every kind of picture of 2D, 1D, partial and paper-format surface files, the options,
and bad input. The surfaces are the built-in example's, made once per session with the real CLI."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from matplotlib import colors
from matplotlib.collections import QuadMesh
from matplotlib.image import imread

from distributed_surface import cli, plot
from distributed_surface.storage import read_any_surface
from distributed_surface.storage import Status, read_surface
from helpers import PNG_SIGNATURE, assert_one_line_error

NX, NY, SAMPLES = 5, 4, 100
KINDS_2D = ("2d_contour", "2d_contourf", "2d_heatmap", "3d_surface")


# ---------------------------------------------------------------- surfaces, made once


def make_surfaces(root: Path) -> dict[str, Path]:
    """The built-in example's surfaces under ``root``: full 2D (5x4), 1D (7 points), a partial 2D copy
    (interrupted, the last 9 points not done), a 1D copy with test values, and paper-format files."""
    root.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        common = ["--max-samples", str(SAMPLES), "--no-plot", "--no-progress"]
        assert cli.main(["run", "--x=-1:1:5", "--y=-1:1:4", "--out", "s2.h5", *common]) == 0
        assert cli.main(["run", "--x=-1:1:7", "--out", "s1.h5", *common]) == 0
        test = ["--test-data", "distributed_surface.example:digits_test_data", "--max-test-samples", str(SAMPLES)]
        assert cli.main(["run", "--x=-1:1:7", "--out", "s1_test.h5", *test, *common]) == 0
    files = {"2d": root / "s2.h5", "1d": root / "s1.h5"}

    files["partial"] = root / "partial.h5"
    shutil.copy(files["2d"], files["partial"])
    with h5py.File(files["partial"], "r+") as f:
        done = f["done"][()]
        done.ravel()[NX * NY - 9 :] = 0
        f["done"][...] = done
        for name in ("train_loss", "train_acc"):
            values = f[name][()]
            values[done == 0] = np.nan
            f[name][...] = values
        f.attrs["status"] = "interrupted"

    files["1d_test"] = root / "s1_test.h5"

    full = read_surface(str(files["2d"]))
    files["legacy"] = root / "paper.h5"
    write_paper_file(files["legacy"], full.x, full.y, full.metrics["train_loss"], full.metrics["train_acc"], computed=14)
    one = read_surface(str(files["1d"]))
    files["legacy_1d"] = root / "paper1d.h5"
    write_paper_file(files["legacy_1d"], one.x, None, one.metrics["train_loss"], one.metrics["train_acc"], computed=5, fill=0.0)
    return files


def write_paper_file(path, x, y, loss, acc, computed=None, fill=-1.0, test=None):
    """A surface file as the paper's code (loss-landscape, plot_surface.py) writes it: arrays of shape
    (nx, ny) filled with -1, then ``losses.ravel()[ind] = value`` with ``ind`` the index into
    ``np.meshgrid(x, y)`` (y-major), the first ``computed`` points done; ``loss[i, j]`` here is the value
    at (x[i], y[j])."""
    shape = (len(x),) if y is None else (len(x), len(y))
    out = {name: np.full(shape, fill) for name in ("train_loss", "train_acc")}
    if test is not None:
        out.update({name: np.full(shape, fill) for name in ("test_loss", "test_acc")})
    total = int(np.prod(shape))
    for ind in range(total if computed is None else computed):
        i, j = (ind, None) if y is None else (ind % len(x), ind // len(x))
        where = i if y is None else (i, j)
        out["train_loss"].ravel()[ind] = loss[where]
        out["train_acc"].ravel()[ind] = acc[where]
        if test is not None:
            out["test_loss"].ravel()[ind] = test[0][where]
            out["test_acc"].ravel()[ind] = test[1][where]
    with h5py.File(path, "w") as f:
        f["dir_file"] = "resnet56/model_300.t7_weights_xignore=biasbn_xnorm=filter_yignore=biasbn_ynorm=filter.h5"
        f["xcoordinates"] = np.asarray(x, dtype=np.float64)
        if y is not None:
            f["ycoordinates"] = np.asarray(y, dtype=np.float64)
        for name, values in out.items():
            f[name] = values


@pytest.fixture(scope="session")
def surfaces(tmp_path_factory):
    return make_surfaces(tmp_path_factory.getbasetemp() / "plot_surfaces")


@pytest.fixture
def files(surfaces, tmp_path):
    """The session's surfaces, copied into this test's tmp_path (pictures are written next to them)."""
    return {key: Path(shutil.copy(path, tmp_path / path.name)) for key, path in surfaces.items()}


def check_pictures(paths, fmt="png"):
    """Each file is a real picture of its format, not blank, and all differ."""
    digests = set()
    for path in paths:
        data = Path(path).read_bytes()
        if fmt == "png":
            assert data[:8] == PNG_SIGNATURE, path
            pixels = imread(path)
            assert pixels.shape[0] > 300 and pixels.shape[1] > 300, (path, pixels.shape)
            assert pixels[..., :3].std() > 0.05, f"{path} looks blank"
        elif fmt == "pdf":
            assert data[:5] == b"%PDF-" and data.rstrip().endswith(b"%%EOF"), path
        else:
            assert data.lstrip().startswith(b"<?xml") and b"<svg" in data[:2000] and data.rstrip().endswith(b"</svg>")
        digests.add(hashlib.sha256(data).hexdigest())
    assert len(digests) == len(paths), "two pictures are identical"


# ---------------------------------------------------------------- the default pictures


def test_default_2d_pictures(dsurf, files, tmp_path):
    rc, out, err = dsurf("plot", files["2d"].name)
    assert rc == 0 and err == "", err
    expected = [f"s2_{kind}_{metric}.png" for kind in KINDS_2D for metric in ("train_loss", "train_acc")]
    written = out.split()
    assert [Path(p).name for p in written] == expected
    assert all(Path(p).parent.name == "s2_plots" for p in written)
    assert sorted(p.name for p in (tmp_path / "s2_plots").iterdir()) == sorted(expected)
    check_pictures([tmp_path / p for p in written])


def test_default_1d_picture(dsurf, files, tmp_path):
    rc, out, err = dsurf("plot", files["1d"].name, "--out-dir", "pics")
    assert rc == 0 and err == "", err
    assert out.split() == [str(Path("pics") / "s1_1d_loss_acc.png")]
    check_pictures([tmp_path / "pics" / "s1_1d_loss_acc.png"])


def test_plot_surface_as_run_calls_it(files):
    # cli.command_run calls plot_surface(path, None): default folder next to the file
    pictures = plot.plot_surface(str(files["2d"]), None)
    assert len(pictures) == 8 and all(p.parent == files["2d"].with_name("s2_plots") for p in pictures)
    assert all(p.is_file() for p in pictures)


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_formats(dsurf, files, tmp_path, fmt):
    rc, out, err = dsurf("plot", files["2d"].name, "--kind", "contour,surface", "--format", fmt)
    assert rc == 0 and err == "", err
    written = [tmp_path / p for p in out.split()]
    assert [p.name for p in written] == [
        f"s2_2d_contour_train_loss.{fmt}", f"s2_2d_contour_train_acc.{fmt}",
        f"s2_3d_surface_train_loss.{fmt}", f"s2_3d_surface_train_acc.{fmt}",
    ]  # fmt: skip
    check_pictures(written, fmt)


def test_kind_selects_pictures(dsurf, files, tmp_path):
    rc, out, err = dsurf("plot", files["2d"].name, "--kind", "heatmap", "--kind", "contourf")
    assert rc == 0, err
    assert [Path(p).name for p in out.split()] == [
        "s2_2d_heatmap_train_loss.png", "s2_2d_heatmap_train_acc.png",
        "s2_2d_contourf_train_loss.png", "s2_2d_contourf_train_acc.png",
    ]  # fmt: skip
    rc, out, err = dsurf("plot", files["1d"].name, "--kind", "curve")
    assert rc == 0 and [Path(p).name for p in out.split()] == ["s1_1d_loss_acc.png"]


def test_log_pictures(dsurf, files, tmp_path):
    rc, out, err = dsurf("plot", files["2d"].name, "--kind", "contour", "--log")
    assert rc == 0 and err == "", err
    # the loss is drawn on a log scale (and says so in its name); accuracy is not
    assert [Path(p).name for p in out.split()] == ["s2_2d_contour_train_loss_log.png", "s2_2d_contour_train_acc.png"]
    linear = plot.plot_surface(str(files["2d"]), str(tmp_path / "lin"), pictures="contour")[0]
    assert (tmp_path / out.split()[0]).read_bytes() != linear.read_bytes()
    data = read_any_surface(str(files["2d"]))
    style = plot._Style(vmin=None, vmax=None, step=None, log=True)
    levels, norm, log = style.scale("train_loss", data.metrics["train_loss"].ravel())
    assert log and isinstance(norm, colors.LogNorm) and np.all(levels > 0)
    ratios = levels[1:] / levels[:-1]
    assert np.all(ratios > 1.1)  # spaced multiplicatively, not by a constant step
    rc, out, err = dsurf("plot", files["1d"].name, "--log")
    assert rc == 0 and err == "" and out.split()[0].endswith("s1_1d_loss_acc_log.png")
    figure = plot._curve(read_any_surface(str(files["1d"])), plot._Style(vmin=None, vmax=None, step=None, log=True))
    assert figure.axes[0].get_yscale() == "log"


# ---------------------------------------------------------------- what the pictures hold


def contour_levels(figure):
    sets = [c for c in figure.axes[0].collections if hasattr(c, "levels")]
    assert sets, "no contour drawn"
    return np.asarray(sets[0].levels)


def test_default_loss_levels_follow_the_paper(files):
    data = read_any_surface(str(files["2d"]))
    loss = data.metrics["train_loss"]
    figure = plot._contour(data, "train_loss", plot._Style(vmin=None, vmax=None, step=None, log=False))
    levels = contour_levels(figure)
    # round values, evenly spaced, within the data (and not above the paper's vmax of 10)
    assert levels.min() >= loss.min() and levels.max() <= min(loss.max(), 10.0)
    steps = np.diff(levels)
    assert len(levels) >= 3 and np.allclose(steps, steps[0])
    assert np.allclose(levels / steps[0], np.round(levels / steps[0]))
    assert figure.axes[0].texts, "contour lines carry labels"


def test_vmin_vmax_levels(files):
    data = read_any_surface(str(files["2d"]))
    figure = plot._contour(data, "train_loss", plot._Style(vmin=0.5, vmax=2.0, step=0.5, log=False))
    levels = contour_levels(figure)
    loss = data.metrics["train_loss"]
    expected = [v for v in (0.5, 1.0, 1.5, 2.0) if loss.min() <= v <= loss.max()]
    assert np.allclose(levels, expected)
    heat = plot._heatmap(data, "train_loss", plot._Style(vmin=0.5, vmax=2.0, step=None, log=False))
    mesh = next(c for c in heat.axes[0].collections if isinstance(c, QuadMesh))
    assert mesh.norm.vmin == 0.5 and mesh.norm.vmax == 2.0
    # accuracy pictures span their own data, whatever the loss range given
    acc = plot._heatmap(data, "train_acc", plot._Style(vmin=0.5, vmax=2.0, step=None, log=False))
    mesh = next(c for c in acc.axes[0].collections if isinstance(c, QuadMesh))
    assert mesh.norm.vmin == data.metrics["train_acc"].min() and mesh.norm.vmax == data.metrics["train_acc"].max()


def test_titles_and_axes(files):
    data = read_any_surface(str(files["2d"]))
    figure = plot._contourf(data, "train_loss", plot._Style(vmin=None, vmax=None, step=None, log=False))
    ax = figure.axes[0]
    title = ax.get_title()
    assert "train loss" in title and "trained_digits_cnn" in title and "filter" in title and f"{SAMPLES} samples" in title
    assert "partial" not in title
    assert "d1" in ax.get_xlabel() and "d2" in ax.get_ylabel()
    assert ax.get_xlim() == (-1.0, 1.0) and ax.get_ylim() == (-1.0, 1.0)
    surface = plot._surface3d(data, "train_acc", plot._Style(vmin=None, vmax=None, step=None, log=False))
    ax3 = surface.axes[0]
    assert ax3.name == "3d" and "accuracy" in ax3.get_zlabel() and "train accuracy" in ax3.get_title()


def test_1d_train_and_test(dsurf, files, tmp_path):
    rc, out, err = dsurf("plot", files["1d_test"].name)
    assert rc == 0 and err == "", err
    check_pictures([tmp_path / out.split()[0]])
    data = read_any_surface(str(files["1d_test"]))
    assert set(data.metrics) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    figure = plot._curve(data, plot._Style(vmin=None, vmax=None, step=None, log=False))
    loss_axis, acc_axis = figure.axes
    lines = {line.get_label(): line for line in loss_axis.get_lines() + acc_axis.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"train loss", "test loss", "train accuracy", "test accuracy"}
    assert lines["test loss"].get_linestyle() == "--" and lines["train loss"].get_linestyle() == "-"
    np.testing.assert_allclose(np.asarray(lines["test loss"].get_ydata()), data.metrics["test_loss"])
    assert acc_axis.get_ylim() == (0.0, 100.0)
    # train only: two lines
    only = plot._curve(read_any_surface(str(files["1d"])), plot._Style(vmin=None, vmax=None, step=None, log=False))
    labels = [line.get_label() for ax in only.axes for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["train loss", "train accuracy"]


# ---------------------------------------------------------------- partial and paper-format files


def test_partial_surface_plots_what_is_done(dsurf, files, tmp_path):
    rc, out, err = dsurf("plot", files["partial"].name)
    assert rc == 0 and err == "", err
    written = [tmp_path / p for p in out.split()]
    assert len(written) == 8
    check_pictures(written)
    data = read_any_surface(str(files["partial"]))
    assert data.progress == (NX * NY - 9, NX * NY)
    for draw in (plot._contour, plot._contourf, plot._heatmap, plot._surface3d):
        figure = draw(data, "train_loss", plot._Style(vmin=None, vmax=None, step=None, log=False))
        assert "partial: 11/20 points computed (interrupted)" in figure.axes[0].get_title()
    heat = plot._heatmap(data, "train_loss", plot._Style(vmin=None, vmax=None, step=None, log=False))
    mesh = next(c for c in heat.axes[0].collections if isinstance(c, QuadMesh))
    shown = np.ma.getmaskarray(mesh.get_array()).reshape(NY, NX)  # picture rows are y
    np.testing.assert_array_equal(shown, (data.done == 0).T)  # exactly the points not done are blank
    # a partial copy differs from the full surface's pictures
    full = plot.plot_surface(str(files["2d"]), str(tmp_path / "full"), pictures="heatmap")
    assert full[0].read_bytes() != written[4].read_bytes()


def test_running_file_with_one_point_plots(files, tmp_path):
    path = files["partial"]
    with h5py.File(path, "r+") as f:
        done = f["done"][()]
        done[...] = 0
        done[2, 1] = 1
        f["done"][...] = done
        f.attrs["status"] = "running"
    pictures = plot.plot_surface(str(path), str(tmp_path / "one"))
    assert len(pictures) == 8 and all(p.read_bytes()[:8] == PNG_SIGNATURE for p in pictures)
    data = read_any_surface(str(path))
    title = plot._heatmap(data, "train_loss", plot._Style(vmin=None, vmax=None, step=None, log=False)).axes[0].get_title()
    assert "1/20 points computed (running)" in title


def test_paper_file_is_read_in_its_layout(files, tmp_path):
    # a non-square grid and a function that is not symmetric: a wrong reordering could not pass
    x, y = np.linspace(-1, 1, 5), np.linspace(-0.5, 1.0, 3)
    xi, yj = np.meshgrid(x, y, indexing="ij")
    loss, acc = 1.0 + xi + 3 * yj**2 + 2 * xi * yj + 2, 50 + 10 * xi - 5 * yj
    write_paper_file(tmp_path / "p.h5", x, y, loss, acc, computed=11, test=(2 * loss, acc / 2))
    data = read_any_surface(str(tmp_path / "p.h5"))
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.y, y)
    # the paper's order is y-major: its first 11 points are all of y[0], y[1] and one of y[2]
    expected_done = np.zeros((5, 3), dtype=np.uint8)
    expected_done[:, 0] = expected_done[:, 1] = 1
    expected_done[0, 2] = 1
    np.testing.assert_array_equal(data.done, expected_done)
    np.testing.assert_array_equal(data.metrics["train_loss"], np.where(expected_done, loss, np.nan))
    np.testing.assert_array_equal(data.metrics["train_acc"], np.where(expected_done, acc, np.nan))
    np.testing.assert_array_equal(data.metrics["test_loss"], np.where(expected_done, 2 * loss, np.nan))
    assert data.status == Status.INTERRUPTED and data.config["norm"] == "filter"  # (points left: see storage/paper.py)
    pictures = plot.plot_surface(str(tmp_path / "p.h5"), str(tmp_path / "pp"))
    assert len(pictures) == 18  # 4 kinds x train/test loss/acc, and the loss and accuracy gaps
    check_pictures(pictures)


def test_paper_files_plot(dsurf, files, tmp_path):
    rc, out, err = dsurf("plot", files["legacy"].name)
    assert rc == 0 and err == "", err
    check_pictures([tmp_path / p for p in out.split()])
    data = read_any_surface(str(files["legacy"]))
    full = read_any_surface(str(files["2d"]))
    assert data.progress == (14, 20)  # -1 marks the points the paper's code had not computed
    np.testing.assert_array_equal(data.metrics["train_loss"][data.done == 1], full.metrics["train_loss"][data.done == 1])
    title = plot._contour(data, "train_loss", plot._Style(vmin=None, vmax=None, step=None, log=False)).axes[0].get_title()
    assert "paper.h5 (loss-landscape file)" in title and "filter-normalised" in title and "14/20" in title
    # 1D, zero-filled: loss 0 with accuracy 0 is "not computed"
    rc, out, err = dsurf("plot", files["legacy_1d"].name)
    assert rc == 0 and err == "", err
    one = read_any_surface(str(files["legacy_1d"]))
    np.testing.assert_array_equal(one.done, [1, 1, 1, 1, 1, 0, 0])
    assert np.isnan(one.metrics["train_loss"][5:]).all()


def test_paper_file_without_missing_points_is_complete(tmp_path):
    x = np.linspace(-1, 1, 4)
    write_paper_file(tmp_path / "c.h5", x, x, np.ones((4, 4)), np.full((4, 4), 90.0))
    data = read_any_surface(str(tmp_path / "c.h5"))
    assert data.status == "complete" and data.progress == (16, 16)


def test_degenerate_grid_all_kinds(dsurf, surfaces, tmp_path, monkeypatch):
    rc, _, err = dsurf(
        "run", "--x=-1:1:3", "--y=0:0:1", "--max-samples", "50", "--out", "line.h5", "--no-plot", "--no-progress"
    )
    assert rc == 0, err
    rc, out, err = dsurf("plot", "line.h5")
    assert rc == 0 and err == "", err
    assert len(out.split()) == 8
    for picture in out.split():
        assert (tmp_path / picture).read_bytes()[:8] == PNG_SIGNATURE


# ---------------------------------------------------------------- bad input


def test_bad_files(dsurf, files, tmp_path):
    (tmp_path / "text.h5").write_text("not hdf5\n")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.arange(3)
    for name, needle in [("missing.h5", "no such file"), ("text.h5", "HDF5"), ("other.h5", "not a distributed_surface")]:
        rc, out, err = dsurf("plot", name)
        assert_one_line_error(rc, out, err, name, needle)
    assert not list(tmp_path.glob("*_plots"))


@pytest.mark.parametrize(
    "key,args,needles",
    [
        ("2d", ["--kind", "curve"], ["curve", "2D"]),
        ("1d", ["--kind", "heatmap"], ["heatmap", "1D"]),
        ("2d", ["--kind", "contour,bogus"], ["bogus", "contour, contourf, heatmap, surface, gap, curvature, curve"]),
        ("2d", ["--format", "jpg"], ["jpg", "png, pdf, svg"]),
        ("2d", ["--vmin", "2", "--vmax", "1"], ["--vmin", "--vmax"]),
        ("2d", ["--levels", "0"], ["--levels"]),
        ("2d", ["--levels", "1e-9"], ["--levels", "contour levels"]),
        ("2d", ["--log", "--vmin", "-1"], ["--log", "positive"]),
        ("2d", ["--vmin", "abc"], ["--vmin", "abc"]),
        ("2d", ["--vmax", "nan"], ["--vmax", "finite"]),
    ],
)
def test_bad_options(dsurf, files, tmp_path, key, args, needles):
    rc, out, err = dsurf("plot", files[key].name, *args)
    assert_one_line_error(rc, out, err, *needles)


def test_nothing_computed(dsurf, files, tmp_path):
    with h5py.File(files["partial"], "r+") as f:
        f["done"][...] = 0
    rc, out, err = dsurf("plot", files["partial"].name)
    assert_one_line_error(rc, out, err, "partial.h5", "nothing to plot")
    assert not (tmp_path / "partial_plots").exists()


def test_out_dir_that_is_a_file(dsurf, files, tmp_path):
    (tmp_path / "taken").write_text("x")
    rc, out, err = dsurf("plot", files["2d"].name, "--out-dir", "taken")
    assert_one_line_error(rc, out, err, "taken", "not a directory")


def test_package_imports_without_matplotlib_loaded():
    code = (
        "import sys, distributed_surface, distributed_surface.cli, distributed_surface.export, "
        "distributed_surface.storage.paper; print('matplotlib' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_blown_up_values_plot(files, tmp_path):
    # a model that diverges far from θ0 gives inf (or NaN) at computed points: drawn blank, no warning
    import warnings

    with h5py.File(files["2d"], "r+") as f:
        loss = f["train_loss"][()]
        loss[-2:, :] = np.inf
        loss[0, 0] = np.nan
        f["train_loss"][...] = loss
        f["train_acc"][...] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pictures = plot.plot_surface(str(files["2d"]), str(tmp_path / "inf"))
        pictures += plot.plot_surface(str(files["2d"]), str(tmp_path / "inf"), log=True, pictures=["contour", "surface"])
    assert len(pictures) == 12 and all(p.read_bytes()[:8] == PNG_SIGNATURE for p in pictures)
