"""The configs of ``dsurf run`` and ``dsurf hessian``: frozen, validated dataclasses of sections
(:mod:`.sections`, each setting declared once), built from a TOML file and command-line flags, stored
as JSON in the file.

The stored JSON is flat (``{"model": ..., "seed": ...}``, each setting by its name), as files written
before the sections were; :meth:`Config.from_json` reads it flat or by sections.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from . import hf, settings, text
from .core.grid import Axis, Grid
from .core.measurements import TEST, TRAIN
from .directions import registry
from .directions.base import DirectionKind
from .core.errors import UserError
from .directions.options import check_dimensions
from .sections import (
    EXAMPLE_MODEL, Comparison, Directions, Evaluation, Output, PictureScale, Problem, Report, Spectrum, SurfaceEvaluation,
)  # fmt: skip

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

AUTO_POINTS = 25  # points of an automatic axis (--x auto); --x auto:NUM for others


class Config:
    """What both commands' configs share: built from flat settings (each by its name), read and written
    flat, validated by their declarations (:mod:`.settings`) and the cross-field checks of each."""

    @classmethod
    def from_values(cls, values: dict):
        """The config of flat ``values`` (names as the settings; the rest: defaults), unchecked."""
        known = settings.settings_of(cls)
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"unknown setting {unknown[0]!r}")
        parts: dict[str, dict] = {attribute: {} for attribute, _ in settings.sections(cls)}
        for name, value in values.items():
            parts[known[name][0]][name] = tuple(value) if isinstance(value, list) else value  # (--plane B C)
        return cls(**{attribute: section(**parts[attribute]) for attribute, section in settings.sections(cls)})

    @classmethod
    def build(cls, **values):
        """Validate ``values`` (names as the settings; None means "not given") and fill defaults.

        Only one of model and data given is an error: the built-in example supplies both or neither."""
        unknown = sorted(set(values) - set(settings.settings_of(cls)))
        if unknown:
            raise UserError(f"unknown setting {unknown[0]!r}")
        given = {k: v for k, v in values.items() if v is not None}
        if ("model" in given) != ("data" in given):
            raise UserError("--model and --data go together (neither: the built-in example)")
        config = cls.from_values(cls._implied(given))
        config.validate()
        return config

    @classmethod
    def _implied(cls, given: dict) -> dict:
        """The settings given, with those that they imply where not given: a model folder's task, loss
        and block length (:func:`.hf.implied`, :func:`.text.implied`)."""
        return text.implied(hf.implied(given))

    def validate(self) -> None:
        """Raise :class:`UserError` for the first bad setting."""
        settings.check_values(self)
        if self.problem.max_test_samples is not None and self.problem.test_data is None:
            raise UserError("--max-test-samples needs --test-data")
        for name in ("hf_task", "trust_remote_code"):
            if self.problem.model is not None and not hf.is_folder_spec(self.problem.model) and self.value(name):
                raise UserError(f"--{name.replace('_', '-')} needs --model hf:DIR (a model folder)")
        text.check_settings(self.problem)

    def value(self, name: str):
        """A setting's value by its name."""
        attribute, _ = settings.settings_of(type(self))[name]
        return getattr(getattr(self, attribute), name)

    def replace(self, **values):
        """This config with some settings (by name) changed, unchecked."""
        return type(self).from_values({**self.flat(), **values})

    def flat(self) -> dict:
        """Every setting by its name."""
        return dict(settings.walk(self))

    @property
    def data_flags(self) -> dict[str, str]:
        """Each split's data import string, under its split's name, and the flag it came from."""
        flags = {TRAIN: f"--data {self.problem.data!r}"}
        if self.problem.test_data is not None:
            flags[TEST] = f"--test-data {self.problem.test_data!r}"
        return flags

    @property
    def is_example(self) -> bool:
        return self.problem.model == EXAMPLE_MODEL

    def to_json(self) -> str:
        """Flat: each setting by its name (the file format's ``config`` attribute)."""
        return json.dumps(self.flat(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        """The config a file stored, flat or by sections; settings this config does not hold (those of
        the other command, or of older versions) are left out."""
        values = json.loads(text)
        attributes = {attribute for attribute, _ in settings.sections(cls)}
        flat = {}
        for key, value in values.items():
            if key in attributes and isinstance(value, dict):
                flat.update(value)
            else:
                flat[key] = value
        known = settings.settings_of(cls)
        return cls.from_values({k: v for k, v in flat.items() if k in known})


@dataclass(frozen=True)
class RunConfig(Config):
    """Everything ``dsurf run`` (and ``dsurf sbatch``) needs. Build it with :meth:`build`, which validates."""

    problem: Problem = Problem()
    directions: Directions = Directions()
    evaluation: SurfaceEvaluation = SurfaceEvaluation()
    output: Output = Output()

    @classmethod
    def _implied(cls, given: dict) -> dict:
        """``--x`` without ``--y`` asks for a 1D curve; a kind of directions implies its spans and its
        ``--dir-type`` where they are not given."""
        given = dict(super()._implied(given))
        # The defaults of the kind the settings select (the first, where two are: validate refuses that)
        chosen = registry.selected_kinds(cls.from_values(given))
        kind = chosen[0] if chosen else registry.find(registry.DEFAULT)
        if ("x" in given or kind.ndim == 1 or "points" in given) and "y" not in given:
            given["y"] = None
        if "x" not in given and "points" not in given and kind.default_x is not None:  # a span that shows its models
            given["x"] = kind.default_x
            if kind.default_y is not None and "y" not in given:
                given["y"] = kind.default_y
        if kind.dir_type is not None and "dir_type" not in given:
            given["dir_type"] = kind.dir_type
        return given

    @classmethod
    def build(cls, **values) -> "RunConfig":
        config = super().build(**values)
        given = {k for k, v in values.items() if v is not None}
        ignored = [name for name in config.direction_kind.ignored_settings if name in given]
        if ignored:
            raise UserError(
                f"--{ignored[0].replace('_', '-')} has no effect on {config.kind_flag} directions (they are not drawn "
                "or normalised): leave it out"
            )
        return config

    def validate(self) -> None:
        super().validate()
        self.grid  # parses the axes
        self.direction_kind.check(self)  # (refuses two kinds at once)
        check_dimensions(self, self.direction_kind)
        if self.evaluation.dtype != "fp32" and (self.evaluation.measure == "hessian" or self.direction_kind.name == "hessian"):
            raise UserError(f"--dtype {self.evaluation.dtype}: the Hessian is taken in fp32 only; leave out --dtype")

    @property
    def auto_axes(self) -> tuple[str, ...]:
        """The axes whose span the run chooses (``auto``)."""
        return tuple(name for name in ("x", "y") if is_auto(getattr(self.directions, name)))

    @property
    def direction_kind(self) -> DirectionKind:
        """The kind of directions these settings select (:mod:`.directions.registry`)."""
        return registry.selected(self)

    @property
    def kind(self) -> str:
        """The name of the kind of directions (stored in the file as ``kind``)."""
        return self.direction_kind.name

    @property
    def kind_flag(self) -> str:
        """The flag that chose the kind, for messages."""
        return self.direction_kind.flag

    @property
    def grid(self) -> Grid:
        x, y = self.directions.x, self.directions.y
        return Grid(_axis("x", x), None if y is None else _axis("y", y))

    def value(self, name: str):
        """A setting's value by its name; also ``kind``, the kind of directions (part of the identity)."""
        return self.kind if name == "kind" else super().value(name)

    def surface_differences(self, other: "RunConfig") -> list[str]:
        """The names of the surface-deciding settings (:data:`SURFACE_IDENTITY`) on which the two configs
        differ. (An automatic axis of this config agrees with the span the other chose.)"""

        def value(config: RunConfig, name: str):
            if name in ("x", "y") and name in self.auto_axes and config is self:
                chosen = getattr(other.grid, name)  # (None where the other has no such axis)
                return chosen if chosen is not None and chosen.num == getattr(self.grid, name).num else "auto"
            # Axes compare by value: "-1:1:3" and "-1.0:1.0:3" are the same grid.
            return getattr(config.grid, name) if name in ("x", "y") else config.value(name)

        return [name for name in SURFACE_IDENTITY if value(self, name) != value(other, name)]


# What a resumed run must agree with the file on: the settings declared as identity, and the kind of
# directions they select (its files are compared by content: their sha256 is in the file).
SURFACE_IDENTITY = settings.identity(RunConfig) + ("kind",)


@dataclass(frozen=True)
class HessianConfig(Config):
    """Everything ``dsurf hessian`` needs: the problem, the evaluation it reads, where to write, and how
    the spectrum is summarised."""

    problem: Problem = Problem()
    evaluation: Evaluation = Evaluation()
    output: Output = Output()
    hessian: Spectrum = Spectrum()


# The config of each command that takes settings (sbatch takes the run's and passes them on).
CONFIGS = {"run": RunConfig, "sbatch": RunConfig, "hessian": HessianConfig}


@dataclass(frozen=True)
class CompareConfig:
    """``dsurf compare``'s settings: the shared scale of the pictures, and what is drawn where."""

    scale: PictureScale = PictureScale()
    comparison: Comparison = Comparison()


@dataclass(frozen=True)
class ReportConfig:
    """``dsurf report``'s settings."""

    report: Report = Report()


# The commands that read surfaces and compute nothing, but take declared settings (flags only: no TOML).
READER_CONFIGS = {"compare": CompareConfig, "report": ReportConfig}


def reader_config(command: str, values: dict):
    """The config of a reading command from its flags given (by name; None: not given), checked."""
    config = READER_CONFIGS[command]
    given = {name: value for name, value in values.items() if value is not None}
    unknown = sorted(set(given) - set(settings.settings_of(config)))
    if unknown:
        raise UserError(f"unknown setting {unknown[0]!r}")
    parts: dict[str, dict] = {attribute: {} for attribute, _ in settings.sections(config)}
    for name, value in given.items():
        parts[settings.settings_of(config)[name][0]][name] = tuple(value) if isinstance(value, list) else value
    built = config(**{attribute: section(**parts[attribute]) for attribute, section in settings.sections(config)})
    settings.check_values(built)
    return built


def is_auto(text) -> bool:
    """``auto`` or ``auto:NUM``: a span the run chooses when it starts (span.py)."""
    return isinstance(text, str) and (text == "auto" or text.startswith("auto:"))


def _axis(flag: str, text) -> Axis:
    """The axis of ``MIN:MAX:NUM``; for ``auto[:NUM]`` a placeholder of NUM points from -1 to 1 (the run
    puts the span it chooses in its place before anything is evaluated)."""
    if is_auto(text):
        _, _, num = str(text).partition(":")
        try:
            count = int(num) if num else AUTO_POINTS
        except ValueError:
            raise UserError(f"--{flag} {text!r}: expected auto or auto:NUM") from None
        if count < 2:
            raise UserError(f"--{flag} {text!r}: an automatic span needs at least 2 points")
        return Axis(-1.0, 1.0, count)
    try:
        return Axis.parse(text)
    except ValueError as exc:
        raise UserError(f"--{flag} {text!r}: {exc}") from None


def load_toml(path: str, config: type[Config] = RunConfig) -> dict:
    """Read a TOML config file of ``config``'s settings; keys are their names (dashes or underscores)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"config file {path!r}: no such file")
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path!r} is not a text (UTF-8) file: TOML expected") from None
    except OSError as exc:
        raise UserError(f"config file {path!r} cannot be read: {exc.strerror or exc}") from None
    mine = settings.settings_of(config)
    for key in data:  # one file shared by dsurf run and dsurf hessian: say whose setting it is
        name = key.replace("-", "_")
        takers = [command for command, other in CONFIGS.items() if name not in mine and name in settings.settings_of(other)]
        if takers:
            raise UserError(f"config file {path!r}: unknown setting {name!r} (a setting of dsurf {', dsurf '.join(takers)}, "
                            "not of this command)")  # fmt: skip
    return settings.toml_values(data, config, f"config file {path!r}")
