"""Direction kinds as plug-ins: a kind defined outside the package, registered in-process and through an
entry point, selected with ``--directions NAME`` and run end to end; its surface described and drawn
from the file alone once its code is gone; files without the recorded labels; blocks of rows; and no
module outside ``directions/`` that asks which kind a surface has."""

from __future__ import annotations

import ast
import importlib
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from distributed_surface import plot
from distributed_surface.config import RunConfig
from distributed_surface.directions import registry
from distributed_surface.directions.frame import make_frame
from distributed_surface.core.errors import UserError
from distributed_surface.problem import load_problem
from distributed_surface.storage import open_checked, read_directions, read_surface
from helpers import assert_one_line_error

PACKAGE = Path(__file__).resolve().parents[1] / "distributed_surface"

# A kind as a user would write it, in a module of its own outside the package: d1 is a tenth of the
# sign of every moving tensor of θ0 (a curve).
TOY_MODULE = '''
from distributed_surface.directions.base import DirectionKind, Made


class Toy(DirectionKind):
    name = "toy"
    ndim = 1
    default_x = "-1:1:5"
    ignored_settings = ("norm",)

    def make(self, config, problem, base, ndim, device):
        return Made(
            directions=[{name: self._signs(tensor) for name, tensor in base.items()}],
            description="a tenth of the signs of θ0",
            axis_labels=["s: θ0 + s·sign(θ0)/10"],
            markers=[{"label": "θ0", "at": [0.0]}],
            record={"scale": 0.1},
        )

    @staticmethod
    def _signs(tensor):
        return 0.1 * tensor.sign() if tensor.is_floating_point() else tensor * 0
'''


@pytest.fixture
def toy_module(tmp_path, monkeypatch):
    """The toy kind's module on disk in tmp_path, importable (and forgotten afterwards)."""
    (tmp_path / "toy_kind.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("toy_kind", None)
    yield importlib.import_module("toy_kind")
    sys.modules.pop("toy_kind", None)


@pytest.fixture
def registered(toy_module):
    """The toy kind registered in this process."""
    registry.register(toy_module.Toy)
    yield toy_module
    registry.unregister("toy")


@pytest.fixture
def installed(toy_module, tmp_path, monkeypatch):
    """The toy kind installed as a distribution would declare it: a ``*.dist-info`` with an entry point
    in the group ``distributed_surface.directions``, on sys.path (nothing installed)."""
    info = tmp_path / "toy_kind-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-kind\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\ntoy = toy_kind:Toy\n")
    importlib.invalidate_caches()
    registry.refresh()
    yield toy_module
    monkeypatch.undo()  # (sys.path without tmp_path)
    importlib.invalidate_caches()
    registry.refresh()


def run_toy(dsurf, run_args, tmp_path, out="toy.h5"):
    rc, _, err = dsurf(*run_args, "--directions", "toy", "--out", out)
    assert rc == 0, err
    return read_surface(str(tmp_path / out))


def check_toy_surface(tiny, dsurf, tmp_path, out="toy.h5"):
    """The toy kind's surface holds its directions and what it recorded; info and plot read them."""
    data = read_surface(str(tmp_path / out))
    assert data.frame["kind"] == "toy" and data.frame["description"] == "a tenth of the signs of θ0"
    assert data.frame["scale"] == 0.1 and data.y is None and data.x.tolist() == [-1, -0.5, 0, 0.5, 1]
    with open_checked(str(tmp_path / out)) as f:
        (d1,) = read_directions(f)
    model = tiny.model()
    for name, tensor in model.named_parameters():
        np.testing.assert_array_equal(d1[name], 0.1 * tensor.detach().sign().numpy())
    assert np.all(data.done == 1) and np.all(np.isfinite(data.metrics["train_loss"]))
    rc, out_text, err = dsurf("info", out)
    assert rc == 0 and "directions: toy (a tenth of the signs of θ0), dir-type weights" in out_text, err
    rc, out_text, err = dsurf("plot", out, "--out-dir", "pictures")
    assert rc == 0 and out_text.strip().endswith("toy_1d_loss_acc.png"), err
    figure = plot._curve(data, plot._Style(vmin=None, vmax=None, step=None, log=False))
    assert figure.axes[0].get_xlabel() == "s: θ0 + s·sign(θ0)/10"
    assert "a tenth of the signs of θ0" in figure.axes[0].get_title()


def test_a_kind_registered_in_process_runs_end_to_end(tiny, dsurf, run_args, tmp_path, registered):
    assert registry.find("toy").flag == "--directions toy"
    run_toy(dsurf, run_args, tmp_path)
    check_toy_surface(tiny, dsurf, tmp_path)
    rc, out, err = dsurf(*run_args, "--directions", "toy", "--norm", "layer", "--out", "bad.h5")
    assert_one_line_error(rc, out, err, "--norm has no effect on --directions toy")
    # --resume finds the same kind and continues
    rc, _, err = dsurf(*run_args, "--directions", "toy", "--out", "toy.h5", "--resume")
    assert rc == 0, err
    # its code gone: the file is still described and drawn, from what the kind recorded
    registry.unregister("toy")
    with pytest.raises(UserError, match="no direction kind 'toy'"):
        registry.find("toy")
    check_toy_surface(tiny, dsurf, tmp_path)
    # and --directions toy is a file's name again
    rc, out, err = dsurf(*run_args, "--directions", "toy", "--out", "other.h5")
    assert_one_line_error(rc, out, err, "--directions 'toy': no such file")


def test_a_kind_installed_through_an_entry_point_runs_end_to_end(tiny, dsurf, run_args, tmp_path, installed):
    assert "toy" in registry.kinds()
    run_toy(dsurf, run_args, tmp_path)
    check_toy_surface(tiny, dsurf, tmp_path)


def test_kinds_with_a_taken_name_are_refused(registered):
    with pytest.raises(ValueError, match="'toy' is already known"):
        registry.register(registered.Toy())
    with pytest.raises(ValueError, match="'plane' is already known"):
        registry.register(type("Plane2", (registered.Toy,), {"name": "plane"}))


def test_files_without_the_recorded_labels_plot_and_describe(tiny, dsurf, run_args, tmp_path):
    """A file of the previous version records the kind, its sources and markers, not its description,
    labels or curves' names: it is drawn with generic labels and its barriers still come from the
    points' curves."""
    torch.save(tiny.model().state_dict(), tmp_path / "b.pt")
    state = {k: v + 0.1 if v.is_floating_point() else v for k, v in tiny.model().state_dict().items()}
    torch.save(state, tmp_path / "m.pt")
    rc, _, err = dsurf(*run_args, "--bend", "m.pt", "--to", "b.pt", "--x", "0:1:3", "--out", "old.h5")
    assert rc == 0, err
    with h5py.File(tmp_path / "old.h5", "r+") as f:
        for group in (f["directions"], *f["directions"].values()):
            for key in ("description", "axis_labels", "axis_short_labels", "curves"):
                if key in group.attrs:
                    del group.attrs[key]
    data = read_surface(str(tmp_path / "old.h5"))
    assert "description" not in data.frame and data.frame["kind"] == "bezier"
    rc, out, err = dsurf("info", "old.h5")
    assert rc == 0 and "directions: bezier: m.pt (bend" in out, err
    assert "barrier along the curve 0" in out and "barrier along the curve 1" in out
    rc, out, err = dsurf("plot", "old.h5")
    assert rc == 0, err
    figure = plot._curve(data, plot._Style(vmin=None, vmax=None, step=None, log=False))
    assert figure.axes[0].get_xlabel() == "x: offset along direction d1"
    assert "barrier curve 0" in figure.axes[0].get_title()


def test_old_random_files_are_described_from_what_they_recorded(surface_2d, dsurf):
    """A random-direction file of the previous version has no description, but its norm, ignore rule and
    seed: dsurf info says them."""
    with h5py.File(surface_2d, "r+") as f:
        for group in (f["directions"], *f["directions"].values()):
            if "description" in group.attrs:
                del group.attrs["description"]
    rc, out, err = dsurf("info", surface_2d.name)
    assert rc == 0, err
    assert "directions: random_normal (filter-normalised directions, ignore biasbn, seed 0)" in out


def frame_of(tiny, **settings):
    config = RunConfig.build(model=tiny.spec("model"), data=tiny.spec("data"), **settings)
    return make_frame(config, load_problem(config))


@pytest.mark.parametrize("settings", [{"x": "-1:1:3", "y": "-1:1:3"}, {"x": "-1:1:3", "directions": "toy"}])
def test_a_block_of_rows_is_the_direction_s_rows(tiny, registered, settings):
    frame = frame_of(tiny, **settings)
    for axis, direction in enumerate(frame.directions):
        for name, tensor in direction.items():
            rows = tensor.reshape(1) if tensor.dim() == 0 else tensor
            blocks = [frame.kind.rows(frame.made, axis, name, start, start + 2) for start in range(0, len(rows), 2)]
            assert torch.equal(torch.cat(blocks), rows), name


def test_the_settings_select_one_kind():
    settings = ({}, {"to": "b.pt"}, {"bend": "m.pt", "to": "b.pt"}, {"directions": "hessian"}, {"directions": "d.pt"},
                {"trajectory": "e*.pt"})  # fmt: skip
    kinds = ["random_normal", "interpolate", "bezier", "hessian", "file", "pca"]
    assert [RunConfig.build(**s).kind for s in settings] == kinds
    with pytest.raises(UserError, match="--trajectory and --directions hessian each choose the directions"):
        RunConfig.build(trajectory="e*.pt", directions="hessian")


def kind_comparisons(path: Path, names: set[str]) -> list[str]:
    """Comparisons in a module between something called kind and a kind's name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        text = ast.unparse(node)
        constants = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        mentions_kind = any(
            (isinstance(n, ast.Name) and n.id == "kind") or (isinstance(n, ast.Attribute) and n.attr == "kind")
            or (isinstance(n, ast.Constant) and n.value == "kind")
            for n in ast.walk(node)
        )  # fmt: skip
        if mentions_kind and constants & names:
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {text}")
    return found


def test_no_module_outside_directions_branches_on_a_kind():
    names = set(registry.BUILTIN)
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) if "directions" not in path.relative_to(PACKAGE).parts
             for hit in kind_comparisons(path, names)]  # fmt: skip
    assert not found, "\n".join(found)
