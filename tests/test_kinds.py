"""Directions from checkpoints and files: interpolation, planes through three models, Bézier curves,
training trajectories (PCA, against scikit-learn's), lists of points, directions reused from files,
parameter subsets and automatic spans; how each is recorded, resumed, drawn, and refused."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distributed_surface.storage import open_checked, read_directions, read_surface
from helpers import assert_one_line_error, file_bytes

QUIET = ["--no-plot", "--no-progress"]


def perturbed(state: dict, seed: int, scale: float = 0.3) -> dict:
    """Another model of the same architecture: θ0 moved at random (BatchNorm statistics too)."""
    g = torch.Generator().manual_seed(seed)
    return {k: (v + scale * v.abs().mean() * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v.clone()
            for k, v in state.items()}  # fmt: skip


@pytest.fixture
def models(tiny, tmp_path):
    """θ0 (the tiny model's own weights, as a checkpoint too) and three other checkpoints."""
    theta0 = tiny.model().state_dict()
    paths = {"a": tmp_path / "a.pt"}
    torch.save(theta0, paths["a"])
    for k, name in enumerate(("b", "c", "m")):
        paths[name] = tmp_path / f"{name}.pt"
        torch.save(perturbed(theta0, seed=k + 1), paths[name])
    return paths


def loss_of(tiny, state: dict) -> tuple[float, float]:
    """The train loss and accuracy of a model holding ``state``, in float64."""
    model = tiny.model().double()
    model.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    x, y = tiny.data()
    with torch.no_grad():
        out = model.eval()(x.double())
    return F.cross_entropy(out, y).item(), 100.0 * (out.argmax(1) == y).double().mean().item()


def run(dsurf, run_args, *flags, out="k.h5"):
    rc, stdout, err = dsurf(*run_args, *flags, "--out", out)
    assert rc == 0, err
    return err


def test_to_is_the_line_from_theta0_to_b(tiny, dsurf, run_args, models, tmp_path):
    err = run(dsurf, run_args, "--to", models["b"], "--x", "-0.5:1.5:5")
    data = read_surface(str(tmp_path / "k.h5"))
    assert data.frame["kind"] == "interpolate" and data.config["dir_type"] == "states"
    with open_checked(str(tmp_path / "k.h5")) as f:
        (d1,) = read_directions(f)
    theta0, b = tiny.model().state_dict(), torch.load(models["b"])
    for name, value in d1.items():  # exactly θB − θ0, not normalised
        assert np.array_equal(value, (b[name].double() - theta0[name].double()).float().numpy()) or not theta0[name].is_floating_point()
    np.testing.assert_allclose(data.metrics["train_loss"][[1, 3]], [loss_of(tiny, theta0)[0], loss_of(tiny, b)[0]], rtol=1e-6)
    assert data.metrics["train_acc"][3] == pytest.approx(loss_of(tiny, b)[1])
    assert [m["label"] for m in data.frame["markers"]] == ["θ0", "b"]
    assert data.frame["sources"][0]["path"].endswith("b.pt") and len(data.frame["sources"][0]["sha256"]) == 64
    rc, out, _ = dsurf("info", "k.h5")
    assert "directions: interpolate" in out and "b.pt (to, sha256" in out
    # resuming reads the directions back, 0-d BatchNorm counters among them (states)
    rc, out, err = dsurf(*run_args, "--to", models["b"], "--x", "-0.5:1.5:5", "--out", "k.h5", "--resume")
    assert rc == 0, err


def test_plane_holds_the_three_models(tiny, dsurf, run_args, models, tmp_path):
    run(dsurf, run_args, "--plane", models["b"], models["c"], "--x", "0:1:2", "--y", "0:1:2")
    loss = read_surface(str(tmp_path / "k.h5")).metrics["train_loss"]
    expected = [loss_of(tiny, torch.load(models[k]))[0] for k in ("a", "b", "c")]
    np.testing.assert_allclose([loss[0, 0], loss[1, 0], loss[0, 1]], expected, rtol=1e-6)


def test_bezier_curve_ends_and_middle(tiny, dsurf, run_args, models, tmp_path):
    run(dsurf, run_args, "--bend", models["m"], "--to", models["b"], "--x", "0:1:3")
    data = read_surface(str(tmp_path / "k.h5"))
    assert data.points.shape == (6, 2) and data.curve.tolist() == [0, 0, 0, 1, 1, 1]
    theta0, m, b = (torch.load(models[k]) for k in ("a", "m", "b"))
    middle = {k: 0.25 * theta0[k].double() + 0.5 * m[k].double() + 0.25 * b[k].double() if theta0[k].is_floating_point()
              else theta0[k] for k in theta0}  # fmt: skip
    line = {k: 0.5 * theta0[k].double() + 0.5 * b[k].double() if theta0[k].is_floating_point() else theta0[k] for k in theta0}
    expected = [loss_of(tiny, s)[0] for s in (theta0, middle, b, theta0, line, b)]
    np.testing.assert_allclose(data.metrics["train_loss"], expected, rtol=1e-5)
    rc, out, _ = dsurf("info", "k.h5")
    assert "barrier along the curve" in out and "barrier along the straight line" in out
    rc, out, err = dsurf("plot", "k.h5")
    assert rc == 0 and out.strip().endswith("k_1d_loss_acc.png"), err


def test_trajectory_is_scikit_learns_pca(tiny, dsurf, run_args, tmp_path):
    from sklearn.decomposition import PCA

    theta0 = tiny.model().state_dict()
    (tmp_path / "runs").mkdir()
    for epoch in range(1, 12):  # natural order: epoch_2 comes before epoch_10
        torch.save(perturbed(theta0, seed=epoch, scale=0.5 / epoch), tmp_path / "runs" / f"epoch_{epoch}.pt")
    run(dsurf, run_args, "--trajectory", str(tmp_path / "runs" / "epoch_*.pt"), "--x", "auto:5", "--y", "auto:5")
    data = read_surface(str(tmp_path / "k.h5"))
    names = [n for n, p in tiny.model().named_parameters() if p.dim() > 1]  # --ignore biasbn: 1-D offsets are zero
    offsets = np.stack([
        np.concatenate([(torch.load(tmp_path / "runs" / name)[n] - theta0[n]).double().reshape(-1).numpy() for n in names])
        for name in data.trajectory["names"]
    ])  # fmt: skip
    assert data.trajectory["names"][:3] == ["epoch_1.pt", "epoch_2.pt", "epoch_3.pt"]
    pca = PCA(n_components=2).fit(offsets)
    np.testing.assert_allclose(data.trajectory["explained_variance_ratio"], pca.explained_variance_ratio_, atol=1e-6)
    with open_checked(str(tmp_path / "k.h5")) as f:
        d = np.stack([np.concatenate([direction[n].astype(np.float64).reshape(-1) for n in names]) for direction in read_directions(f)])
        assert all(not np.any(direction[n]) for direction in read_directions(f) for n in direction if n not in names)
    np.testing.assert_allclose(d @ d.T, np.eye(2), atol=1e-6)  # orthonormal
    np.testing.assert_allclose(np.abs(np.sum(d * pca.components_, axis=1)), 1.0, atol=1e-6)  # scikit-learn's, up to sign
    # each checkpoint's projection: its offset's coordinates in the plane (the least-squares solution)
    projections = np.stack([data.trajectory["x"], data.trajectory["y"]], axis=1)
    np.testing.assert_allclose(projections, np.linalg.lstsq(d.T, offsets.T, rcond=None)[0].T, atol=1e-6)
    # --x auto spans the path, with a margin
    assert data.x.min() < data.trajectory["x"].min() and data.x.max() > data.trajectory["x"].max()
    assert data.y.min() < data.trajectory["y"].min() and data.y.max() > data.trajectory["y"].max()
    rc, out, _ = dsurf("info", "k.h5")
    assert "explained variance: PC1" in out
    rc, out, err = dsurf("plot", "k.h5", "--kind", "contour")
    assert rc == 0, err


def test_points_from_a_file(tiny, dsurf, run_args, tmp_path):
    (tmp_path / "p.csv").write_text("a,b\n0,0\n0.25,-0.5\n1,1\n")
    run(dsurf, run_args, "--points", "p.csv")
    data = read_surface(str(tmp_path / "k.h5"))
    np.testing.assert_array_equal(data.points, [[0, 0], [0.25, -0.5], [1, 1]])
    # the same offsets of the same random plane, on a grid
    run(dsurf, run_args, "--x", "0:1:5", "--y", "-0.5:1:7", out="grid.h5")
    grid = read_surface(str(tmp_path / "grid.h5")).metrics["train_loss"]
    np.testing.assert_allclose(data.metrics["train_loss"], [grid[0, 2], grid[1, 0], grid[4, 6]], rtol=1e-7)
    rc, out, err = dsurf("plot", "k.h5")
    assert rc == 0 and "k_points_train_loss.png" in out, err
    rc, out, err = dsurf("export", "k.h5", "--format", "csv", "--out", "k.csv")
    assert rc == 0 and (tmp_path / "k.csv").read_text().splitlines()[0] == "x,a,b,train_loss,train_acc"


def test_directions_reused_from_a_file(tiny, dsurf, run_args, tmp_path):
    run(dsurf, run_args, "--x", "-1:1:3", "--y", "-1:1:3", "--seed", "7", out="first.h5")
    run(dsurf, run_args, "--directions", "first.h5", "--x", "-1:1:3", "--y", "-1:1:3", out="again.h5")
    first, again = (read_surface(str(tmp_path / n)) for n in ("first.h5", "again.h5"))
    np.testing.assert_allclose(again.metrics["train_loss"], first.metrics["train_loss"], rtol=1e-7)
    with open_checked(str(tmp_path / "first.h5")) as f:
        torch.save([{k: torch.from_numpy(v) for k, v in d.items()} for d in read_directions(f)], tmp_path / "d.pt")
    run(dsurf, run_args, "--directions", "d.pt", "--x", "-1:1:3", "--y", "-1:1:3", out="torch.h5")
    np.testing.assert_allclose(read_surface(str(tmp_path / "torch.h5")).metrics["train_loss"], first.metrics["train_loss"], rtol=1e-7)


def test_params_moves_only_the_matching_tensors(tiny, dsurf, run_args, tmp_path):
    run(dsurf, run_args, "--params", r"^5\.", "--x", "-1:1:3", "--ignore", "none")
    with open_checked(str(tmp_path / "k.h5")) as f:
        (d1,) = read_directions(f)
        assert read_surface(str(tmp_path / "k.h5")).frame["params"] == r"^5\."
    assert {name for name, value in d1.items() if np.any(value)} == {"5.weight", "5.bias"}


def test_random_auto_span_reaches_the_rise_and_resume_keeps_it(tiny, dsurf, run_args, tmp_path):
    err = run(dsurf, run_args, "--x", "auto:7", "--auto-rise", "3")
    assert "--x auto:" in err
    data = read_surface(str(tmp_path / "k.h5"))
    loss = data.metrics["train_loss"]
    centre = loss[np.argmin(np.abs(data.x))]
    assert loss[0] >= 3 * centre * 0.9 and loss[-1] >= 3 * centre * 0.9  # the ends have risen (a margin beyond)
    span = data.config["x"]
    assert span != "auto:7" and span.endswith(":7")
    before = file_bytes(tmp_path / "k.h5")
    rc, out, err = dsurf(*run_args, "--x", "auto:7", "--auto-rise", "3", "--out", "k.h5", "--resume")
    assert rc == 0, err
    assert read_surface(str(tmp_path / "k.h5")).config["x"] == span and len(before) == len(file_bytes(tmp_path / "k.h5"))


def test_resume_refuses_other_checkpoints(tiny, dsurf, run_args, models, tmp_path):
    args = [*run_args, "--to", str(models["b"]), "--x", "0:1:3", "--out", "k.h5"]
    assert dsurf(*args)[0] == 0
    torch.save(perturbed(torch.load(models["b"]), seed=99), models["b"])  # the same path, another model
    rc, out, err = dsurf(*args, "--resume")
    assert_one_line_error(rc, out, err, "--resume", "b.pt", "not the file the surface was made from")


@pytest.mark.parametrize(
    "flags,needles",
    [
        (["--to", "missing.pt"], ["--to", "no such file"]),
        (["--to", "a.pt"], ["--to", "direction 1 is zero everywhere"]),  # (a.pt holds θ0 itself)
        (["--to", "corrupt.pt"], ["--to", "not a readable torch checkpoint"]),
        (["--to", "other_arch.pt"], ["--to", "does not match the model", "'0.weight'"]),
        (["--trajectory", "nothing_*.pt"], ["--trajectory", "matches 0 checkpoint"]),
        (["--to", "b.pt", "--norm", "layer"], ["--norm has no effect on --to"]),
        (["--to", "b.pt", "--seed", "3"], ["--seed has no effect"]),
        (["--plane", "b.pt", "c.pt", "--x", "0:1:3"], ["--plane spans a plane", "--y"]),
        (["--to", "b.pt", "--plane", "b.pt", "c.pt"], ["--to and --plane"]),
        (["--bend", "m.pt"], ["--bend", "--to"]),
        (["--points", "bad_columns.csv"], ["--points", "one offset (a) or two"]),
        (["--points", "not_numbers.csv"], ["--points", "row 3", "'x'"]),
        (["--params", "^nothing$", "--x", "-1:1:3"], ["--params", "matches no parameter"]),
        (["--directions", "other_model.pt", "--x", "-1:1:3"], ["--directions", "of another model"]),
        (["--x", "auto:1"], ["--x", "at least 2 points"]),
    ],
)
def test_bad_directions_are_one_line(tiny, dsurf, run_args, models, tmp_path, flags, needles):
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    torch.save(tiny.linear_model().state_dict(), tmp_path / "other_arch.pt")
    torch.save({"fc.weight": torch.zeros(3, 36)}, tmp_path / "other_model.pt")
    (tmp_path / "bad_columns.csv").write_text("0,0,0\n1,1,1\n")
    (tmp_path / "not_numbers.csv").write_text("a,b\n0,0\n1,x\n")
    rc, out, err = dsurf(*run_args, *flags, "--out", "bad.h5")
    assert_one_line_error(rc, out, err, *needles)
    assert not (tmp_path / "bad.h5").exists()


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun is not installed")
def test_a_curve_under_mpirun_equals_the_serial_one(tiny, run_args, models, tmp_path):
    args = [sys.executable, "-m", "distributed_surface", *run_args, "--bend", str(models["m"]), "--to", str(models["b"]),
            "--x", "0:1:5", "--chunk-size", "1"]  # fmt: skip
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    serial = subprocess.run([*args, "--out", "s.h5"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert serial.returncode == 0, serial.stderr
    mpi = subprocess.run(["mpirun", "--oversubscribe", "-np", "3", *args, "--out", "m.h5"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert mpi.returncode == 0, mpi.stderr
    a, b = read_surface(str(tmp_path / "s.h5")), read_surface(str(tmp_path / "m.h5"))
    np.testing.assert_allclose(b.metrics["train_loss"], a.metrics["train_loss"], rtol=1e-7)
    np.testing.assert_array_equal(b.points, a.points)
    assert len(set(b.timings["rank"])) > 1


def test_auto_span_of_a_loss_that_never_rises_says_it_took_the_search_limit(dsurf, tmp_path):
    """Inputs of zeros: a linear model's loss is its biases' alone, and the (weights-only) direction never
    moves it. The span is then the search's limit: said in the line, and recorded in the file."""
    (tmp_path / "flat.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def model():\n    torch.manual_seed(0)\n    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))\n"
        "def data():\n    return torch.zeros(12, 4), torch.arange(12) % 3\n"
    )
    rc, out, err = dsurf("run", "--model", "flat.py:model", "--data", "flat.py:data", "--x", "auto:5", "--out", "f.h5", *QUIET)
    assert rc == 0, err
    line = next(line for line in err.splitlines() if "--x auto:" in line)
    assert "the loss never reached 5x" in line and "on the - and + side" in line and "search limit" in line
    data = read_surface(str(tmp_path / "f.h5"))
    assert data.config["x"] == "-17.6:17.6:5"
    with h5py.File(tmp_path / "f.h5", "r") as f:
        notes = json.loads(f["directions"].attrs["auto_span_notes"])
    assert list(notes) == ["x"] and "search limit" in notes["x"]
