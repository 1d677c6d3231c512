"""The command line beyond errors: TOML files and flags, --overwrite, info, plot, checkpoint formats."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distributed_surface.storage import read_surface
from helpers import PNG_SIGNATURE, file_bytes


def stored_config(path):
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["config"])


# ---------------------------------------------------------------- TOML


def test_toml_values_are_used(tiny, dsurf, tmp_path):
    (tmp_path / "run.toml").write_text(
        f'model = "{tiny.spec("model")}"\ndata = "{tiny.spec("data")}"\n'
        'x = [-1, 1, 3]\ny = "-0.5:0.5:2"\nseed = 5\nnorm = "layer"\ndir-type = "states"\nmax_samples = 40\n'
        'out = "from_toml.h5"\n'
    )
    rc, _, err = dsurf("run", "run.toml", "--no-plot", "--no-progress")
    assert rc == 0, err
    config = stored_config(tmp_path / "from_toml.h5")
    assert config["seed"] == 5 and config["norm"] == "layer" and config["dir_type"] == "states"
    assert config["x"] == "-1:1:3" and config["y"] == "-0.5:0.5:2" and config["max_samples"] == 40
    data = read_surface(str(tmp_path / "from_toml.h5"))
    assert data.metrics["train_loss"].shape == (3, 2) and data.attrs["num_samples"] == 40
    with h5py.File(tmp_path / "from_toml.h5", "r") as f:
        assert f["directions/x"].attrs["norm"] == "layer" and int(f["directions/x"].attrs["seed"]) == 5


def test_flags_override_toml(tiny, dsurf, tmp_path):
    (tmp_path / "run.toml").write_text(
        f'model = "{tiny.spec("model")}"\ndata = "{tiny.spec("data")}"\n'
        'x = "-1:1:3"\ny = "-1:1:3"\nseed = 5\nnorm = "layer"\nout = "toml.h5"\nbatch-size = 3\n'
    )
    rc, _, err = dsurf(
        "run", "run.toml", "--seed", "7", "--x", "-2:2:2", "--out", "flags.h5", "--no-plot", "--no-progress"
    )
    assert rc == 0, err
    assert not (tmp_path / "toml.h5").exists()
    config = stored_config(tmp_path / "flags.h5")
    assert config["seed"] == 7 and config["x"] == "-2:2:2"  # flags win
    assert config["norm"] == "layer" and config["y"] == "-1:1:3" and config["batch_size"] == 3  # TOML kept
    with h5py.File(tmp_path / "flags.h5", "r") as f:
        assert int(f["directions/x"].attrs["seed"]) == 7
        assert f["train_loss"].shape == (2, 3)


# ---------------------------------------------------------------- overwrite, info, plot


def test_overwrite_replaces_the_file(tiny, dsurf, run_args, surface_1d, tmp_path):
    before = read_surface(str(surface_1d))
    rc, _, err = dsurf(
        *run_args, "--x", "-1:1:3", "--y", "0:1:2", "--seed", "9", "--out", "s1.h5", "--overwrite"
    )
    assert rc == 0, err
    after = read_surface(str(surface_1d))
    assert after.y is not None and after.metrics["train_loss"].shape == (3, 2)
    assert after.config["seed"] == 9 and before.config["seed"] == 0
    assert len(after.runs) == 1 and after.status == "complete"
    assert int(after.timings["points"].sum()) == 6
    # no temporary files left next to it
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_info(dsurf, surface_2d):
    rc, out, err = dsurf("info", surface_2d.name)
    assert rc == 0, err
    assert "complete" in out and "12/12" in out
    assert "seed" in out and "train_loss" in out
    assert dsurf("info", "--status", surface_2d.name)[1] == "complete\n"


def test_info_1d(dsurf, surface_1d):
    rc, out, err = dsurf("info", surface_1d.name)
    assert rc == 0, err
    assert "complete" in out and "5/5" in out


def test_plot_2d(dsurf, surface_2d, tmp_path):
    rc, out, err = dsurf("plot", surface_2d.name)
    assert rc == 0, err
    pictures = sorted((tmp_path / "s2_plots").glob("*.png"))
    assert [p.name for p in pictures] == [
        f"s2_{kind}_{value}.png"
        for kind in ("2d_contour", "2d_contourf", "2d_heatmap", "3d_surface")
        for value in ("train_acc", "train_loss")
    ]
    for picture in pictures:
        assert picture.read_bytes()[:8] == PNG_SIGNATURE
        assert picture.stat().st_size > 1000
    assert set(out.split()) == {str(p.relative_to(tmp_path)) for p in pictures}


def test_plot_1d_into_out_dir(dsurf, surface_1d, tmp_path):
    before = file_bytes(surface_1d)
    rc, out, err = dsurf("plot", surface_1d.name, "--out-dir", "pics")
    assert rc == 0, err
    pictures = list((tmp_path / "pics").glob("*.png"))
    assert len(pictures) == 1 and pictures[0].read_bytes()[:8] == PNG_SIGNATURE
    assert file_bytes(surface_1d) == before


def test_run_draws_pictures_unless_no_plot(tiny, dsurf, tmp_path):
    rc, _, err = dsurf(
        "run",
        "--model",
        tiny.spec("model"),
        "--data",
        tiny.spec("data"),
        "--x",
        "-1:1:3",
        "--y",
        "-1:1:2",
        "--out",
        "p.h5",
        "--no-progress",
    )
    assert rc == 0, err
    assert "wrote" in err
    for name in ("p_2d_contour_train_loss.png", "p_2d_contour_train_acc.png"):
        assert (tmp_path / "p_plots" / name).read_bytes()[:8] == PNG_SIGNATURE


# ---------------------------------------------------------------- checkpoint formats


def _plain_loss(model, tiny):
    inputs, targets = tiny.data()
    with torch.no_grad():
        return F.cross_entropy(model.eval()(inputs), targets).item()


@pytest.mark.parametrize(
    "wrap", ["plain", "state_dict", "model", "module_prefix", "state_dict_module_prefix"]
)
def test_checkpoint_formats(tiny, dsurf, run_args, tmp_path, wrap):
    state = tiny.other_model().state_dict()
    prefixed = {f"module.{k}": v for k, v in state.items()}
    obj = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "optimizer": {"lr": torch.tensor(0.1)}},
        "module_prefix": prefixed,
        "state_dict_module_prefix": {"state_dict": prefixed},
    }[wrap]
    torch.save(obj, tmp_path / "ckpt.pt")
    rc, _, err = dsurf(*run_args, "--checkpoint", "ckpt.pt", "--x", "0:0:1", "--out", "c.h5")
    assert rc == 0, err
    loss = read_surface(str(tmp_path / "c.h5")).metrics["train_loss"][0]
    expected = _plain_loss(tiny.other_model(), tiny)
    assert expected != pytest.approx(_plain_loss(tiny.model(), tiny))  # the checkpoint matters
    assert loss == pytest.approx(expected, rel=1e-6)
    # directions are normalised to the checkpoint's θ0, not the factory's
    with h5py.File(tmp_path / "c.h5", "r") as f:
        d = torch.from_numpy(f["directions/x/0.weight"][()])
    torch.testing.assert_close(
        d.flatten(1).norm(dim=1), state["0.weight"].flatten(1).norm(dim=1), rtol=1e-5, atol=0
    )


def test_checkpoint_without_num_batches_tracked(tiny, dsurf, run_args, tmp_path):
    state = {
        k: v for k, v in tiny.other_model().state_dict().items() if not k.endswith("num_batches_tracked")
    }
    model = tiny.model()
    model.load_state_dict(state)  # torch itself accepts it
    torch.save(state, tmp_path / "old.pt")
    rc, _, err = dsurf(*run_args, "--checkpoint", "old.pt", "--x", "0:0:1", "--out", "c.h5")
    assert rc == 0, err
    loss = read_surface(str(tmp_path / "c.h5")).metrics["train_loss"][0]
    assert loss == pytest.approx(_plain_loss(tiny.other_model(), tiny), rel=1e-6)


def test_resume_accepts_the_same_grid_spelled_differently(dsurf, run_args, surface_2d):
    rc, _, err = dsurf(
        *run_args, "--x", "-1.0:1.0:3", "--y", "-0.50:0.50:4", "--out", surface_2d.name, "--resume"
    )
    assert rc == 0, err


def test_python_api_run_equals_cli(tiny, dsurf, surface_2d, tmp_path):
    from distributed_surface.config import RunConfig
    from distributed_surface.run import run

    config = RunConfig.build(
        model=tiny.spec("model"),
        data=tiny.spec("data"),
        x="-1:1:3",
        y="-0.5:0.5:4",
        out=str(tmp_path / "api.h5"),
    )
    assert run(config, progress=False) == "complete"
    np.testing.assert_array_equal(
        read_surface(str(tmp_path / "api.h5")).metrics["train_loss"],
        read_surface(str(surface_2d)).metrics["train_loss"],
    )


@pytest.mark.parametrize(
    "x,y", [("0:0:1", "-1:1:3"), ("-1:1:3", "0:0:1"), ("0:0:1", "0:0:1"), ("-1:1:2", "-1:1:2")]
)
def test_plot_of_degenerate_grids(tiny, dsurf, tmp_path, x, y):
    rc, _, err = dsurf(
        "run",
        "--model",
        tiny.spec("model"),
        "--data",
        tiny.spec("data"),
        f"--x={x}",
        f"--y={y}",
        "--out",
        "d.h5",
        "--no-progress",
    )
    assert rc == 0, err
    for name in ("d_2d_contour_train_loss.png", "d_2d_contour_train_acc.png"):
        assert (tmp_path / "d_plots" / name).read_bytes()[:8] == PNG_SIGNATURE


def test_plot_of_a_1d_single_point(tiny, dsurf, tmp_path):
    rc, _, err = dsurf(
        "run",
        "--model",
        tiny.spec("model"),
        "--data",
        tiny.spec("data"),
        "--x",
        "0:0:1",
        "--out",
        "one.h5",
        "--no-progress",
    )
    assert rc == 0, err
    assert (tmp_path / "one_plots" / "one_1d_loss_acc.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize(
    "args",
    [["info", "{file}"], ["info", "--status", "{file}"],
     ["sbatch", "--dry-run", "--model", "{model}", "--data", "{data}", "--x", "-1:1:3", "--nodes", "1", "--time", "1:00:00"]],
    ids=["info", "status", "sbatch"],
)
def test_a_closed_pipe_ends_quietly(tiny, surface_2d, tmp_path, args):
    """`dsurf info FILE | head -1`: the reader has gone before dsurf writes (its end of the pipe is closed
    before dsurf starts, so the write fails every time, not one run in three): no traceback, the status
    of a process whose reader left."""
    import os
    import subprocess
    import sys

    args = [a.format(file=surface_2d, model=tiny.spec("model"), data=tiny.spec("data")) for a in args]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "distributed_surface", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 141
