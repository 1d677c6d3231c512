"""Landscapes from a notebook: compute a surface from live objects in this process, open a file, look.

    import distributed_surface.notebook as ds

    surface = ds.compute(model, dataset, out="net.h5", x="-1:1:21", y="-1:1:21")
    surface.values["train_loss"]   # numpy, NaN where not computed
    surface.plot()                 # {name: matplotlib Figure}
    surface                        # in Jupyter: a picture and what `dsurf info` says

:func:`compute` runs ``dsurf run`` on the serial engine in this process: the same settings (any of
``dsurf run``'s, by name), the same checks, the same file and the same resume; a mistake raises
:class:`~.core.errors.UserError` with the line the command would print. An interrupted cell
(Ctrl-C, the kernel's "interrupt") leaves the file ``interrupted`` and its lock released, and raises
KeyboardInterrupt; calling :func:`compute` again resumes it. :func:`cluster_files` writes the same run
as a TOML config and a ``dsurf sbatch`` batch script, for objects a cluster job can import.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
from pathlib import Path

from . import live
from .core.errors import UserError

# What may stand for each role: an import string always; else these live objects.
_ROLES = ("model", "data", "test_data", "loss")


def compute(model, data, *, out, loss="cross_entropy", test_data=None, resume: bool | None = None,
            overwrite: bool = False, progress: bool = True, **settings) -> "Surface":  # fmt: skip
    """Compute the surface of ``model`` on ``data`` into the file ``out`` and return it.

    ``model``: an ``nn.Module`` holding θ0 (a copy is evaluated: the module given is left as it is), or
    an import string as ``--model`` takes. ``data``, ``test_data``: a ``Dataset``, a ``DataLoader`` (its
    dataset), an ``(inputs, targets)`` pair of tensors, a dict of tensors with ``labels``, or an
    import string. ``loss``: a built-in name (``cross_entropy``, ``causal_lm``, ``mse``), a callable
    ``loss(outputs, targets)``, or an import string. ``settings``: any setting of ``dsurf run`` by its
    name (``x="-1:1:21"``, ``seed=3``, ``norm="layer"``, ``max_samples=500`` ...). ``resume``: None
    continues an existing file (and returns a complete one as it is), False refuses one; ``overwrite``
    replaces it."""
    from .config import RunConfig
    from .engine.stop import StopRequest
    from .output import preflight
    from .run import run
    from .storage import Status

    values = {**settings, **_roles(model=model, data=data, test_data=test_data, loss=loss), "out": str(out)}
    config = RunConfig.build(**values)
    if resume is None:
        resume = Path(out).exists() and not overwrite
    preflight(config, resume=resume, overwrite=overwrite)
    stop = StopRequest()
    status = run(config, resume=resume, overwrite=overwrite, progress=progress, stop=stop)
    if stop.requested and status != Status.COMPLETE:
        raise KeyboardInterrupt(f"{out}: {status}; finished chunks are saved: call compute again to resume")
    return Surface(out)


def cluster_files(config: str | Path, *, model: str, data: str, out: str, script: str | Path | None = None,
                  job: dict | None = None, force: bool = False, **settings) -> tuple[Path, Path]:  # fmt: skip
    """Write the run of these settings as the TOML file ``config`` and the batch script of ``dsurf
    sbatch config`` (``script``, default beside ``out``; ``job``: sbatch's settings by name, e.g.
    ``{"time": "4:00:00", "nodes": 2, "gpus_per_node": 4}``; ``time`` is required), with every check ``dsurf sbatch`` makes;
    submit with ``sbatch SCRIPT``. A cluster job imports its objects: ``model``, ``data`` (and a
    ``test_data`` or ``loss`` given) are import strings. Neither file replaces one dsurf did not write,
    unless ``force``. Returns both paths."""
    from .cli import batch_script, build_parser, write_batch_script
    from .config import RunConfig
    from .preflight import check_inputs_exist
    from .storage import carries_mark, write_atomically

    values = {**settings, "model": model, "data": data, "out": str(out)}
    for role in _ROLES:
        if role in values and not isinstance(values[role], str):
            raise UserError(f"{role}: a cluster job imports its objects: pass {role} as 'package.module:name' (a live "
                            f"{type(values[role]).__name__} exists only in this process)")  # fmt: skip
    config = Path(config)
    text = _toml(values)
    args = [str(config)] + (["--script", str(script)] if script is not None else [])
    for name, value in (job or {}).items():
        flag = f"--{name.replace('_', '-')}"
        args += [flag] if value is True else [] if value is False else [flag, str(value)]
    # Every check before the first file is written: the run's settings and inputs, then sbatch's own.
    check_inputs_exist(RunConfig.build(**values))
    parsed = build_parser().parse_args(["sbatch", *args])
    write_atomically(config, lambda temporary: temporary.write_text(text), ours=carries_mark, force=force,
                     who="distributed_surface.notebook", flag="config")  # fmt: skip
    path, script_text = batch_script(parsed)
    write_batch_script(path, script_text, force=force)
    return config, path


class Surface:
    """A surface file, read: its values (numpy), pictures and summary. :meth:`refresh` reads it again
    (a run may be filling it)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.refresh()

    @classmethod
    def open(cls, path: str | Path) -> "Surface":
        """An existing file (the tool's, or one of the paper's format)."""
        if not Path(path).is_file():
            raise UserError(f"{str(path)!r}: no such file")
        return cls(path)

    def refresh(self) -> "Surface":
        from .storage.paper import read_any_surface

        self._data = read_any_surface(self.path)
        return self

    @property
    def status(self) -> str:
        return self._data.status

    @property
    def progress(self) -> tuple[int, int]:
        """Points done, and in all."""
        return self._data.progress

    @property
    def x(self):
        return self._data.x

    @property
    def y(self):
        """The second axis's coordinates; None for a curve."""
        return self._data.y

    @property
    def config(self) -> dict:
        """The run's settings, by name."""
        return dict(self._data.config)

    @property
    def values(self) -> dict:
        """Each measurement (``train_loss``, ``train_acc``, ``test_loss`` ...) on the grid, NaN where no
        point is computed yet."""
        import numpy as np

        done = self._data.done.astype(bool)
        return {name: np.where(done, values, np.nan) for name, values in self._data.metrics.items()}

    def plot(self, pictures=None, **style) -> dict:
        """The pictures ``dsurf plot`` draws (``pictures`` and ``style`` as its ``--kind``, ``--vmin``,
        ``--vmax``, ``--levels``, ``--log``), as matplotlib figures by name; none saved."""
        from .plot import draw

        return dict(draw(self.path, pictures=pictures, **style))

    def info(self) -> str:
        """What ``dsurf info`` says of the file."""
        from .info import describe_surface

        return describe_surface(self.path)

    def __repr__(self) -> str:
        done, total = self.progress
        return f"<Surface {self.path!r}: {self.status}, {done}/{total} points>"

    def _repr_html_(self) -> str:
        """Jupyter's view: the interactive report of the file (:func:`.report.fragment`: the 3D surface
        to turn, the contour map, the table, what ``dsurf info`` says); without plotly, the first
        picture above the summary."""
        import html

        if not self.progress[0]:
            return f"<pre>{html.escape(self.info())}</pre>"
        try:
            from .report import fragment

            return fragment(self.path, key=f"nb{next(_VIEWS)}")
        except UserError:  # (plotly missing)
            pass
        name, figure = next(iter(self.plot().items()))
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=80)
        encoded = base64.b64encode(buffer.getvalue()).decode()
        picture = f'<img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}"/>'
        return f"<div>{picture}<pre>{html.escape(self.info())}</pre></div>"


# Each view's number: the plots of two views on one notebook page must not share an id.
_VIEWS = itertools.count()


def _roles(**objects) -> dict[str, str]:
    """Each role's import string: given as one, or registered as a live object (:mod:`.live`)."""
    from torch import nn
    from torch.utils.data import DataLoader

    specs = {}
    for role, obj in objects.items():
        if obj is None or isinstance(obj, str):
            if obj is not None:
                specs[role] = obj
            continue
        if role == "model":
            if not isinstance(obj, nn.Module):
                raise UserError(f"model: a torch.nn.Module or an import string, not {type(obj).__name__}")
            specs[role] = live.register(role, obj, copied=True)
        elif role == "loss":
            if not callable(obj):
                raise UserError(f"loss: a built-in name, a callable loss(outputs, targets) or an import string, not {type(obj).__name__}")
            specs[role] = live.register(role, obj)
        else:
            specs[role] = live.register(role, obj.dataset if isinstance(obj, DataLoader) else obj)
    return specs


def _toml(values: dict) -> str:
    """Flat settings as TOML (strings, numbers, booleans and lists of them; None left out)."""
    from .storage import MARK

    lines = [f"# {MARK} (notebook.cluster_files): dsurf run's settings, by name"]
    for name, value in sorted(values.items()):
        if value is not None:
            lines.append(f"{name} = {_toml_value(name, value)}")
    return "\n".join(lines) + "\n"


def _toml_value(name: str, value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else "nan" if math.isnan(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # (a JSON string is a TOML basic string)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(name, item) for item in value) + "]"
    raise UserError(f"{name}: {type(value).__name__} values cannot go into a config file")
