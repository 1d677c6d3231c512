"""One writer per surface file: ``SURFACE.h5.lock``, held with ``flock`` while a run writes.

The lock file names its holder (host, pid, start time, SLURM job). The kernel (or the NFS lock
manager, on a shared file system: Linux takes flock there as a lock of the whole file) holds the
lock for exactly as long as the holding process lives:
a run that dies, however it dies, releases it, and the next run takes the lock over and says whose
it was. A second run while the first one lives is refused with one line naming the holder. Readers
(``dsurf info``, ``plot``) never take the lock; :func:`holder` tells them whether a live run holds it.

Taking the lock for a run (:func:`take_lock`) also removes the temporary files that dead runs left
beside the file: only the lock's holder makes them.

Where the file system has no locks (some Lustre and FUSE mounts), the lock file alone decides: it is created exclusively,
and a leftover one is taken over where its process is gone from this host.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..core.errors import UserError
from .create import leftover_temporaries

# flock fails with these where the file system does not lock (some FUSE and Lustre mounts).
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
# A reader's probe (holder()) holds a shared lock for an instant: a writer retries that long.
_RETRIES, _RETRY_SECONDS = 5, 0.05


def lock_path(surface: str | os.PathLike) -> Path:
    """``SURFACE.h5.lock`` beside the file itself (links resolved: two names of one file share a lock)."""
    return Path(f"{os.path.realpath(os.fspath(surface))}.lock")


def describe(owner: dict) -> str:
    """``pid 123 on node7 since 2026-12-01T10:00:00 (SLURM job 42)``."""
    text = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
    if owner.get("started"):
        text += f" since {owner['started']}"
    if owner.get("slurm_job"):
        text += f" (SLURM job {owner['slurm_job']})"
    return text


class WriterLock:
    """The lock of one surface file, taken with :meth:`acquire` and given back with :meth:`release`."""

    def __init__(self, surface: str | os.PathLike):
        self.surface = os.fspath(surface)
        self.path = lock_path(surface)
        self._fd: int | None = None
        self.previous: dict | None = None  # the dead run whose lock this one took over, if any

    def acquire(self) -> "WriterLock":
        """Take the lock, or raise :class:`UserError` naming the live run that holds it. Where a dead
        run left its lock file, ``previous`` describes that run afterwards."""
        if self._fd is not None:
            return self
        for _ in range(_RETRIES):
            try:
                fd, created = _open_or_create(self.path)
            except FileNotFoundError:
                continue  # released between the two tries: try again
            except OSError as exc:
                raise UserError(f"{self.surface!r}: cannot create its lock file {str(self.path)!r}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in _NO_LOCKING:
                    return self._hold_without_locking(fd, created)
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise UserError(f"{self.surface!r}: cannot lock {str(self.path)!r}: {exc.strerror}") from None
                time.sleep(_RETRY_SECONDS)  # held: by a live run, or by a reader's probe for an instant
                continue
            # A run that releases its lock unlinks the file first: make sure ours is still the one there.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self.previous = _read_owner(fd)
            _write_owner(fd)
            self._fd = fd
            return self
        owner = read_owner(self.path)
        raise UserError(
            f"{self.surface!r} is being written by another run ({describe(owner)}): one run writes a surface "
            f"at a time; wait for it, or stop it (its lock: {str(self.path)!r})"
        )

    def _hold_without_locking(self, fd: int, created: bool) -> "WriterLock":
        """No locks on this file system: the lock file's existence is the lock. The run that created it
        holds it; a leftover one is taken over where its process is gone from this host (renamed aside
        first: of two runs that find it, only one succeeds)."""
        if created:
            _write_owner(fd)
            self._fd = fd
            return self
        owner = _read_owner(fd)
        os.close(fd)
        if owner.get("host") == socket.gethostname() and not _alive(owner.get("pid")):
            aside = self.path.with_name(f"{self.path.name}.{os.getpid()}.stale")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                pass  # another run took it over first: it holds the lock now, or released it
            else:
                aside.unlink(missing_ok=True)
                self.previous = owner
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = read_owner(self.path)
            else:
                _write_owner(fd)
                self._fd = fd
                return self
        raise UserError(
            f"{self.surface!r} is being written by another run ({describe(owner)}), or was: this file system has "
            f"no locks to tell; remove {str(self.path)!r} where that run is gone"
        )

    def release(self) -> None:
        """Remove the lock file and give back the lock (unlinked first, so that a run waiting on this
        inode sees that it is gone)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only or vanished directory: the lock itself goes with the descriptor
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(surface: str | os.PathLike) -> dict | None:
    """The live run that holds the lock of ``surface`` (its owner record), or None where none does."""
    path = lock_path(surface)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return _read_owner(fd) or {}
            owner = _read_owner(fd)  # no locks here: the record and the process decide
            mine = owner.get("host") == socket.gethostname()
            return owner if owner and (not mine or _alive(owner.get("pid"))) else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _open_or_create(path: Path) -> tuple[int, bool]:
    """The lock file open for writing, and whether this call created it."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        return os.open(path, os.O_RDWR), False


def read_owner(path: Path) -> dict:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return {}
    try:
        return _read_owner(fd)
    finally:
        os.close(fd)


def _read_owner(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        owner = json.loads(text) if text else {}
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_owner(fd: int) -> None:
    owner = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
    }
    data = (json.dumps(owner) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def take_lock(path: str) -> WriterLock:
    """The file's writer lock, and the leftovers of runs that died removed (they held it last)."""
    lock = WriterLock(path).acquire()
    if lock.previous:
        print(f"dsurf: took over the lock of {path!r} from a run that is gone ({describe(lock.previous)})", file=sys.stderr)
    for leftover in leftover_temporaries(path):
        try:
            leftover.unlink()
            print(f"dsurf: removed {str(leftover)!r}, left by a run that was killed", file=sys.stderr)
        except OSError:
            pass
    return lock
