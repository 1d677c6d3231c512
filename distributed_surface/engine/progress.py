"""Progress of a run in grid points: a bar on a terminal, and lines in logs.

On a terminal, a tqdm bar on stderr. Where stderr is not a terminal (a SLURM log, CI), a line every
``LOG_SECONDS`` or every ``LOG_FRACTION`` of the grid, whichever comes first, and one at the end:
points done, the rate of this run, and the time left at that rate.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

LOG_SECONDS = 30.0
LOG_FRACTION = 0.05


class Progress:
    """Points done of ``total`` (``initial`` of them before this run)."""

    def __init__(self, total: int, initial: int, *, enabled: bool = True, stream=None, clock=time.monotonic):
        self.stream = stream or sys.stderr
        self.total, self.done, self.initial = total, initial, initial
        self.enabled = enabled and initial < total
        self._clock = clock
        self._started = clock()
        self._bar = None
        self._logged_at, self._logged_done = self._started, initial
        if self.enabled and _is_terminal(self.stream):
            self._bar = tqdm(total=total, initial=initial, unit="pt", desc="surface", file=self.stream, dynamic_ncols=True)

    def update(self, points: int) -> None:
        self.done += points
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(points)
            return
        now = self._clock()
        if now - self._logged_at >= LOG_SECONDS or self.done - self._logged_done >= LOG_FRACTION * self.total:
            self._log(now)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.done != self._logged_done:
            self._log(self._clock())

    def line(self, now: float) -> str:
        """``surface: 1234/2601 points (47.4%), 12.3 points/s, 1:51 left``."""
        elapsed = max(now - self._started, 1e-9)
        rate = (self.done - self.initial) / elapsed
        text = f"surface: {self.done}/{self.total} points ({100.0 * self.done / max(1, self.total):.1f}%)"
        if rate > 0:
            left = (self.total - self.done) / rate
            text += f", {rate:.3g} points/s, {_clock_time(left)} left"
        return text

    def _log(self, now: float) -> None:
        print(f"dsurf: {self.line(now)}", file=self.stream, flush=True)
        self._logged_at, self._logged_done = now, self.done


def _clock_time(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
