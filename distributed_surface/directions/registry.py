"""The registry of direction kinds: which kinds there are, and which one a config selects.

Kinds are found in three places:

- the built-in ones, one line each in :data:`BUILTIN` (``"name": "module:Class"``, imported on first
  use);
- installed packages that declare an entry point in the group ``distributed_surface.directions``
  (``toy = "my_package.toy:ToyKind"``: a :class:`~.base.DirectionKind` subclass or instance), looked up
  once per process (:func:`refresh` looks again);
- :func:`register` in this process (a kind that only one process knows cannot be used under
  ``mpirun``, where every rank must select the same kind: declare an entry point there).

A config selects the kind whose settings it gives (``--to``, ``--plane``, ...), or the kind that
``--directions NAME`` names, or else :data:`DEFAULT`. Two kinds selected at once are refused.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from ..core.errors import UserError
from ..sections import Directions, SurfaceEvaluation
from ..settings import declared
from .base import DirectionKind

ENTRY_POINT_GROUP = "distributed_surface.directions"
# In the order in which they are asked (and named in messages where two are selected at once).
BUILTIN = {
    "interpolate": "distributed_surface.directions.interpolate:Interpolate",
    "plane": "distributed_surface.directions.plane:Plane",
    "bezier": "distributed_surface.directions.bezier:Bezier",
    "pca": "distributed_surface.directions.pca:TrajectoryPCA",
    "file": "distributed_surface.directions.file:DirectionFile",
    "hessian": "distributed_surface.directions.hessian:HessianEigenvectors",
    "random_normal": "distributed_surface.directions.random_normal:RandomNormal",
}
DEFAULT = "random_normal"  # selected where no kind's settings are given

_builtin: dict[str, DirectionKind] | None = None
_found: dict[str, DirectionKind] | None = None  # from entry points
_registered: dict[str, DirectionKind] = {}  # in this process


def register(kind: DirectionKind | type[DirectionKind]) -> DirectionKind:
    """Make ``kind`` (an instance, or a class made with no arguments) known in this process; refused
    where its name is taken. Returns the instance."""
    instance = _instance(kind, repr(kind))
    if instance.name in kinds():
        raise ValueError(f"a direction kind named {instance.name!r} is already known")
    _registered[instance.name] = instance
    return instance


def unregister(name: str) -> None:
    """Forget a kind that :func:`register` made known (built-in and installed kinds stay)."""
    _registered.pop(name, None)


def refresh() -> None:
    """Look up the installed kinds (entry points) again at the next use."""
    global _found
    _found = None


def kinds() -> dict[str, DirectionKind]:
    """Every known kind by name: built-in, installed, registered; in the order they are asked."""
    global _builtin, _found
    if _builtin is None:
        _builtin = {name: _load(spec, f"built-in kind {name!r}") for name, spec in BUILTIN.items()}
    if _found is None:
        _found = {}
        for point in entry_points(group=ENTRY_POINT_GROUP):
            what = f"direction kind {point.name!r} (entry point {point.value!r})"
            instance = _load(point.value, what)
            if instance.name in _builtin or instance.name in _found:
                raise UserError(f"{what}: the name {instance.name!r} is taken")
            _found[instance.name] = instance
    return {**_builtin, **_found, **_registered}


def find(name: str) -> DirectionKind:
    """The kind of this name; a :class:`UserError` where none is known (its code is not installed)."""
    known = kinds()
    if name not in known:
        raise UserError(f"no direction kind {name!r} is installed (known: {', '.join(known)})")
    return known[name]


def selected(config) -> DirectionKind:
    """The kind ``config`` selects; a :class:`UserError` where it selects two."""
    chosen = selected_kinds(config)
    if len(chosen) > 1:
        raise UserError(f"{chosen[0].flag} and {chosen[1].flag} each choose the directions: give one of them")
    return chosen[0] if chosen else kinds()[DEFAULT]


def selected_kinds(config) -> list[DirectionKind]:
    """Every kind ``config`` selects, in the registry's order: those whose settings it gives, and the one
    that ``--directions`` names (which is then a kind's name, not a file's)."""
    known = kinds()
    named = known.get(config.directions.directions) if isinstance(config.directions.directions, str) else None
    if named is not None and named.settings:
        named = None  # a kind with settings of its own is selected by them
    plain = config.replace(directions=None) if named is not None else config
    return [kind for kind in known.values() if kind is named or kind.selects(plain)]


def _load(spec: str, what: str) -> DirectionKind:
    module_name, _, attr = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # an installed kind may fail in any way: say which one
        raise UserError(f"{what} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    return _instance(found, what)


def _instance(kind, what: str) -> DirectionKind:
    instance = kind() if isinstance(kind, type) else kind
    if not isinstance(instance, DirectionKind) or not isinstance(getattr(instance, "name", None), str):
        raise UserError(f"{what} is not a DirectionKind with a name")
    _check_settings(instance, what)
    return instance


def _check_settings(kind: DirectionKind, what: str) -> None:
    """A kind names declared settings: those that select it are the directions' (sections.py), those it
    ignores the directions' or the evaluation's (``--seed``)."""
    selecting = {s.name for s in declared(Directions)}
    ignorable = selecting | {s.name for s in declared(SurfaceEvaluation)}
    for names, known in ((kind.settings, selecting), (kind.ignored_settings, ignorable)):
        for name in names:
            if name not in known:
                raise UserError(f"{what} names the setting {name!r}, which is not a declared setting of the directions")
