"""``dsurf export``: VTK XML PolyData (.vtp) and StructuredGrid (.vts) read back with VTK's own readers
(what ParaView uses), CSV read back with numpy; partial and paper-format files; bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from distributed_surface.storage import read_any_surface
from helpers import assert_one_line_error
from test_plot import NX, NY, make_surfaces

vtk_xml = pytest.importorskip("vtkmodules.vtkIOXML", reason="VTK (pip install vtk) reads the exports back")
from vtkmodules.util.numpy_support import vtk_to_numpy  # noqa: E402

VTK_QUAD, VTK_LINE = 9, 3


@pytest.fixture(scope="session")
def surfaces(tmp_path_factory):
    return make_surfaces(tmp_path_factory.getbasetemp() / "export_surfaces")


@pytest.fixture
def files(surfaces, tmp_path):
    return {key: Path(shutil.copy(path, tmp_path / path.name)) for key, path in surfaces.items()}


def read_vtk(path):
    """The dataset in ``path`` through VTK's XML reader; fails on any error or warning it reports."""
    reader = vtk_xml.vtkXMLPolyDataReader() if str(path).endswith(".vtp") else vtk_xml.vtkXMLStructuredGridReader()
    events = []
    for event in ("ErrorEvent", "WarningEvent"):
        reader.AddObserver(event, lambda obj, name, events=events: events.append(name))
    reader.SetFileName(str(path))
    reader.Update()
    assert not events and reader.GetErrorCode() == 0, (path, events)
    return reader.GetOutput()


def point_array(dataset, name):
    array = dataset.GetPointData().GetArray(name)
    assert array is not None, f"no point array {name!r}"
    return vtk_to_numpy(array)


def grid_points(data):
    """(x, y) of every grid point in VTK's order: x fastest."""
    xg, yg = np.meshgrid(data.x, data.y)
    return xg.ravel(), yg.ravel()


def vtk_order(values):
    return np.asarray(values).T.ravel()  # ours: [i, j] = (x_i, y_j); VTK: j * nx + i


# ---------------------------------------------------------------- VTK PolyData


@pytest.mark.parametrize("kind", ["loss", "acc"])
def test_vtp_of_a_full_surface(dsurf, files, tmp_path, kind):
    rc, out, err = dsurf("export", files["2d"].name, "--format", "vtp", "--kind", kind)
    assert rc == 0 and err == "", err
    assert out.strip() == f"s2_train_{kind}.vtp"
    data = read_any_surface(str(files["2d"]))
    poly = read_vtk(tmp_path / out.strip())
    assert poly.GetNumberOfPoints() == NX * NY
    points = vtk_to_numpy(poly.GetPoints().GetData())
    x, y = grid_points(data)
    np.testing.assert_array_equal(points[:, 0], x)
    np.testing.assert_array_equal(points[:, 1], y)
    np.testing.assert_array_equal(points[:, 2], vtk_order(data.metrics[f"train_{kind}"]))  # z = the chosen value
    for name in ("train_loss", "train_acc"):
        np.testing.assert_array_equal(point_array(poly, name), vtk_order(data.metrics[name]))
    np.testing.assert_array_equal(point_array(poly, "done"), np.ones(NX * NY))
    # one quad per grid cell, each spanning one cell of the grid
    assert poly.GetNumberOfCells() == (NX - 1) * (NY - 1)
    dx, dy = np.diff(data.x)[0], np.diff(data.y)[0]
    for c in range(poly.GetNumberOfCells()):
        cell = poly.GetCell(c)
        assert cell.GetCellType() == VTK_QUAD
        corners = points[[cell.GetPointId(k) for k in range(4)], :2]
        np.testing.assert_allclose(corners.max(0) - corners.min(0), [dx, dy])
        assert len({tuple(p) for p in corners}) == 4


def test_vtp_of_a_partial_surface(dsurf, files, tmp_path):
    rc, out, err = dsurf("export", files["partial"].name, "--format", "vtp", "--out", "p.vtp")
    assert rc == 0, err
    data = read_any_surface(str(files["partial"]))
    poly = read_vtk(tmp_path / "p.vtp")
    done = vtk_order(data.done).astype(bool)
    loss = point_array(poly, "train_loss")
    np.testing.assert_array_equal(loss[done], vtk_order(data.metrics["train_loss"])[done])
    assert np.isnan(loss[~done]).all() and np.isnan(point_array(poly, "train_acc")[~done]).all()
    np.testing.assert_array_equal(point_array(poly, "done"), done.astype(np.uint8))
    # quads only where all four corners are computed
    grid = data.done.astype(bool)
    expected = int((grid[:-1, :-1] & grid[1:, :-1] & grid[1:, 1:] & grid[:-1, 1:]).sum())
    assert 0 < expected < (NX - 1) * (NY - 1)
    assert poly.GetNumberOfCells() == expected
    for c in range(poly.GetNumberOfCells()):
        cell = poly.GetCell(c)
        assert all(done[cell.GetPointId(k)] for k in range(4))
    assert np.isfinite(vtk_to_numpy(poly.GetPoints().GetData())).all()


def test_vtp_of_a_1d_surface(dsurf, files, tmp_path):
    rc, out, err = dsurf("export", files["1d"].name, "--format", "vtp")
    assert rc == 0, err
    data = read_any_surface(str(files["1d"]))
    poly = read_vtk(tmp_path / "s1_train_loss.vtp")
    points = vtk_to_numpy(poly.GetPoints().GetData())
    np.testing.assert_array_equal(points[:, 0], data.x)
    np.testing.assert_array_equal(points[:, 2], data.metrics["train_loss"])
    np.testing.assert_array_equal(point_array(poly, "train_acc"), data.metrics["train_acc"])
    assert poly.GetNumberOfLines() == len(data.x) - 1
    assert all(poly.GetCell(c).GetCellType() == VTK_LINE for c in range(poly.GetNumberOfCells()))


# ---------------------------------------------------------------- VTK StructuredGrid


def test_vts_of_a_full_surface(dsurf, files, tmp_path):
    rc, out, err = dsurf("export", files["2d"].name, "--format", "vts", "--kind", "acc")
    assert rc == 0 and err == "", err
    data = read_any_surface(str(files["2d"]))
    grid = read_vtk(tmp_path / "s2_train_acc.vts")
    dims = [0, 0, 0]
    grid.GetDimensions(dims)
    assert dims == [NX, NY, 1]
    points = vtk_to_numpy(grid.GetPoints().GetData())
    x, y = grid_points(data)
    np.testing.assert_array_equal(points, np.stack([x, y, vtk_order(data.metrics["train_acc"])], 1))
    for name in ("train_loss", "train_acc"):
        np.testing.assert_array_equal(point_array(grid, name), vtk_order(data.metrics[name]))
    assert not grid.HasAnyBlankPoints()
    assert grid.GetNumberOfCells() == (NX - 1) * (NY - 1)


def test_vts_of_a_partial_surface_hides_points_not_done(dsurf, files, tmp_path):
    rc, out, err = dsurf("export", files["partial"].name, "--format", "vts")
    assert rc == 0, err
    data = read_any_surface(str(files["partial"]))
    grid = read_vtk(tmp_path / "partial_train_loss.vts")
    done = vtk_order(data.done).astype(bool)
    assert grid.HasAnyBlankPoints()
    visible = np.array([grid.IsPointVisible(k) for k in range(NX * NY)], dtype=bool)
    np.testing.assert_array_equal(visible, done)
    loss = point_array(grid, "train_loss")
    np.testing.assert_array_equal(loss[done], vtk_order(data.metrics["train_loss"])[done])
    assert np.isnan(loss[~done]).all()


def test_vts_of_a_1d_surface(dsurf, files, tmp_path):
    rc, out, err = dsurf("export", files["1d"].name, "--format", "vts", "--out", "c.vts")
    assert rc == 0, err
    grid = read_vtk(tmp_path / "c.vts")
    dims = [0, 0, 0]
    grid.GetDimensions(dims)
    assert dims == [7, 1, 1]
    np.testing.assert_array_equal(point_array(grid, "train_loss"), read_any_surface(str(files["1d"])).metrics["train_loss"])


# ---------------------------------------------------------------- CSV


def read_csv(path):
    table = np.genfromtxt(path, delimiter=",", names=True)
    return {name: table[name] for name in table.dtype.names}


def test_csv_of_a_2d_surface(dsurf, files, tmp_path):
    rc, out, err = dsurf("export", files["partial"].name, "--format", "csv")
    assert rc == 0 and err == "", err
    assert out.strip() == "partial.csv"
    data = read_any_surface(str(files["partial"]))
    header = (tmp_path / "partial.csv").read_text().splitlines()[0]
    assert header == "x,y,train_loss,train_acc"
    table = read_csv(tmp_path / "partial.csv")
    xg, yg = np.meshgrid(data.x, data.y, indexing="ij")
    np.testing.assert_array_equal(table["x"], xg.ravel())
    np.testing.assert_array_equal(table["y"], yg.ravel())
    for name in ("train_loss", "train_acc"):
        np.testing.assert_array_equal(table[name], data.metrics[name].ravel())  # bit for bit, NaN where not done
    assert np.isnan(table["train_loss"]).sum() == 9
    # not-done values are blank fields, which spreadsheets read as empty
    assert (tmp_path / "partial.csv").read_text().splitlines()[-1].endswith(",,")


def test_csv_of_a_1d_surface_with_test_values(dsurf, files, tmp_path):
    rc, out, err = dsurf("export", files["1d_test"].name, "--format", "csv", "--out", "t.csv")
    assert rc == 0, err
    data = read_any_surface(str(files["1d_test"]))
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == "x,train_loss,train_acc,test_loss,test_acc"
    table = read_csv(tmp_path / "t.csv")
    np.testing.assert_array_equal(table["x"], data.x)
    for name in ("train_loss", "train_acc", "test_loss", "test_acc"):
        np.testing.assert_array_equal(table[name], data.metrics[name])


def test_csv_of_a_paper_file(dsurf, files, tmp_path):
    rc, out, err = dsurf("export", files["legacy"].name, "--format", "csv")
    assert rc == 0, err
    table = read_csv(tmp_path / "paper.csv")
    full = read_any_surface(str(files["2d"]))
    legacy = read_any_surface(str(files["legacy"]))
    done = legacy.done.ravel().astype(bool)
    assert done.sum() == 14
    np.testing.assert_array_equal(table["train_loss"][done], full.metrics["train_loss"].ravel()[done])
    assert np.isnan(table["train_loss"][~done]).all()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--format", "obj"], ["obj", "vtp, vts, csv"]),
        (["--format", "vtp", "--kind", "err"], ["err", "no train_err", "train_loss, train_acc"]),
        (["--format", "vtp", "--out", "nowhere/s.vtp"], ["nowhere", "does not exist"]),
        (["--format", "csv", "--out", "."], ["is a directory"]),
        (["--format", "csv", "--out", "s2.h5"], ["s2.h5", "surface file itself"]),
        ([], ["--format"]),
    ],
)
def test_bad_options(dsurf, files, tmp_path, args, needles):
    before = files["2d"].read_bytes()
    rc, out, err = dsurf("export", files["2d"].name, *args)
    assert_one_line_error(rc, out, err, *needles)
    assert files["2d"].read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".vtp", ".vts", ".csv") or p.name.startswith("."))  == []


def test_bad_files(dsurf, files, tmp_path):
    (tmp_path / "text.h5").write_text("not hdf5\n")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.arange(3)
    for name, needle in [("missing.h5", "no such file"), ("text.h5", "HDF5"), ("other.h5", "not a distributed_surface")]:
        rc, out, err = dsurf("export", name, "--format", "csv")
        assert_one_line_error(rc, out, err, name, needle)
    with h5py.File(files["2d"], "r+") as f:
        del f["train_acc"]  # a loss-only surface (e.g. --loss mse on float targets)
    rc, out, err = dsurf("export", files["2d"].name, "--format", "vts", "--kind", "acc")
    assert_one_line_error(rc, out, err, "train_acc")
    assert not list(tmp_path.glob("*.vts"))
