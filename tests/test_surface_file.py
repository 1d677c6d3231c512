"""The surface file's layout after ``dsurf run`` (the format: docs/format.md)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

import distributed_surface
from distributed_surface.core.directions import base_tensors, make_directions
from distributed_surface.core.evaluate import SurfaceEvaluator
from distributed_surface.core.losses import cross_entropy
from distributed_surface.storage import MAX_RUNS, read_directions, read_surface
from helpers import read_h5, reference_point


def check_common(content, grid_shape, tiny):
    attrs, data = content["attrs"], content["data"]
    assert attrs["format"] == "distributed_surface"
    assert int(attrs["format_version"]) >= 1
    assert attrs["status"] == b"complete"  # a fixed-size string (rewritten in place): h5py reads bytes
    assert int(attrs["num_samples"]) == 64
    assert attrs["distributed_surface_version"] == distributed_surface.__version__
    assert attrs["torch_version"] == str(torch.__version__)
    for stamp in ("created", "updated"):
        value = attrs[stamp]
        assert (value.decode() if isinstance(value, bytes) else value)[:2] == "20"
    config = json.loads(attrs["config"])
    assert config["model"] == tiny.spec("model") and config["data"] == tiny.spec("data")
    assert config["norm"] == "filter" and config["ignore"] == "biasbn" and config["seed"] == 0

    for name in ("train_loss", "train_acc"):
        assert data[name].shape == grid_shape and data[name].dtype == np.float64
        assert np.all(np.isfinite(data[name]))
    assert np.all((data["train_acc"] >= 0) & (data["train_acc"] <= 100))
    assert data["done"].dtype == np.uint8 and data["done"].shape == grid_shape
    assert np.all(data["done"] == 1)
    assert data["xcoordinates"].dtype == np.float64

    model = tiny.model()
    params = dict(model.named_parameters())
    for axis in ("x", "y")[: len(grid_shape)]:
        stored = {
            name[len(f"directions/{axis}/") :]: v
            for name, v in data.items()
            if name.startswith(f"directions/{axis}/")
        }
        assert set(stored) == set(params)
        for name, p in params.items():
            assert stored[name].shape == tuple(p.shape)
        dattrs = content["dir_attrs"][axis]
        assert dattrs["norm"] == "filter" and dattrs["ignore"] == "biasbn"
        assert int(dattrs["seed"]) == 0 and dattrs["dir_type"] == "weights"
    assert ("directions/y/0.weight" in data) == (len(grid_shape) == 2)

    # one timing record reserved per point, each naming the chunk that computed it
    timings = data["timings"]
    assert timings.shape == (int(np.prod(grid_shape)),) and np.all(timings["points"] > 0)
    assert np.all(timings["seconds"] >= 0) and np.all(timings["rank"] == 0) and np.all(timings["run"] == 0)
    assert all(record["host"] and record["device"] == b"cpu" for record in timings)
    for first in set(timings["first_index"].tolist()):  # a chunk's points: from its first, as many as it says
        members = np.flatnonzero(timings["first_index"] == first)
        assert members[0] == first and len(members) == timings["points"][first]
    # run records are reserved too: a ring of slots, one used
    runs = data["runs"]
    assert len(runs) == MAX_RUNS and list(runs["index"][:2]) == [0, -1]
    assert runs[0]["status"] == b"complete" and runs[0]["end"] >= runs[0]["start"] > 0


def test_2d_file_layout_nx_ne_ny(tiny, surface_2d):
    content = read_h5(surface_2d)
    check_common(content, (3, 4), tiny)
    data = content["data"]
    np.testing.assert_array_equal(data["xcoordinates"], np.linspace(-1, 1, 3))
    np.testing.assert_array_equal(data["ycoordinates"], np.linspace(-0.5, 0.5, 4))
    # 12 points in chunks of 5: 3 records of 5, 5, 2 points
    timings = data["timings"]
    assert timings["points"].tolist() == [5] * 10 + [2] * 2
    assert timings["first_index"].tolist() == [0] * 5 + [5] * 5 + [10] * 2


def test_2d_values_are_at_their_coordinates(tiny, surface_2d):
    """train_loss[i, j] is the value at (xcoordinates[i], ycoordinates[j]), checked against the
    evaluator directly and against an independent float64 evaluation."""
    content = read_h5(surface_2d)
    data = content["data"]
    model, (inputs, targets) = tiny.model(), tiny.data()
    directions = make_directions(base_tensors(model, "weights"), 2, "filter", "biasbn", seed=0)
    # the stored directions are those of the seed, bit for bit
    with h5py.File(surface_2d, "r") as f:
        stored = read_directions(f)
    for mine, theirs in zip(directions, stored):
        assert set(mine) == set(theirs)
        for name in mine:
            assert torch.equal(mine[name], torch.from_numpy(theirs[name]))
    ev = SurfaceEvaluator(tiny.model(), directions, (inputs, targets), cross_entropy, batch_size=1024)
    x, y = data["xcoordinates"], data["ycoordinates"]
    points = [(i, j) for i in range(3) for j in range(4)]
    got = ev.evaluate(np.array([[x[i], y[j]] for i, j in points]))
    for k, (i, j) in enumerate(points):
        assert data["train_loss"][i, j] == pytest.approx(got["train_loss"][k], rel=1e-12)
        assert data["train_acc"][i, j] == got["train_acc"][k]
    # a transposed layout would be caught: values vary along both axes
    assert not np.allclose(data["train_loss"][:, 0], data["train_loss"][:, 1])
    assert not np.allclose(data["train_loss"][0, :], data["train_loss"][1, :])
    for i, j in [(0, 3), (2, 0), (1, 2)]:
        loss, acc = reference_point(model, directions, inputs, targets, (x[i], y[j]))
        assert data["train_loss"][i, j] == pytest.approx(loss, rel=1e-6)
        assert data["train_acc"][i, j] == pytest.approx(acc)


def test_1d_file_layout(tiny, surface_1d):
    content = read_h5(surface_1d)
    check_common(content, (5,), tiny)
    data = content["data"]
    assert "ycoordinates" not in data
    np.testing.assert_array_equal(data["xcoordinates"], np.linspace(-1, 1, 5))
    model, (inputs, targets) = tiny.model(), tiny.data()
    (d,) = make_directions(base_tensors(model, "weights"), 1, "filter", "biasbn", seed=0)
    for i, a in enumerate(data["xcoordinates"]):
        loss, acc = reference_point(model, [d], inputs, targets, (a,))
        assert data["train_loss"][i] == pytest.approx(loss, rel=1e-6)
        assert data["train_acc"][i] == pytest.approx(acc)
    # x = 0 is the plain model
    with torch.no_grad():
        plain = torch.nn.functional.cross_entropy(tiny.model().eval()(inputs), targets).item()
    assert data["train_loss"][2] == pytest.approx(plain, rel=1e-6)


def test_states_file_stores_state_dict_keys(tiny, dsurf, run_args, tmp_path):
    rc, _, err = dsurf(
        *run_args,
        "--x",
        "-1:1:2",
        "--y",
        "0:1:2",
        "--dir-type",
        "states",
        "--ignore",
        "none",
        "--seed",
        "3",
        "--out",
        "st.h5",
    )
    assert rc == 0, err
    with h5py.File(tmp_path / "st.h5", "r") as f:
        for axis in ("x", "y"):
            group = f["directions"][axis]
            assert set(group) == set(tiny.model().state_dict())
            assert group.attrs["dir_type"] == "states" and group.attrs["ignore"] == "none"
            assert int(group.attrs["seed"]) == 3
            assert np.all(group["1.num_batches_tracked"][()] == 0)
            assert group["1.num_batches_tracked"].dtype.kind == "i"
            np.testing.assert_array_equal(
                group["1.running_var"][()], tiny.model().state_dict()["1.running_var"]
            )
        # the values are those of state-space moves
        model, (inputs, targets) = tiny.model(), tiny.data()
        dirs = make_directions(base_tensors(model, "states"), 2, "filter", "none", seed=3)
        loss, _ = reference_point(model, dirs, inputs, targets, (1.0, 1.0), "states")
        assert f["train_loss"][1, 1] == pytest.approx(loss, rel=1e-6)


def test_regression_file_has_loss_and_no_accuracy(tiny, dsurf, tmp_path):
    rc, _, err = dsurf(
        "run",
        "--model",
        tiny.spec("model"),
        "--data",
        tiny.spec("regression_data"),
        "--loss",
        "mse",
        "--x",
        "-1:1:3",
        "--y",
        "-1:1:2",
        "--out",
        "r.h5",
        "--no-progress",
    )
    assert rc == 0, err
    data = read_surface(str(tmp_path / "r.h5"))
    assert set(data.metrics) == {"train_loss"}
    assert np.all(np.isfinite(data.metrics["train_loss"]))
    # and the plot of a loss-only file is drawn (run without --no-plot)
    assert (tmp_path / "r_plots" / "r_2d_contour_train_loss.png").is_file()
    assert not (tmp_path / "r_plots" / "r_2d_contour_train_acc.png").exists()


def test_dataset_and_max_samples(tiny, dsurf, tmp_path):
    rc, _, err = dsurf(
        "run",
        "--model",
        tiny.spec("model"),
        "--data",
        tiny.spec("dataset"),
        "--max-samples",
        "20",
        "--x",
        "-1:1:3",
        "--out",
        "m.h5",
        "--no-plot",
        "--no-progress",
        "--batch-size",
        "7",
    )
    assert rc == 0, err
    data = read_surface(str(tmp_path / "m.h5"))
    assert data.attrs["num_samples"] == 20
    model, (inputs, targets) = tiny.model(), tiny.data()
    (d,) = make_directions(base_tensors(model, "weights"), 1, "filter", "biasbn", seed=0)
    loss, acc = reference_point(model, [d], inputs[:20], targets[:20], (1.0,))
    assert data.metrics["train_loss"][2] == pytest.approx(loss, rel=1e-6)
    assert data.metrics["train_acc"][2] == pytest.approx(acc)
