"""The run configuration: one frozen, validated object, built from a TOML file and command-line flags,
stored as JSON in the surface file."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from .core.grid import Axis, Grid
from .core.measurements import TEST, TRAIN
from .core.options import BUILTIN_LOSS_NAMES, DATA_PLACEMENTS, DIR_TYPES, IGNORE_RULES, NORMS, PRECISIONS, VMAP_MODES
from .directions import registry
from .directions.base import DirectionKind
from .directions.options import check_dimensions, check_options
from .core.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXAMPLE_MODEL = "distributed_surface.example:trained_digits_cnn"
EXAMPLE_DATA = "distributed_surface.example:digits_train_data"
DEFAULT_AXIS = "-1:1:25"
AUTO_POINTS = 25  # points of an automatic axis (--x auto); --x auto:NUM for others

# Fields that decide the surface's values; a resumed run must agree with the file on all of them.
# The checkpoint is compared by the hash of θ0 it gives, not by its path, which may move.
# The others (where and how fast it runs, where it writes) may change between runs of one surface.
# precision is one of them: bf16 and tf32 change the values (see the error table in docs/performance.md).
# The directions' kind is compared, not the paths of the checkpoints or files it came from: those are
# compared by content (their sha256 is in the file).
SURFACE_FIELDS = (
    "model", "data", "test_data", "loss", "x", "y", "norm", "ignore", "dir_type", "seed", "max_samples",
    "max_test_samples", "precision", "kind", "params", "measure", "hessian_samples", "hessian_params",
)  # fmt: skip

# What is measured at every point: the loss (and accuracy) of each split, or also the Hessian's extreme
# eigenvalues (of the train split's loss).
MEASURES = ("loss", "hessian")
# Which parameters the Hessian is taken over: those with more than one dimension (the paper's), or all.
HESSIAN_PARAMS = ("weights", "all")

# Under MPI, rank 0 coordinates; "work": it also evaluates chunks, "coordinate": it only coordinates.
RANK0_ROLES = ("work", "coordinate")

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class RunConfig:
    """Everything ``dsurf run`` needs. Build it with :func:`RunConfig.build`, which validates."""

    model: str = EXAMPLE_MODEL
    checkpoint: str | None = None
    data: str = EXAMPLE_DATA
    test_data: str | None = None  # a test split, evaluated on the same weights at every point
    loss: str = "cross_entropy"
    x: str = DEFAULT_AXIS
    y: str | None = DEFAULT_AXIS
    norm: str = "filter"
    ignore: str = "biasbn"
    dir_type: str = "weights"
    seed: int = 0
    batch_size: int | None = None  # None: from the free device memory
    max_samples: int | None = None
    max_test_samples: int | None = None
    device: str = "auto"
    chunk_size: int | None = None
    points_per_pass: int | None = None  # grid points per pass over the data under vmap; None: what fits
    vmap: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    channels_last: bool | str = "auto"  # auto: on a CPU, off on a GPU
    data_placement: str = "auto"  # auto: on the device where it fits, else in host memory, else streamed
    workers: int = 0  # DataLoader processes that read streamed data (0: this process reads it)
    rank0: str = "work"
    out: str = "surface.h5"
    # Directions from checkpoints and files (directions/); none of them: random normal directions.
    to: str | None = None  # a line from θ0 to this checkpoint (with bend: the curve's end)
    plane: tuple[str, str] | None = None  # the plane through θ0 and two checkpoints
    bend: str | None = None  # the Bézier curve's middle checkpoint
    trajectory: str | None = None  # a glob of checkpoints: their first two principal components
    directions: str | None = None  # the directions of a surface file, or a torch file of 1 or 2 dicts
    points: str | None = None  # a CSV file of (a) or (a, b) offsets, evaluated instead of a grid
    params: str | None = None  # a regular expression: only the tensors whose names match move
    auto_rise: float = 5.0  # --x auto: out along a direction until the loss is this many times θ0's
    # Curvature (hessian.py): what a point measures, and how the Hessian is taken and summarised.
    measure: str = "loss"
    hessian_samples: int | None = None  # the first N samples of the train split (None: all)
    hessian_params: str = "weights"
    hessian_tol: float = 1e-3  # ARPACK's relative accuracy of each eigenvalue
    top_k: int = 5  # dsurf hessian: eigenpairs at the top
    trace_probes: int = 64  # dsurf hessian: Hutchinson's Rademacher vectors
    density_probes: int = 4  # dsurf hessian: stochastic Lanczos quadrature's random vectors
    lanczos_steps: int = 60  # dsurf hessian: Lanczos steps of each of them

    @classmethod
    def build(cls, **values) -> "RunConfig":
        """Validate ``values`` (names as the fields; None means "not given") and fill defaults.

        Only one of model and data given is an error: the built-in example supplies both or neither.
        ``--x`` without ``--y`` asks for a 1D curve.
        """
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise UserError(f"unknown setting {unknown[0]!r}")
        given = {k: v for k, v in values.items() if v is not None}
        if ("model" in given) != ("data" in given):
            raise UserError("--model and --data go together (neither: the built-in example)")
        if isinstance(given.get("plane"), list):
            given["plane"] = tuple(given["plane"])
        # The defaults of the kind the settings select (the first, where two are: validate refuses that)
        chosen = registry.selected_kinds(cls(**given))
        kind = chosen[0] if chosen else registry.find(registry.DEFAULT)
        if ("x" in given or kind.ndim == 1 or "points" in given) and "y" not in given:
            given["y"] = None
        if "x" not in given and "points" not in given and kind.default_x is not None:  # a span that shows its models
            given["x"] = kind.default_x
            if kind.default_y is not None and "y" not in given:
                given["y"] = kind.default_y
        if kind.dir_type is not None and "dir_type" not in given:
            given["dir_type"] = kind.dir_type
        config = cls(**given)
        config.validate()
        ignored = [name for name in config.direction_kind.ignored_settings if name in given]
        if ignored:
            raise UserError(
                f"--{ignored[0].replace('_', '-')} has no effect on {config.kind_flag} directions (they are not drawn "
                "or normalised): leave it out"
            )
        return config

    def validate(self) -> None:
        """Raise :class:`UserError` for the first bad field."""
        _choice("norm", self.norm, NORMS)
        _choice("ignore", self.ignore, IGNORE_RULES)
        _choice("dir-type", self.dir_type, DIR_TYPES)
        _choice("rank0", self.rank0, RANK0_ROLES)
        _choice("vmap", self.vmap, VMAP_MODES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("data-placement", self.data_placement, DATA_PLACEMENTS)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise UserError(f"--workers must be a whole number of 0 or more, got {self.workers!r}")
        if not isinstance(self.compile, bool):
            raise UserError(f"--compile must be on or off, got {self.compile!r}")
        if not (self.channels_last == "auto" or isinstance(self.channels_last, bool)):
            raise UserError(f"--channels-last must be auto, on or off, got {self.channels_last!r}")
        for name, value in (("model", self.model), ("data", self.data), ("loss", self.loss), ("out", self.out)):
            if not isinstance(value, str) or not value:
                raise UserError(f"--{name} must be a non-empty string")
        if ":" not in self.loss and self.loss not in BUILTIN_LOSS_NAMES:
            raise UserError(f"--loss {self.loss!r}: unknown loss; use {', '.join(BUILTIN_LOSS_NAMES)} or an import string")
        self.grid  # parses the axes
        if self.test_data is not None and (not isinstance(self.test_data, str) or not self.test_data):
            raise UserError("--test-data must be a non-empty import string")
        if self.max_test_samples is not None and self.test_data is None:
            raise UserError("--max-test-samples needs --test-data")
        for name in ("seed", "batch_size", "max_samples", "max_test_samples", "chunk_size", "points_per_pass"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"--{name.replace('_', '-')} must be a whole number, got {value!r}")
            if name == "seed" and not -(2**63) <= value < 2**64:
                raise UserError(f"--seed must fit in 64 bits, got {value}")
            if name != "seed" and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise UserError(f"--device {self.device!r}: expected auto, cpu or cuda")
        self._validate_kind()

    def _validate_kind(self) -> None:
        check_options(self)
        self.direction_kind.check(self)  # (refuses two kinds at once)
        _choice("measure", self.measure, MEASURES)
        _choice("hessian-params", self.hessian_params, HESSIAN_PARAMS)
        for name in ("hessian_samples", "top_k", "trace_probes", "density_probes", "lanczos_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"--{name.replace('_', '-')} must be a whole number of at least 1, got {value!r}")
        if self.trace_probes < 2:
            raise UserError("--trace-probes must be at least 2 (its standard error needs two)")
        if isinstance(self.hessian_tol, bool) or not isinstance(self.hessian_tol, (int, float)) or not 0 < self.hessian_tol < 1:
            raise UserError(f"--hessian-tol must be a number between 0 and 1, got {self.hessian_tol!r}")
        if isinstance(self.auto_rise, bool) or not isinstance(self.auto_rise, (int, float)) or not self.auto_rise > 1:
            raise UserError(f"--auto-rise must be a number above 1, got {self.auto_rise!r}")
        check_dimensions(self, self.direction_kind)

    @property
    def auto_axes(self) -> tuple[str, ...]:
        """The axes whose span the run chooses (``auto``)."""
        return tuple(name for name in ("x", "y") if is_auto(getattr(self, name)))

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
        return Grid(_axis("x", self.x), None if self.y is None else _axis("y", self.y))

    @property
    def data_flags(self) -> dict[str, str]:
        """Each split's data import string, under its split's name, and the flag it came from."""
        flags = {TRAIN: f"--data {self.data!r}"}
        if self.test_data is not None:
            flags[TEST] = f"--test-data {self.test_data!r}"
        return flags

    @property
    def is_example(self) -> bool:
        return self.model == EXAMPLE_MODEL

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        values = json.loads(text)
        known = {f.name for f in fields(cls)}
        if isinstance(values.get("plane"), list):
            values["plane"] = tuple(values["plane"])
        return cls(**{k: v for k, v in values.items() if k in known})

    def surface_differences(self, other: "RunConfig") -> list[str]:
        """The names of the surface-deciding fields on which the two configs differ. (An automatic axis
        of this config agrees with the span the other chose.)"""
        def value(config: RunConfig, name: str):
            if name in ("x", "y") and name in self.auto_axes and config is self:
                chosen = getattr(other.grid, name)  # (None where the other has no such axis)
                return chosen if chosen is not None and chosen.num == getattr(self.grid, name).num else "auto"
            # Axes compare by value: "-1:1:3" and "-1.0:1.0:3" are the same grid.
            return getattr(config.grid, name) if name in ("x", "y") else getattr(config, name)

        return [name for name in SURFACE_FIELDS if value(self, name) != value(other, name)]

_SWITCH_WORDS = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}


def parse_switch(text: str, auto: bool = False) -> bool | str:
    """on/off (also true/false, yes/no, 1/0) as a bool; "auto" as itself where ``auto``; else the text
    unchanged, for the validation to name."""
    word = str(text).lower()
    if auto and word == "auto":
        return "auto"
    return _SWITCH_WORDS.get(word, text)


def _choice(flag: str, value, allowed) -> None:
    if value not in allowed:
        raise UserError(f"--{flag} {value!r}: expected one of {', '.join(allowed)}")


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


def load_toml(path: str) -> dict:
    """Read a TOML config file; keys are the run flags' names (dashes or underscores)."""
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
    values = {key.replace("-", "_"): value for key, value in data.items()}
    known = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"config file {path!r}: unknown setting {unknown[0]!r}")
    for key in ("compile", "channels_last"):  # "on", "off" (and "auto") as on the command line
        if isinstance(values.get(key), str):
            values[key] = parse_switch(values[key], auto=key == "channels_last")
    for key in ("x", "y"):  # allow x = [-1, 1, 51] as well as x = "-1:1:51"
        if isinstance(values.get(key), list):
            values[key] = ":".join(str(v) for v in values[key])
    return values
