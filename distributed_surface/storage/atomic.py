"""Writing a whole file at once, and the one rule for every output.

Every file the tool writes is built under a temporary name beside its target (:func:`temporary_path`)
and renamed over it in one step (:func:`publish`), so a reader, a kill or a full disk never leaves half
a file under the target's name. The rule: an existing file the tool did not write is never replaced,
unless the user says so (``--force``); a target that is not a regular file (a FIFO, a device) is
refused, never read and never replaced. Surfaces keep their own flags (``--overwrite``, ``--resume``)
and are recognised by their ``format`` attribute; they are built here too, by the run
(:mod:`.create`), and published once they hold a chunk.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from ..core.errors import UserError

# What the tool writes into its text outputs (exports, batch scripts) and pictures' metadata, so that
# it knows them again.
MARK = "written by distributed_surface"
# Where the mark is looked for: the head of a file, and its tail (a PDF's information dictionary).
_MARK_WINDOW = 64 * 2**10


def temporary_path(path: str | os.PathLike) -> Path:
    """Where a new file is built before it is published under ``path``: hidden, next to it, named
    after this process."""
    target = Path(path)
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def publish(temporary: Path, path: str | os.PathLike) -> None:
    """Rename a finished temporary file over ``path``, in one step."""
    os.replace(temporary, path)


def remove(path: Path) -> None:
    """Remove ``path`` where it exists; a failure to is no error (it is a temporary)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def check_target(path: str | os.PathLike, *, flag: str = "--out") -> None:
    """Fail early, with one line, where a file cannot be written at ``path``: a directory (or a path
    ending in a separator), something there that is not a regular file (it is not even opened: a FIFO
    would block a read), a missing directory, a read-only file system, no permission."""
    text = os.fspath(path)
    target = Path(text)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir() or text.endswith(("/", os.sep)):
        raise UserError(f"{flag} {text!r} is a directory")
    refuse_special(target, flag=flag)
    if not parent.is_dir():
        raise UserError(f"{flag} {text!r}: directory {str(parent)!r} does not exist")
    if _read_only(parent):
        raise UserError(f"{flag} {text!r}: {str(parent)!r} is on a read-only file system")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {text!r}: permission denied")


def refuse_special(path: Path, *, flag: str = "--out") -> None:
    """Refuse a ``path`` that exists and is not a regular file (links followed: ``/dev/stdout``)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # nothing there (or a dangling link, which the rename replaces)
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise UserError(f"{flag} {str(path)!r} is not a regular file (a pipe, a device or a socket): name a file")


def _read_only(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_replaceable(
    path: str | os.PathLike, *, ours: Callable[[Path], bool], force: bool, who: str, flag: str = "--out",
    force_flag: str | None = "--force",
) -> None:
    """The rule: an existing ``path`` is replaced only where ``ours(path)`` says the tool wrote it, or
    with ``force``; else :class:`UserError` names the flag that would replace it (``force_flag``; None:
    the command has none). ``who``: what writes it, for the message ("an export")."""
    target = Path(path)
    refuse_special(target, flag=flag)
    if not target.exists() or force or ours(target):
        return
    remedy = f"pass {force_flag} to replace it" if force_flag else f"remove it, or choose another {flag}"
    raise UserError(f"{flag} {str(target)!r} exists and {who} did not write it: {remedy}")


def write_atomically(
    path: str | os.PathLike, write: Callable[[Path], None], *, ours: Callable[[Path], bool], force: bool = False,
    who: str, flag: str = "--out", force_flag: str | None = "--force",
) -> Path:
    """Write a whole file at ``path``: ``write(temporary)`` fills a temporary beside it, which is
    synced to disk and renamed over ``path`` in one step, so ``path`` holds the old file or the new one,
    never a part. A target that cannot be written is refused first (:func:`check_target`), and an
    existing file is replaced only under :func:`check_replaceable`'s rule. A failure removes the
    temporary; an ``OSError`` becomes a :class:`UserError` naming ``path``."""
    target = Path(path)
    check_target(target, flag=flag)
    check_replaceable(target, ours=ours, force=force, who=who, flag=flag, force_flag=force_flag)
    temporary = temporary_path(target)
    try:
        write(temporary)
        _sync(temporary)
        publish(temporary, target)
    except BaseException as exc:
        remove(temporary)
        if isinstance(exc, OSError):
            raise UserError(f"{flag} {str(target)!r}: writing it failed ({exc.strerror or exc})") from None
        raise
    return target


def _sync(path: Path) -> None:
    """The file's bytes on disk before it is renamed: a crash of the machine then leaves the old file
    or the whole new one. (The surface, published by its run, is not synced here: its crash safety is
    against a killed process, which loses nothing the page cache holds.)"""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def carries_mark(path: Path) -> bool:
    """Whether :data:`MARK` is in the head or the tail of the file at ``path`` (a regular file only:
    nothing else is opened)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as handle:
            head = handle.read(_MARK_WINDOW)
            size = handle.seek(0, os.SEEK_END)
            tail = b""
            if size > _MARK_WINDOW:
                handle.seek(max(_MARK_WINDOW, size - _MARK_WINDOW))
                tail = handle.read()
    except OSError:
        return False
    mark = MARK.encode()
    return mark in head or mark in tail
