"""``dsurf compare``: surfaces side by side on one scale, 1D curves overlaid (and as bands of repeats),
the table, the refusal of surfaces that do not compare, and the checkpoints labelled in pictures.
The surfaces are the built-in example's (small grids), made once per session; others are copies of
them with their values or directions' record changed."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from matplotlib.collections import QuadMesh

from distributed_surface import cli, plot
from distributed_surface.compare import differences
from distributed_surface.storage import read_surface
from distributed_surface.table import table_rows
from helpers import PNG_SIGNATURE, assert_one_line_error

SAMPLES = 100


def scaled_copy(source: Path, target: Path, factor: float, offset: float = 0.0) -> Path:
    """A copy of ``source`` with its losses multiplied by ``factor`` and raised by ``offset``: another
    surface on the same grid and directions."""
    shutil.copy(source, target)
    with h5py.File(target, "r+") as f:
        for name in [n for n in f if n.endswith("_loss")]:
            f[name][...] = f[name][()] * factor + offset
    return target


def set_direction_attr(path: Path, key: str, value: str) -> None:
    with h5py.File(path, "r+") as f:
        f["directions"].attrs[key] = value


@pytest.fixture(scope="session")
def made(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "compare_surfaces"
    root.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        common = ["--max-samples", str(SAMPLES), "--no-plot", "--no-progress"]
        assert cli.main(["run", "--x=-1:1:5", "--y=-1:1:5", "--out", "a.h5", *common]) == 0
        assert cli.main(["run", "--x=-1:1:5", "--y=-1:1:3", "--out", "other_grid.h5", *common]) == 0
        assert cli.main(["run", "--x=-1:1:7", "--out", "line.h5", *common]) == 0
    return root


@pytest.fixture
def files(made, tmp_path):
    out = {name: Path(shutil.copy(made / f"{name}.h5", tmp_path / f"{name}.h5")) for name in ("a", "other_grid", "line")}
    out["b"] = scaled_copy(out["a"], tmp_path / "b.h5", 2.0, 0.5)
    return out


def test_two_surfaces_on_one_scale_with_their_table(dsurf, files, tmp_path):
    rc, out, err = dsurf("compare", "a.h5", "b.h5", "--out-dir", "cmp")
    assert rc == 0 and err == "", err
    written = out.split()
    kinds = ("2d_contour", "2d_contourf", "2d_heatmap", "3d_surface")
    assert written == [f"cmp/compare_{k}_{m}.png" for k in kinds for m in ("train_loss", "train_acc")] + [
        "cmp/compare_table.md", "cmp/compare_table.csv"]  # fmt: skip
    for name in written[:-2]:
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE
    a, b = read_surface(str(files["a"])), read_surface(str(files["b"]))
    with open(tmp_path / "cmp/compare_table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["surface"], r["measurement"]) for r in rows] == [("a", "train_loss"), ("b", "train_loss")]
    for row, data in zip(rows, (a, b)):
        loss = data.metrics["train_loss"]
        assert float(row["loss at θ0"]) == loss[2, 2]  # x = y = 0 is the grid's middle point
        assert float(row["grid minimum"]) == loss.min() and float(row["grid maximum"]) == loss.max()
    markdown = (tmp_path / "cmp/compare_table.md").read_text()
    assert "| surface | measurement | points done | loss at θ0 |" in markdown and "| b | train_loss | 25/25 |" in markdown


def test_the_panels_share_one_colour_norm_and_one_set_of_levels(files):
    a, b = read_surface(str(files["a"])), read_surface(str(files["b"]))
    style = plot._Style(vmin=None, vmax=None, step=None, log=False)
    figure = plot._compare_2d([("a", a), ("b", b)], "contourf", "train_loss", style)
    sets = [c for ax in figure.axes for c in ax.collections if hasattr(c, "levels") and c.filled]
    assert len(sets) == 2
    assert np.array_equal(sets[0].levels, sets[1].levels)
    assert sets[0].norm.vmin == sets[1].norm.vmin == min(a.metrics["train_loss"].min(), b.metrics["train_loss"].min())
    assert sets[0].norm.vmax == sets[1].norm.vmax == plot.LOSS_CAP  # both exceed the paper's cap of 10
    # each surface alone would have had another scale: b's minimum is above a's
    alone = style.scale("train_loss", b.metrics["train_loss"].ravel())[1]
    assert alone.vmin > sets[0].norm.vmin
    heat = plot._compare_2d([("a", a), ("b", b)], "heatmap", "train_loss", style)
    meshes = [c for ax in heat.axes[:2] for c in ax.collections if isinstance(c, QuadMesh)]  # (the third axes: the colour bar)
    assert len(meshes) == 2 and meshes[0].norm is meshes[1].norm


def test_1d_curves_overlaid_and_as_a_band(files, tmp_path):
    line = read_surface(str(files["line"]))
    repeats = [read_surface(str(scaled_copy(files["line"], tmp_path / f"r{k}.h5", 1.0 + 0.5 * k))) for k in range(3)]
    style = plot._Style(vmin=None, vmax=None, step=None, log=False)
    figure = plot._compare_curves([("one", line), ("two", repeats[1])], "loss", style, band=False)
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels == ["one: train loss", "two: train loss"]
    band = plot._compare_curves([("seeds", r) for r in repeats], "loss", style, band=True)
    ax = band.axes[0]
    (mean_line,) = [l for l in ax.get_lines() if l.get_label().startswith("seeds: train loss, mean of 3")]
    stack = np.stack([r.metrics["train_loss"] for r in repeats])
    order = np.argsort(line.x)
    np.testing.assert_allclose(mean_line.get_ydata(), stack.mean(axis=0)[order], rtol=1e-12)
    (spread,) = ax.collections  # the band: mean ± one standard deviation
    top = spread.get_paths()[0].vertices[:, 1].max()
    np.testing.assert_allclose(top, (stack.mean(axis=0) + stack.std(axis=0)).max(), rtol=1e-12)


def test_1d_compare_writes_curves_and_band_groups_by_label(dsurf, files, tmp_path):
    scaled_copy(files["line"], tmp_path / "line2.h5", 1.5)
    rc, out, err = dsurf("compare", "line.h5", "line2.h5", "--band", "--out-dir", "c1")
    assert rc == 0 and err == "", err
    assert out.split() == ["c1/compare_1d_loss.png", "c1/compare_1d_acc.png", "c1/compare_table.md", "c1/compare_table.csv"]
    assert "| repeats (line2) | train_loss |" in (tmp_path / "c1/compare_table.md").read_text()
    # A switch before the files: --band takes no file for its value
    rc, out, err = dsurf("compare", "--band", "line.h5", "line2.h5", "--out-dir", "c2")
    assert rc == 0 and err == "", err
    assert (tmp_path / "c2/compare_1d_loss.png").is_file()
    assert_one_line_error(*dsurf("compare", "--band=maybe", "line.h5", "line2.h5"), "--band", "expected on or off")


def test_one_file_is_refused(dsurf, files):
    assert_one_line_error(*dsurf("compare", "a.h5"), "two or more surface files")


def test_surfaces_that_differ_are_refused_unless_allowed(dsurf, files, tmp_path):
    assert_one_line_error(*dsurf("compare", "a.h5", "other_grid.h5"), "other_grid.h5", "y axis", "--allow-different")
    assert not (tmp_path / "a_compare").exists()  # nothing written
    rc, out, err = dsurf("compare", "a.h5", "other_grid.h5", "--allow-different", "--kind", "heatmap")
    assert rc == 0 and err == "", err
    set_direction_attr(files["b"], "norm", "layer")
    assert_one_line_error(*dsurf("compare", "a.h5", "b.h5"), "--norm is layer, not filter")
    set_direction_attr(files["b"], "norm", "filter")
    set_direction_attr(files["b"], "dir_type", "states")
    assert_one_line_error(*dsurf("compare", "a.h5", "b.h5"), "--dir-type is states")
    assert_one_line_error(*dsurf("compare", "a.h5", "line.h5", "--allow-different"), "a 1D surface, not 2D")


def test_differences_name_kind_ignore_and_grid(files):
    a = read_surface(str(files["a"]))
    set_direction_attr(files["b"], "kind", "pca")
    set_direction_attr(files["b"], "ignore", "none")
    found = differences(a, read_surface(str(files["b"])))
    assert found == ["the direction kind is pca, not random_normal", "--ignore is none, not biasbn"]
    assert differences(a, read_surface(str(files["other_grid"]))) == ["its y axis is -1..1 (3 points), not -1..1 (5 points)"]


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--band"], ["--band draws 1D curves"]),
        (["--label", "only-one"], ["--label gives 1 name(s) for 2 surfaces"]),
        (["--kind", "curve"], ["--kind curve", "contour"]),
        (["--vmin", "3", "--vmax", "1"], ["--vmin 3 must be below --vmax 1"]),
        (["--format", "gif"], ["invalid choice"]),
        (["--kind", "gap"], ["--kind gap: dsurf compare draws contour"]),
    ],
)
def test_bad_options(dsurf, files, tmp_path, args, needles):
    assert_one_line_error(*dsurf("compare", "a.h5", "b.h5", *args), *needles)
    assert not (tmp_path / "a_compare").exists()  # nothing made, not even the directory


def test_bad_files(dsurf, files, tmp_path):
    (tmp_path / "junk.h5").write_text("not hdf5")
    assert_one_line_error(*dsurf("compare", "a.h5", "junk.h5"), "junk.h5", "not a readable HDF5 file")
    assert_one_line_error(*dsurf("compare", "a.h5", "missing.h5"), "missing.h5", "no such file")
    with h5py.File(files["b"], "r+") as f:
        f["done"][...] = 0
    assert_one_line_error(*dsurf("compare", "a.h5", "b.h5"), "b.h5", "no point is computed")


def test_outputs_follow_the_replace_rule(dsurf, files, tmp_path):
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp/compare_table.md").write_text("my notes\n")
    rc, out, err = dsurf("compare", "a.h5", "b.h5", "--out-dir", "cmp", "--kind", "heatmap")
    assert_one_line_error(rc, out, err, "compare_table.md", "exists and dsurf compare did not write it", "--force")
    assert (tmp_path / "cmp/compare_table.md").read_text() == "my notes\n"
    rc, out, err = dsurf("compare", "a.h5", "b.h5", "--out-dir", "cmp", "--kind", "heatmap", "--force")
    assert rc == 0 and err == "", err
    before = (tmp_path / "cmp/compare_table.csv").read_text()
    rc, out, err = dsurf("compare", "a.h5", "b.h5", "--out-dir", "cmp", "--kind", "heatmap")  # its own: replaced
    assert rc == 0 and err == "" and (tmp_path / "cmp/compare_table.csv").read_text() == before


def test_table_rows_without_theta0_on_the_grid(files):
    rows = table_rows(str(files["other_grid"]))  # y = -1, 0, 1: θ0 is on it
    assert rows[0]["loss at θ0"] is not None
    with h5py.File(files["b"], "r+") as f:
        del f["xcoordinates"]
        f["xcoordinates"] = np.linspace(-1, 1, 5) + 0.1  # no x = 0
    (row,) = table_rows(str(files["b"]))
    assert row["loss at θ0"] is None and row["grid minimum"] is not None


# ---------------------------------------------------------------- checkpoints labelled at their points


def test_checkpoints_are_labelled_at_their_points_in_their_own_style(files):
    markers = [{"label": "θ0", "at": [0.0, 0.0]}, {"label": "b.pt", "at": [1.0, 0.0]}, {"label": "c.pt", "at": [0.0, 1.0]}]
    set_direction_attr(files["a"], "markers", json.dumps(markers))
    data = read_surface(str(files["a"]))
    figure = plot._contour(data, "train_loss", plot._Style(vmin=None, vmax=None, step=None, log=False))
    ax = figure.axes[0]
    texts = {t.get_text(): t.xy for t in ax.texts if t.get_gid() and t.get_gid().startswith("marker-label")}
    assert texts == {"b.pt": (1.0, 0.0), "c.pt": (0.0, 1.0)}
    points = {l.get_label(): (l.get_color(), l.get_marker()) for l in ax.get_lines() if l.get_label() in ("θ0", "b.pt", "c.pt")}
    assert len(set(points.values())) == 3, points  # three models, three looks (the legend tells them apart too)
