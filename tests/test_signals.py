"""Interruption with warning, in one process: SIGUSR1 finishes the chunk in hand, SIGTERM abandons it;
either way the file is closed as "interrupted", `dsurf run` exits 3, and `--resume` completes it."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from distributed_surface.storage import Status
from distributed_surface.core.evaluate import SurfaceEvaluator
from distributed_surface.engine.stop import Interrupted, StopRequest
from distributed_surface.storage import read_surface
from helpers import overwritten_chunks

GRID = ["--x", "-1:1:3", "--y", "-0.5:0.5:4", "--chunk-size", "2"]


def signal_on_call(monkeypatch, n, signum):
    """SurfaceEvaluator.evaluate sends ``signum`` to this process during its n-th call, then returns
    that call's values as usual (a signal arriving in the middle of a chunk)."""
    real = SurfaceEvaluator.evaluate
    calls = {"n": 0}

    def evaluate(self, offsets):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signum)
        return real(self, offsets)

    monkeypatch.setattr(SurfaceEvaluator, "evaluate", evaluate)
    return calls


@pytest.mark.parametrize(
    "signum, chunks_kept",
    [(signal.SIGUSR1, 3), (signal.SIGTERM, 2), (signal.SIGINT, 2)],
    ids=["USR1-finishes-its-chunk", "TERM-abandons-it", "INT-abandons-it"],
)
def test_signal_stops_the_run_and_resume_completes(signum, chunks_kept, dsurf, run_args, tmp_path, monkeypatch):
    rc, _, err = dsurf(*run_args, *GRID, "--out", "full.h5")
    assert rc == 0, err
    reference = read_surface(str(tmp_path / "full.h5"))

    calls = signal_on_call(monkeypatch, 3, signum)
    rc, _, err = dsurf(*run_args, *GRID, "--out", "s.h5")
    assert rc == Status.INTERRUPTED.exit_code, err
    assert "interrupted" in err and "--resume" in err
    assert calls["n"] == 3, "no chunk is started after the signal"
    partial = read_surface(str(tmp_path / "s.h5"))
    assert partial.status == "interrupted"
    assert int(partial.done.sum()) == 2 * chunks_kept
    assert [r.decode() for r in partial.runs["status"]] == ["interrupted"]
    # The signal handlers are gone after the run.
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)

    # (the patched evaluate signals on its 3rd call only: the resume runs undisturbed)
    rc, _, err = dsurf(*run_args, *GRID, "--out", "s.h5", "--resume")
    assert rc == 0, err
    final = read_surface(str(tmp_path / "s.h5"))
    assert final.status == "complete"
    np.testing.assert_array_equal(final.metrics["train_loss"], reference.metrics["train_loss"])
    assert int(final.timings["points"].sum()) == final.done.size, "no done point computed again"
    assert overwritten_chunks(final.path) == 0


def test_abandoning_signal_interrupts_only_abandonable_sections():
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # outside: only noted
        assert stop.requested and stop.signal_name == "SIGTERM"
        with pytest.raises(Interrupted):
            with stop.abandonable():  # a stop already requested abandons at once
                pass
    fresh = StopRequest().install()
    try:
        with pytest.raises(Interrupted):
            with fresh.abandonable():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # the handler runs between bytecodes
                    pass
    finally:
        fresh.uninstall()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_usr1_after_term_still_abandons():
    """The batch script forwards a USR1 to every rank after SLURM's TERM: the TERM must still count."""
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.signal_name == "SIGUSR1"
        with pytest.raises(Interrupted):
            with stop.abandonable():
                pass
    with StopRequest() as graceful:
        os.kill(os.getpid(), signal.SIGUSR1)
        with graceful.abandonable():  # USR1 alone: the chunk in hand is finished
            pass
        assert graceful.requested
