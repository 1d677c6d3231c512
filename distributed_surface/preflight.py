"""What can be checked of a run's inputs without loading anything: every file and folder it will read
exists. ``dsurf sbatch`` runs these checks before it writes or prints a batch script, so that a missing
checkpoint fails now, in one line, not in the queue hours later (``dsurf run`` meets the same mistakes
when it loads them, with its own messages).

Torch-free: only paths are looked at, nothing is read.
"""

from __future__ import annotations

from pathlib import Path

from .core.errors import UserError

# Data and model specs whose path follows a prefix (a model folder, a corpus, a saved data set).
_PATH_PREFIXES = ("hf:", "text:", "hf-dataset:")


def check_inputs_exist(config) -> None:
    """Refuse, in one line, a run config (:class:`~.config.RunConfig`) that names a file or folder that is
    not there: the model's and the data's files, the checkpoint, the tokenizer, ``--points``, and every
    file its directions are made from."""
    problem = config.problem
    for flag, spec in (("--model", problem.model), ("--data", problem.data), ("--test-data", problem.test_data)):
        if spec is not None:
            _check_spec(flag, str(spec))
    for flag, path in (("--checkpoint", problem.checkpoint), ("--tokenizer", problem.tokenizer),
                       ("--points", config.directions.points)):  # fmt: skip
        if path is not None and not Path(path).exists():
            raise UserError(f"{flag} {path!r}: no such file or folder")
    flag = config.direction_kind.flag
    for role, path in config.direction_kind.sources(config):
        if not _path_of(str(path)).exists():
            named = flag if flag == f"--{role}" else f"{flag} ({role})"
            raise UserError(f"{named} {path!r}: no such file or folder")


def _check_spec(flag: str, spec: str) -> None:
    """A model or data spec: a prefixed path, or ``path/file.py:callable`` (a module name is imported only
    when the run starts)."""
    if spec.startswith(_PATH_PREFIXES):
        if not _path_of(spec).exists():
            raise UserError(f"{flag} {spec!r}: no such file or folder")
        return
    module, sep, _ = spec.rpartition(":")
    if sep and module.endswith(".py") and not Path(module).is_file():
        raise UserError(f"{flag} {spec!r}: no such file {module!r}")


def _path_of(spec: str) -> Path:
    for prefix in _PATH_PREFIXES:
        if spec.startswith(prefix):
            return Path(spec[len(prefix) :])
    return Path(spec)
