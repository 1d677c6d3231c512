"""The writer lock on its own: taking, refusing, taking over a dead run's lock, file systems without
locks, and two names of one file."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from distributed_surface.storage import lock as lock_module
from distributed_surface.core.errors import UserError
from distributed_surface.storage.lock import WriterLock, holder, lock_path
from distributed_surface.storage import leftover_temporaries


def dead_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_one_holder_at_a_time_and_the_lock_file_goes_with_it(tmp_path):
    surface = tmp_path / "s.h5"
    first = WriterLock(surface).acquire()
    assert holder(surface)["pid"] == os.getpid()
    with pytest.raises(UserError, match=f"being written by another run \\(pid {os.getpid()} on"):
        WriterLock(surface).acquire()  # (flock locks are per open file: a second one here is refused too)
    first.release()
    assert holder(surface) is None and not lock_path(surface).exists()


def test_a_dead_runs_lock_is_taken_over_and_named(tmp_path):
    surface = tmp_path / "s.h5"
    lock_path(surface).write_text('{"host": "elsewhere", "pid": 4242, "started": "2026-01-01T00:00:00"}\n')
    taken = WriterLock(surface).acquire()  # nobody holds the flock: the run that wrote it is gone
    assert taken.previous == {"host": "elsewhere", "pid": 4242, "started": "2026-01-01T00:00:00"}
    taken.release()


def test_two_names_of_one_file_share_its_lock(tmp_path):
    (tmp_path / "real.h5").write_bytes(b"")
    (tmp_path / "alias.h5").symlink_to(tmp_path / "real.h5")
    assert lock_path(tmp_path / "alias.h5") == lock_path(tmp_path / "real.h5")


def test_without_file_system_locks_the_lock_file_decides(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_module.fcntl, "flock", no_locks)
    surface = tmp_path / "s.h5"
    first = WriterLock(surface).acquire()  # the first run ever: it makes the lock file, and holds it
    assert holder(surface)["pid"] == os.getpid()
    with pytest.raises(UserError, match="no locks to tell"):
        WriterLock(surface).acquire()
    first.release()
    lock_path(surface).write_text(f'{{"host": "{os.uname().nodename}", "pid": {dead_pid()}}}\n')
    taken = WriterLock(surface).acquire()  # a leftover of a process gone from this host
    assert taken.previous["pid"] != os.getpid()
    taken.release()
    assert not list(tmp_path.iterdir())


def test_leftovers_are_named_literally(tmp_path):
    for name in (".s*.h5.123.tmp", ".sX.h5.456.tmp", ".s*.h5.notapid.tmp"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in leftover_temporaries(str(tmp_path / "s*.h5"))] == [".s*.h5.123.tmp"]


HESSIAN = ["--top-k", "2", "--trace-probes", "4", "--density-probes", "1", "--lanczos-steps", "8"]


def test_dsurf_hessian_takes_the_lock_as_dsurf_run_does(dsurf, run_args, tmp_path):
    """One writer at a time, and the leftovers of the runs that died before it removed."""
    args = ["hessian", *run_args[1:], *HESSIAN, "--out", "h.h5"]
    held = WriterLock(tmp_path / "h.h5").acquire()
    rc, out, err = dsurf(*args)
    assert rc == 2 and "being written by another run" in err and not (tmp_path / "h.h5").exists()
    held.release()
    leftover = tmp_path / f".h.h5.{dead_pid()}.tmp"
    leftover.write_bytes(b"half a spectrum")
    rc, out, err = dsurf(*args)
    assert rc == 0, err
    assert not leftover.exists() and f"removed '{leftover.name}'" in err
    assert not lock_path(tmp_path / "h.h5").exists()
