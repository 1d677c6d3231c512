"""Progress in logs: where stderr is not a terminal, a line every 30 s or 5 % of the points."""

from __future__ import annotations

import io

from distributed_surface.engine.progress import LOG_FRACTION, LOG_SECONDS, Progress


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_line_every_five_percent_of_the_points():
    stream, clock = io.StringIO(), Clock()
    progress = Progress(total=1000, initial=0, stream=stream, clock=clock)
    for _ in range(100):  # 1 % a step, 0.1 s apart: only the 5 % rule fires
        clock.now += 0.1
        progress.update(10)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == round(1 / LOG_FRACTION)
    assert lines[0].startswith("dsurf: surface: 50/1000 points (5.0%)") and "points/s" in lines[0] and "left" in lines[0]
    assert lines[-1].startswith("dsurf: surface: 1000/1000 points (100.0%)")


def test_a_line_every_thirty_seconds_when_points_come_slowly():
    stream, clock = io.StringIO(), Clock()
    progress = Progress(total=10_000, initial=2_000, stream=stream, clock=clock)
    for _ in range(10):
        clock.now += LOG_SECONDS / 2
        progress.update(1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5  # every other update: 30 s apart, far below 5 % each
    # the rate is this run's (1 point per 15 s), not counting the points done before it
    assert "2002/10000" in lines[0] and "0.0667 points/s" in lines[0]
    assert lines[-1].endswith("2010/10000 points (20.1%), 0.0667 points/s, 33:17:30 left")  # 7,990 points at that rate


def test_nothing_where_disabled_or_already_complete():
    for progress in (Progress(10, 0, enabled=False, stream=io.StringIO()), Progress(10, 10, stream=io.StringIO())):
        progress.update(5)
        progress.close()
        assert progress.stream.getvalue() == ""
