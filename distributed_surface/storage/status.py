"""How a run ends, what a file's ``status`` attribute says, and what ``dsurf run`` exits with: one enum.

The file stores the member's value (the same words as always: ``running``, ``complete``, ...).
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A surface file's status, or the outcome of a run on it.

    ``running``: a run is writing the file (also a file whose run was killed without warning: no run
    holds its lock then). ``complete``, ``interrupted`` (stopped by a signal: ``--resume`` continues
    it), ``failed`` (its run failed: ``--resume`` continues it): how a run ends, and so the file's
    status after it. ``unchanged``: what a run that was to replace a file (``--overwrite``) and stopped
    before its first chunk leaves, the old file as it was; never the status of a file."""

    RUNNING = "running"
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    UNCHANGED = "unchanged"

    @property
    def exit_code(self) -> int:
        """What ``dsurf run`` exits with after a run that ended so."""
        if self not in _EXIT_CODES:
            raise ValueError(f"no run ends {self.value!r}")
        return _EXIT_CODES[self]


# A run stopped by a signal (SIGUSR1, SIGTERM, SIGINT) exits 3, and so does one that left the file it was
# to replace unchanged: batch scripts requeue on it. A failed run ends through its UserError: exit 2,
# as every user mistake.
_EXIT_CODES = {Status.COMPLETE: 0, Status.INTERRUPTED: 3, Status.UNCHANGED: 3, Status.FAILED: 2}
# How a run ends, and so the file's status after it.
RUN_STATUSES = (Status.COMPLETE, Status.INTERRUPTED, Status.FAILED)
# Every status a file holds.
STATUSES = (Status.RUNNING, *RUN_STATUSES)
