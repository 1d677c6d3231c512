"""Automatic spans (``--x auto``, ``--y auto``): the grid is chosen for the user before the run starts.

What span an axis gets is its directions' kind's choice (``DirectionKind.auto_span``); here are the two
ways the built-in kinds choose:

- Drawn directions (random, or from a file): along each direction, both ways, out to where the first
  split's loss first reaches ``rise`` times its value at θ0, plus a margin. The distance is found with
  a few evaluations: steps doubling from ``FIRST_STEP`` until the loss has risen (at most ``MAX_STEP``),
  then bisection between the last step below and the first above. All points of a round are evaluated
  in one call of the evaluator (a chunk).
- Checkpoint kinds: the models' own coordinates (θ0 and the checkpoints of ``--to``/``--plane`` at 0
  and 1, a trajectory's projected checkpoints) plus a margin of a quarter of their extent
  (:func:`model_span`); a Bézier curve's t from 0 to 1.

The chosen span is printed and stored in the file's config; ``--resume`` keeps it. Where the loss
never rose within ``MAX_STEP`` (a model whose loss stays flat), the span is the search limit: a line
says so, and the file records it (the ``auto_span_notes`` attribute of its directions).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .core.grid import Axis
from .core.measurements import SPLITS, measurement_name

FIRST_STEP, MAX_STEP = 0.125, 16.0
BISECTIONS = 5
MARGIN = 0.1  # of a drawn direction's distance
MODEL_MARGIN = 0.25  # of the extent of the models' coordinates


class Span(tuple):
    """An axis's span ``(lo, hi)``, with a ``note`` where it is not what the search looked for (it stopped
    at its limit). A kind's ``auto_span`` may return a plain tuple: it has no note."""

    def __new__(cls, lo: float, hi: float, note: str = ""):
        span = super().__new__(cls, (lo, hi))
        span.note = note
        return span


def rise_distance(evaluate: Callable[[np.ndarray], dict], ndim: int, axis: int, sign: float, threshold: float) -> float | None:
    """How far from θ0 along ``sign`` × direction ``axis`` the loss first reaches ``threshold``; None
    where it does not within ``MAX_STEP``."""
    loss_name = measurement_name(SPLITS[0], "loss")

    def losses(distances):
        offsets = np.zeros((len(distances), ndim))
        offsets[:, axis] = sign * np.asarray(distances)
        values = evaluate(offsets)[loss_name]
        return np.where(np.isfinite(values), values, np.inf)  # a blown-up model has certainly risen

    steps = [FIRST_STEP * 2**k for k in range(int(math.log2(MAX_STEP / FIRST_STEP)) + 1)]
    values = losses(steps)
    above = np.flatnonzero(values >= threshold)
    if not above.size:
        return None
    high = steps[above[0]]
    low = steps[above[0] - 1] if above[0] > 0 else 0.0
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        if losses([middle])[0] >= threshold:
            high = middle
        else:
            low = middle
    return high


def drawn_span(evaluate: Callable[[np.ndarray], dict], ndim: int, axis: int, rise: float) -> Span:
    """The span of axis ``axis`` for drawn directions: out to ``rise`` times θ0's loss each way, plus the
    margin; the search limit, with a note, on a side where the loss never gets there."""
    loss_name = measurement_name(SPLITS[0], "loss")
    base = float(evaluate(np.zeros((1, ndim)))[loss_name][0])
    threshold = rise * base if base > 0 else 1e-3
    lo = rise_distance(evaluate, ndim, axis, -1.0, threshold)
    hi = rise_distance(evaluate, ndim, axis, +1.0, threshold)
    flat = [side for side, distance in (("-", lo), ("+", hi)) if distance is None]
    note = ""
    if flat:
        note = (f"the loss never reached {rise:g}x its value at θ0 ({threshold:.4g}) within {MAX_STEP:g} on the "
                f"{' and '.join(flat)} side: the span there is the search limit")  # fmt: skip
    return Span(-(MAX_STEP if lo is None else lo) * (1 + MARGIN), (MAX_STEP if hi is None else hi) * (1 + MARGIN), note)


def model_span(coordinates: np.ndarray) -> tuple[float, float]:
    """The span that holds these coordinates (and 0: θ0) with a margin of a quarter of their extent."""
    values = np.concatenate([np.ravel(coordinates), [0.0]])
    lo, hi = float(values.min()), float(values.max())
    extent = hi - lo if hi > lo else 1.0
    return lo - MODEL_MARGIN * extent, hi + MODEL_MARGIN * extent


def resolved_axis(axis: Axis, span: tuple[float, float]) -> str:
    """``MIN:MAX:NUM`` of an automatic axis: the span, rounded outwards to 3 significant digits."""
    lo, hi = span
    return f"{_round(lo, math.floor):g}:{_round(hi, math.ceil):g}:{axis.num}"


def _round(value: float, direction) -> float:
    if value == 0:
        return 0.0
    scale = 10 ** (math.floor(math.log10(abs(value))) - 2)
    return direction(value / scale) * scale


def choose_spans(config, frame, evaluate: Callable[[np.ndarray], dict]) -> tuple[dict[str, str], dict[str, str]]:
    """``MIN:MAX:NUM`` for each automatic axis of ``config`` (a :class:`~.config.RunConfig`), as its
    directions' kind chooses the span from what it made (``frame``: :class:`~.directions.frame.Frame`)
    and, for drawn directions, the loss; and the notes of the axes whose span is not what was looked
    for (by axis name)."""
    chosen, notes = {}, {}
    for index, name in enumerate(("x", "y")):
        if name in config.auto_axes:
            span = frame.kind.auto_span(config, frame.made, index, evaluate)
            chosen[name] = resolved_axis(getattr(config.grid, name), span)
            if getattr(span, "note", ""):
                notes[name] = span.note
    return chosen, notes
