"""Stopping a run on a signal without losing work.

SLURM warns a job before its time limit or a preemption with a signal (``--signal=USR1@SECONDS``)
and ends it with SIGTERM, then SIGKILL. On SIGUSR1 a run finishes the chunk in hand and stops; on
SIGTERM or SIGINT it abandons the chunk in hand at once (it would not finish before the SIGKILL).
Either way every finished chunk is in the file, the file is closed with status ``interrupted``, and
``--resume`` continues it.
"""

from __future__ import annotations

import contextlib
import signal
import threading

GRACEFUL_SIGNALS = (signal.SIGUSR1,)
ABANDONING_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """Raised in the main thread to abandon the chunk in hand. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` in user code swallows it."""


class StopRequest:
    """Signal handlers that turn SIGUSR1/SIGTERM/SIGINT into a stop request.

    ``requested`` becomes True on any of them. An abandoning signal that arrives inside an
    ``abandonable()`` section (evaluating a chunk) also interrupts it with :class:`Interrupted`;
    anywhere else (storing a chunk, talking to the coordinator) it only sets the flag, so a chunk is
    stored whole or not at all and no message of the engine's protocol is cut in half.
    """

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None
        # Set for good by SIGTERM/SIGINT: a USR1 after it (the batch script forwards one) must not undo it.
        self.abandon = False
        self._abandonable = False
        self._previous = {}
        self._depth = 0

    def install(self) -> "StopRequest":
        """Install the handlers (only possible from the main thread; elsewhere a no-op). Installing
        again (a run inside a command that installed them already) only counts: the handlers go when
        the outermost ``uninstall`` comes."""
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            for sig in GRACEFUL_SIGNALS + ABANDONING_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth:
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> "StopRequest":
        return self.install()

    def __exit__(self, *exc) -> bool:
        self.uninstall()
        return False

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if signum in ABANDONING_SIGNALS:
            self.abandon = True
            if self._abandonable:
                self._abandonable = False
                raise Interrupted(self.signal_name)

    @contextlib.contextmanager
    def abandonable(self):
        """A section that an abandoning signal may cut short (evaluating a chunk)."""
        # Open the section first, then look: a signal between the two is then never missed.
        self._abandonable = True
        if self.abandon:
            self._abandonable = False
            raise Interrupted(self.signal_name)
        try:
            yield
        finally:
            self._abandonable = False


class NoStop(StopRequest):
    """A stop request that no signal sets (library use, tests)."""

    def install(self) -> "NoStop":
        return self
