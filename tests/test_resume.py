"""Interruption and resume with the serial engine: the surface file is the checkpoint."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from distributed_surface.core.evaluate import SurfaceEvaluator
from distributed_surface.storage import read_surface
from helpers import file_bytes

GRID = ["--x", "-1:1:3", "--y", "-0.5:0.5:4"]


def interrupt_on_call(monkeypatch, n):
    """Make SurfaceEvaluator.evaluate raise KeyboardInterrupt on its n-th call (1-based), once."""
    real = SurfaceEvaluator.evaluate
    calls = {"n": 0}

    def evaluate(self, offsets):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(self, offsets)

    monkeypatch.setattr(SurfaceEvaluator, "evaluate", evaluate)
    return calls


def count_calls(monkeypatch):
    real = SurfaceEvaluator.evaluate
    seen = []

    def evaluate(self, offsets):
        seen.append(np.array(offsets))
        return real(self, offsets)

    monkeypatch.setattr(SurfaceEvaluator, "evaluate", evaluate)
    return seen


@pytest.fixture
def reference(dsurf, run_args, tmp_path):
    rc, _, err = dsurf(*run_args, *GRID, "--out", "full.h5", "--chunk-size", "2")
    assert rc == 0, err
    return read_surface(str(tmp_path / "full.h5"))


@pytest.mark.parametrize("stop_at,resume_chunk", [(3, "2"), (1, "2"), (5, "5")])
def test_interrupted_then_resumed_equals_uninterrupted(
    dsurf, run_args, tmp_path, monkeypatch, reference, stop_at, resume_chunk
):
    interrupt_on_call(monkeypatch, stop_at)
    rc, out, err = dsurf(*run_args, *GRID, "--out", "s.h5", "--chunk-size", "2")
    assert rc != 0 and rc == 130
    assert "Traceback" not in err and "--resume" in err
    partial = read_surface(str(tmp_path / "s.h5"))
    assert partial.status == "interrupted"
    finished = stop_at - 1  # chunks of 2 points finished before the interrupt
    assert int(partial.done.sum()) == 2 * finished
    assert partial.progress == (2 * finished, 12)
    flat_done = partial.done.reshape(-1).astype(bool)
    assert flat_done[: 2 * finished].all() and not flat_done[2 * finished :].any()
    for name in ("train_loss", "train_acc"):
        values = partial.metrics[name].reshape(-1)
        assert np.all(np.isnan(values[~flat_done]))
        np.testing.assert_array_equal(values[flat_done], reference.metrics[name].reshape(-1)[flat_done])
    assert int(partial.timings["points"].sum()) == 2 * finished
    assert partial.runs[0]["status"] == b"interrupted"

    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    seen = count_calls(monkeypatch)
    rc, out, err = dsurf(*run_args, *GRID, "--out", "s.h5", "--chunk-size", resume_chunk, "--resume")
    assert rc == 0, err
    # no done point is recomputed
    recomputed = np.concatenate(seen)
    assert len(recomputed) == 12 - 2 * finished
    done_offsets = {tuple(p) for p in partial_offsets(partial, flat_done)}
    assert not done_offsets & {tuple(p) for p in recomputed}

    resumed = read_surface(str(tmp_path / "s.h5"))
    assert resumed.status == "complete"
    assert np.all(resumed.done == 1)
    for name in ("train_loss", "train_acc"):
        np.testing.assert_allclose(resumed.metrics[name], reference.metrics[name], rtol=1e-12, atol=0)
    # timing records across both runs cover the grid exactly once
    assert int(resumed.timings["points"].sum()) == 12
    assert sorted(resumed.timings["run"].tolist()) == [0] * finished + [1] * (len(resumed.timings) - finished)
    assert [r["status"] for r in resumed.runs] == [b"interrupted", b"complete"]
    # each point's own record names the run that computed it: the first run's points kept theirs
    assert (resumed.point_runs.reshape(-1) == np.where(flat_done, 0, 1)).all()
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["timings"].shape == (12,) and (f["timings"]["points"] > 0).all()  # one record a point


def partial_offsets(data, flat_done):
    xx, yy = np.meshgrid(data.x, data.y, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)[flat_done]


def test_resume_of_a_complete_file_computes_nothing(dsurf, run_args, tmp_path, monkeypatch, reference):
    seen = count_calls(monkeypatch)
    before = read_surface(str(tmp_path / "full.h5"))
    rc, _, err = dsurf(*run_args, *GRID, "--out", "full.h5", "--resume")
    assert rc == 0, err
    assert seen == []
    after = read_surface(str(tmp_path / "full.h5"))
    assert after.status == "complete"
    np.testing.assert_array_equal(after.metrics["train_loss"], before.metrics["train_loss"])
    assert int(after.timings["points"].sum()) == 12


def test_resume_without_a_file_starts_one(dsurf, run_args, tmp_path, reference):
    rc, _, err = dsurf(*run_args, *GRID, "--out", "new.h5", "--resume")
    assert rc == 0, err
    np.testing.assert_array_equal(
        read_surface(str(tmp_path / "new.h5")).metrics["train_loss"], reference.metrics["train_loss"]
    )


def test_interrupted_file_survives_a_second_interrupt(dsurf, run_args, tmp_path, monkeypatch, reference):
    interrupt_on_call(monkeypatch, 2)
    assert dsurf(*run_args, *GRID, "--out", "s.h5", "--chunk-size", "2")[0] == 130
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    interrupt_on_call(monkeypatch, 3)
    assert dsurf(*run_args, *GRID, "--out", "s.h5", "--chunk-size", "2", "--resume")[0] == 130
    mid = read_surface(str(tmp_path / "s.h5"))
    assert mid.status == "interrupted" and mid.progress == (6, 12)
    assert int(mid.timings["points"].sum()) == 6
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert dsurf(*run_args, *GRID, "--out", "s.h5", "--chunk-size", "2", "--resume")[0] == 0
    final = read_surface(str(tmp_path / "s.h5"))
    np.testing.assert_allclose(
        final.metrics["train_loss"], reference.metrics["train_loss"], rtol=1e-12, atol=0
    )
    assert int(final.timings["points"].sum()) == 12
    assert len(final.runs) == 3


def test_plot_and_info_of_a_partial_file(dsurf, run_args, tmp_path, monkeypatch):
    interrupt_on_call(monkeypatch, 3)
    assert dsurf(*run_args, *GRID, "--out", "s.h5", "--chunk-size", "2")[0] == 130
    rc, out, err = dsurf("info", "s.h5")
    assert rc == 0, err
    assert "interrupted" in out and "4/12" in out
    assert dsurf("info", "--status", "s.h5")[1] == "interrupted\n"
    before = file_bytes(tmp_path / "s.h5")
    rc, out, err = dsurf("plot", "s.h5")
    assert rc == 0, err
    assert len(out.split()) == 8  # four kinds of picture, of loss and of accuracy
    assert file_bytes(tmp_path / "s.h5") == before  # plotting only reads


def test_1d_resume_with_another_batch_size(dsurf, run_args, tmp_path, monkeypatch):
    rc, _, err = dsurf(*run_args, "--x", "-1:1:7", "--out", "ref.h5", "--chunk-size", "3")
    assert rc == 0, err
    interrupt_on_call(monkeypatch, 2)
    assert dsurf(*run_args, "--x", "-1:1:7", "--out", "s.h5", "--chunk-size", "3")[0] == 130
    partial = read_surface(str(tmp_path / "s.h5"))
    assert partial.status == "interrupted" and partial.done.tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert np.isnan(partial.metrics["train_loss"][3:]).all()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    # execution settings (batch size, chunk size) may change on resume; the surface may not
    rc, _, err = dsurf(
        *run_args, "--x", "-1:1:7", "--out", "s.h5", "--chunk-size", "1", "--batch-size", "5", "--resume"
    )
    assert rc == 0, err
    final, ref = read_surface(str(tmp_path / "s.h5")), read_surface(str(tmp_path / "ref.h5"))
    np.testing.assert_array_equal(
        final.metrics["train_loss"][:3], ref.metrics["train_loss"][:3]
    )  # kept as they were
    np.testing.assert_allclose(final.metrics["train_loss"], ref.metrics["train_loss"], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(final.metrics["train_acc"], ref.metrics["train_acc"])
    assert int(final.timings["points"].sum()) == 7 and len(final.timings) == 1 + 4
