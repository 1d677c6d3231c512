"""Objects handed to the notebook API (:mod:`.notebook`) in this process, by the import string that a
run's config records for them: ``distributed_surface.live:model_Net`` resolves, through the ordinary
import path of ``--model``, to a factory that returns a copy of the model given. The config stays a
config of import strings (checked, stored and compared on resume as any other); only this process can
resolve them, so a file made from live objects resumes from the notebook, not from ``dsurf run``.
"""

from __future__ import annotations

import copy
import re

_FACTORIES: dict[str, object] = {}


def register(role: str, obj, *, copied: bool = False) -> str:
    """The import string under which ``obj`` is found for ``role`` (model, data, test_data, loss): a
    factory returning ``obj`` (a deep copy where ``copied``: the run moves and casts its model's
    weights, and the caller's model must stay as it was), or ``obj`` itself for a loss. The name holds
    the object's type, so that the stored config says what it was."""
    kind = obj.__name__ if role == "loss" and hasattr(obj, "__name__") else type(obj).__name__
    name = f"{role}_{re.sub(r'[^0-9A-Za-z_]', '_', kind)}"
    if role == "loss":
        _FACTORIES[name] = obj
    else:
        _FACTORIES[name] = (lambda: copy.deepcopy(obj)) if copied else (lambda: obj)
    return f"{__name__}:{name}"


def __getattr__(name: str):
    try:
        return _FACTORIES[name]
    except KeyError:
        raise AttributeError(
            f"{name!r} is an object handed to distributed_surface.notebook in another process; "
            "pass it again from the notebook (or give an import string)"
        ) from None
