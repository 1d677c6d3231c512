"""The interface of a direction kind: where a surface's directions d1 (and d2) come from.

A kind is one class deriving from :class:`DirectionKind`, in one module, found by the registry
(:mod:`.registry`). Everything else is generic and the same for every kind: the grid or ``--points``,
``--params``, the evaluator, the engines, the file, resuming, the pictures and ``dsurf info``. A kind
tells, in order of use:

1. **Which settings select it, and their checks** (before anything is loaded): :attr:`settings`,
   :meth:`selects`, :meth:`check`; the flag named in messages (:attr:`flag`); the settings that have
   no effect on it and are refused where given (:attr:`ignored_settings`).
2. **The defaults it implies**: spans where ``--x`` is not given (:attr:`default_x`,
   :attr:`default_y`), the ``--dir-type`` where it is not given (:attr:`dir_type`), and how many
   directions it gives (:attr:`ndim`: 1 is a curve and refuses ``--y``; 2 is a plane and needs it).
3. **The files it reads** (:meth:`sources`): each is recorded with its sha256, and a resumed run
   refuses other files.
4. **How it makes d1 (and d2)** (:meth:`make`) and, where it has points of its own (a curve rather
   than the grid), those (:meth:`points`); a block of a direction's rows (:meth:`rows`).
5. **Its automatic span** (``--x auto``; :meth:`auto_span`).
6. **What the pictures and ``dsurf info`` say of it**: the :class:`Made` it returns carries a
   one-line description, axis labels, the models to mark and the names of its curves. They are
   written into the file, so that a surface plots and is described without its kind's code.

Settings are read from a :class:`~distributed_surface.config.RunConfig` (``config``: not imported
here, since the config asks the registry which kind it selects), by section (``config.directions.to``,
``config.evaluation.seed``) or by name (``config.value("to")``). A kind with
settings of its own (``--to``, ``--plane``, ...) selects itself from them; a kind without any is
selected by giving its name to ``--directions`` (``--directions hessian``).

Two rules keep the command line fast and the runs distributable:

- A kind's module is imported to check the settings, before torch is: import torch and the core's
  tensor modules inside :meth:`make` (and the methods it calls), not at the top of the module.
- :meth:`make` may run on every rank of an MPI job together, not only on rank 0: it must give the
  same directions on every rank from the same settings and θ0 (seeded randomness, files read, no
  state of one rank).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:  # (torch-free at run time: see the module's docstring)
    import torch

    from ..core.grid import PointList


@dataclass
class Made:
    """What :meth:`DirectionKind.make` gives: the directions and what the file records of them.

    ``directions``: d1 (and d2), each ``{parameter name: tensor}`` over the base tensors' names and
    shapes, on the CPU. ``description``: one line for ``dsurf info`` and the pictures' titles ("line to
    b", "plane through b and c"). ``axis_labels``: one label per direction for the pictures' axes (none:
    the generic "x: offset along direction d1"); ``short_labels``: shorter ones for 3D pictures (none:
    ``axis_labels``). ``markers``: the models to mark, ``{"label": str, "at": [a] or [a, b]}``.
    ``curves``: the name of each curve of the kind's own points (:meth:`DirectionKind.points`), by its
    index. ``trajectory``: checkpoints' projections to draw (``x``, ``y``, ``names``,
    ``explained_variance_ratio``). ``record``: further attributes stored with the directions (numbers
    and strings: a seed, a norm)."""

    directions: list[dict[str, torch.Tensor]]
    description: str
    axis_labels: list[str] = field(default_factory=list)
    short_labels: list[str] = field(default_factory=list)
    markers: list[dict] = field(default_factory=list)
    curves: list[str] = field(default_factory=list)
    trajectory: dict | None = None
    record: dict = field(default_factory=dict)


class DirectionKind(ABC):
    """One source of directions. Subclass it, set :attr:`name` and implement :meth:`make`; override the
    rest where the defaults (a kind selected by ``--directions NAME`` that gives as many drawn
    directions as the grid has axes) do not fit."""

    #: The kind's name: stored as the ``kind`` attribute of the file's directions, and, for a kind
    #: without settings of its own, what ``--directions`` names to select it.
    name: ClassVar[str]
    #: The declared settings (of the ``Directions`` section, sections.py) that select it; none: it is
    #: selected by ``--directions NAME``.
    settings: ClassVar[tuple[str, ...]] = ()
    #: How many axes its points have: 1 (a curve: ``--y`` refused), 2 (a plane: ``--y`` needed), or
    #: None (as many as the grid's axes or ``--points``' columns, or known only once made).
    ndim: ClassVar[int | None] = None
    #: Spans of the axes where ``--x`` (and ``--points``) is not given; None: the config's default.
    default_x: ClassVar[str | None] = None
    default_y: ClassVar[str | None] = None
    #: The ``--dir-type`` it implies where none is given (None: the config's default, weights).
    dir_type: ClassVar[str | None] = None
    #: Settings that have no effect on its directions: refused where given.
    ignored_settings: ClassVar[tuple[str, ...]] = ()
    #: Whether it makes its own points (:meth:`points`), so that ``--points`` is refused.
    own_points: ClassVar[bool] = False
    #: Added to "FLAG draws a curve: leave out --y" for a 1-D kind (say what spans a plane instead).
    curve_hint: ClassVar[str] = ""

    @property
    def flag(self) -> str:
        """The flag that selects it, as messages name it: its first setting's, else ``--directions NAME``."""
        return f"--{self.settings[0].replace('_', '-')}" if self.settings else f"--directions {self.name}"

    def selects(self, config) -> bool:
        """Whether ``config`` selects this kind by its own settings (default: any of :attr:`settings`
        given). A kind without settings is selected by its name (the registry's rule), not here."""
        return any(config.value(name) is not None for name in self.settings)

    def check(self, config) -> None:
        """Refuse, with one :class:`~distributed_surface.errors.UserError` line, a bad value of this
        kind's settings; nothing is loaded yet (default: no checks)."""

    def sources(self, config) -> list[tuple[str, str]]:
        """``(role, path)`` of every file the directions are made from, in a fixed order: recorded with
        their sha256, and compared on ``--resume`` (default: none)."""
        return []

    @abstractmethod
    def make(self, config, problem, base: dict[str, torch.Tensor], ndim: int, device) -> Made:
        """Make d1 (and d2) for θ0 = ``base`` (the model's tensors that move: ``--dir-type``), on the CPU.
        ``problem``: the model, data and loss (:class:`~distributed_surface.problem.Problem`); ``ndim``:
        how many directions the points ask for (the grid's axes, or ``--points``' columns; a kind with a
        number of its own gives that, and the grid is checked against it); ``device``: where to compute,
        for kinds that evaluate the model. Runs before ``--params`` restricts the directions. Must give
        the same result on every rank."""

    def points(self, config) -> PointList | None:
        """The kind's own points (a curve), or None for the grid of ``--x``/``--y`` (or ``--points``)."""
        return None

    def auto_span(self, config, made: Made, axis: int, evaluate: Callable[[np.ndarray], dict]) -> tuple[float, float]:
        """The span of automatic axis ``axis`` (0: x, 1: y; ``--x auto``). Default: out along the
        direction, both ways, to where the loss has risen ``--auto-rise`` times (``evaluate`` gives the
        measurements of a batch of offsets)."""
        from ..span import drawn_span

        return drawn_span(evaluate, len(made.directions), axis, config.directions.auto_rise)

    def rows(self, made: Made, axis: int, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (of the first dimension; a 0-d tensor has one row) of tensor ``name`` of
        direction ``axis``, for a rank that holds only those rows of the model. This default slices the
        whole direction that :meth:`make` made; a kind that can make a block alone (a checkpoint read
        memory-mapped, a seeded stream) overrides it so that no rank needs a whole direction."""
        tensor = made.directions[axis][name]
        return (tensor.reshape(1) if tensor.dim() == 0 else tensor)[start:stop]
