"""The notebook API (distributed_surface.notebook): live objects in, the same file as `dsurf run` out;
an interrupted cell resumes; the cluster's files from the same settings."""

from __future__ import annotations

import os
import re
import signal

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import distributed_surface.notebook as ds
from distributed_surface.config import RunConfig, load_toml
from distributed_surface.core.errors import UserError
from distributed_surface.storage import read_surface
from helpers import read_h5

GRID = {"x": "-1:1:5", "y": "-1:1:4"}


def _problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    inputs, targets = torch.randn(48, 4), torch.randint(0, 3, (48,))
    return model, inputs, targets


def test_live_objects_give_the_command_lines_surface(tmp_path, dsurf, tiny):
    model, inputs, targets = _problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    surface = ds.compute(model, DataLoader(TensorDataset(inputs, targets), batch_size=7), out=tmp_path / "live.h5",
                         test_data=(inputs[:16], targets[:16]), progress=False, seed=4, **GRID)  # fmt: skip
    assert surface.status == "complete" and surface.progress == (20, 20)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model is left as it was
    # The same model and data through import strings: the same values
    module = tmp_path / "same.py"
    module.write_text(
        "import torch\nfrom torch import nn\n"
        "def model():\n    torch.manual_seed(0)\n    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))\n"
        "def data():\n    torch.manual_seed(0)\n    nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))\n"
        "    return torch.randn(48, 4), torch.randint(0, 3, (48,))\n"
        "def test_data():\n    x, y = data()\n    return x[:16], y[:16]\n"
    )  # fmt: skip
    rc, out, err = dsurf("run", "--model", f"{module}:model", "--data", f"{module}:data", "--test-data", f"{module}:test_data",
                         "--seed", "4", "--x", GRID["x"], "--y", GRID["y"], "--out", "cli.h5", "--no-plot")  # fmt: skip
    assert rc == 0, err
    cli = read_h5(tmp_path / "cli.h5")
    for name in ("train_loss", "train_acc", "test_loss"):
        np.testing.assert_allclose(surface.values[name], cli["data"][name], rtol=1e-6)
    assert surface.config["model"] == "distributed_surface.live:model_Sequential"
    assert set(ds.Surface.open(tmp_path / "live.h5").values) == set(surface.values)


def test_a_callable_loss_and_one_line_errors(tmp_path):
    model, inputs, targets = _problem()
    calls = []

    def per_sample_cross_entropy(outputs, labels):
        calls.append(len(labels))
        return nn.functional.cross_entropy(outputs, labels, reduction="none")

    surface = ds.compute(model, (inputs, targets), loss=per_sample_cross_entropy, out=tmp_path / "l.h5", x="-1:1:3", progress=False)
    assert calls and surface.y is None
    builtin = ds.compute(model, (inputs, targets), out=tmp_path / "c.h5", x="-1:1:3", progress=False)
    np.testing.assert_allclose(surface.values["train_loss"], builtin.values["train_loss"], rtol=1e-6)
    with pytest.raises(UserError, match="unknown setting 'bogus'"):
        ds.compute(model, (inputs, targets), out=tmp_path / "b.h5", bogus=1)
    with pytest.raises(UserError, match="torch.nn.Module"):
        ds.compute("not a module".split(), (inputs, targets), out=tmp_path / "b.h5")
    with pytest.raises(UserError, match="was made with x="):  # resuming with another grid: refused, file kept
        ds.compute(model, (inputs, targets), loss=per_sample_cross_entropy, out=tmp_path / "l.h5", x="-1:1:5", progress=False)
    assert ds.Surface.open(tmp_path / "l.h5").progress == (3, 3)
    with pytest.raises(UserError, match="no such file"):
        ds.Surface.open(tmp_path / "missing.h5")
    assert not (tmp_path / "b.h5").exists()


_FORWARDS = {"left": 0}


class _Interrupting(nn.Module):
    """A model that presses Ctrl-C (SIGINT to its own process) on its 8th forward pass."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x):
        _FORWARDS["left"] -= 1
        if _FORWARDS["left"] == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return self.net(x)


def test_an_interrupted_cell_leaves_the_file_interrupted_and_the_next_call_resumes_it(tmp_path):
    _, inputs, targets = _problem()
    settings = dict(out=tmp_path / "i.h5", progress=False, chunk_size=1, vmap="off", batch_size=48, **GRID)
    _FORWARDS["left"] = 8
    with pytest.raises(KeyboardInterrupt, match="call compute again to resume"):
        ds.compute(_Interrupting(), (inputs, targets), **settings)
    interrupted = ds.Surface.open(tmp_path / "i.h5")
    assert interrupted.status == "interrupted" and 0 < interrupted.progress[0] < 20
    _FORWARDS["left"] = -1  # no more interrupts
    resumed = ds.compute(_Interrupting(), (inputs, targets), **settings)  # the lock was released: it resumes
    assert resumed.status == "complete"
    whole = ds.compute(_Interrupting(), (inputs, targets), **{**settings, "out": tmp_path / "whole.h5"})
    np.testing.assert_allclose(resumed.values["train_loss"], whole.values["train_loss"], rtol=1e-6)
    runs = read_surface(str(tmp_path / "i.h5")).runs
    assert [r.decode() for r in runs["status"]] == ["interrupted", "complete"]


def test_cluster_files_hold_the_same_run(tmp_path, monkeypatch, tiny):
    monkeypatch.chdir(tmp_path)
    toml, script = ds.cluster_files("run.toml", model=tiny.spec("model"), data=tiny.spec("data"), out="s.h5", seed=3,
                                    job={"nodes": 2, "time": "1:00:00"}, **GRID)  # fmt: skip
    values = load_toml(str(toml))
    assert RunConfig.build(**values) == RunConfig.build(model=tiny.spec("model"), data=tiny.spec("data"), out="s.h5", seed=3, **GRID)
    text = script.read_text()
    assert "--nodes=2" in text and "--time=1:00:00" in text and "run.toml" in text
    job = {"time": "0:10:00"}
    with pytest.raises(UserError, match="a cluster job imports its objects"):
        ds.cluster_files("other.toml", model=nn.Linear(2, 2), data=tiny.spec("data"), out="t.h5", job=job)
    (tmp_path / "mine.toml").write_text("# a user's own file\n")
    with pytest.raises(UserError, match="force"):
        ds.cluster_files("mine.toml", model=tiny.spec("model"), data=tiny.spec("data"), out="t.h5", job=job)
    assert (tmp_path / "mine.toml").read_text() == "# a user's own file\n"
    # dsurf sbatch's checks come before any file is written: an input that is not there, a job setting missing
    with pytest.raises(UserError, match="missing.pt"):
        ds.cluster_files("c.toml", model=tiny.spec("model"), data=tiny.spec("data"), out="u.h5", checkpoint="missing.pt", job=job)
    with pytest.raises(UserError, match="--time"):
        ds.cluster_files("c.toml", model=tiny.spec("model"), data=tiny.spec("data"), out="u.h5")
    assert not (tmp_path / "c.toml").exists() and not (tmp_path / "u.sbatch").exists()


def test_jupyter_view_is_the_interactive_report(tmp_path, monkeypatch):
    model, inputs, targets = _problem()
    surface = ds.compute(model, (inputs, targets), out=tmp_path / "v.h5", progress=False, **GRID)
    first, second = surface._repr_html_(), surface._repr_html_()
    assert "Plotly.newPlot" in first and "status:    complete" in first and "<html" not in first
    ids = lambda page: set(re.findall(r'id="(surface-[^"]+)"', page))  # noqa: E731
    assert ids(first) and not ids(first) & ids(second)  # two views on one page: no id twice
    figures = surface.plot(pictures="contour")
    assert set(figures) == {"2d_contour_train_loss", "2d_contour_train_acc"}
    # Without plotly: the first picture above the summary
    import distributed_surface.report as report

    def no_plotly():
        raise UserError("dsurf report needs plotly")

    monkeypatch.setattr(report, "_check_plotly", no_plotly)
    page = surface._repr_html_()
    assert page.count("data:image/png;base64,") == 1 and "status:    complete" in page
