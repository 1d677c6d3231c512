"""The settings, each declared once (:func:`~.settings.setting`), in sections per concern.

``dsurf run`` (and ``dsurf sbatch``) takes :class:`Problem`, :class:`Directions`,
:class:`SurfaceEvaluation` and :class:`Output`; ``dsurf hessian`` takes :class:`Problem`,
:class:`Evaluation` (the part of the evaluation the spectrum reads), :class:`Output` and
:class:`Spectrum` (:mod:`.config`); the readers ``dsurf compare`` and ``dsurf report``, which compute
nothing, take :class:`PictureScale` and :class:`Comparison`, and :class:`Report`.
``identity=True`` marks what decides a surface's values: a resumed run must agree with the file on it
(the checkpoint is compared by the hash of θ0 it gives, not by its path; the files a kind of
directions reads by their sha256, not their paths; where and how fast it
runs, and where it writes, may change between runs; precision is identity: bf16 and tf32 change the
values, see the error table in docs/performance.md). The choices come from :mod:`.core.options`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .core.options import (
    BUILTIN_LOSS_NAMES, DATA_PLACEMENTS, DIR_TYPES, DTYPES, HESSIAN_PARAMS, IGNORE_RULES, MEASURES, NORMS, PICTURE_FORMATS,
    PRECISIONS, RANK0_ROLES, VMAP_MODES,
)  # fmt: skip
from .core.errors import UserError
from .hf import HF_TASKS
from .settings import (
    all_of, count, matching, number_above, number_between, positive, setting, switch_setting, text, within_64_bits,
)  # fmt: skip

EXAMPLE_MODEL = "distributed_surface.example:trained_digits_cnn"
EXAMPLE_DATA = "distributed_surface.example:digits_train_data"
DEFAULT_AXIS = "-1:1:25"


def _loss_name(flag: str, value) -> None:
    if ":" not in value and value not in BUILTIN_LOSS_NAMES:
        raise UserError(f"{flag} {value!r}: unknown loss; use {', '.join(BUILTIN_LOSS_NAMES)} or an import string")


def _regular_expression(flag: str, value) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        raise UserError(f"{flag} {value!r} is not a regular expression: {exc}") from None


def _two_probes(flag: str, value) -> None:
    if value < 2:
        raise UserError(f"{flag} must be at least 2 (its standard error needs two)")


def _two_tokens(flag: str, value) -> None:
    if value < 2:
        raise UserError(f"{flag} must be at least 2 (each token predicts the next)")


def _axis_from_toml(value):
    """``x = [-1, 1, 51]`` as well as ``x = "-1:1:51"``."""
    return ":".join(str(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Problem:
    """What is evaluated: the model at θ0, the data of each split, the loss."""

    model: str = setting(
        EXAMPLE_MODEL, metavar="IMPORT|hf:DIR", identity=True, check=text(),
        help="pkg.module:callable or path/file.py:callable returning an nn.Module, or hf:DIR, a model folder "
        "saved by transformers' save_pretrained (loaded offline, in fp32)",
    )  # fmt: skip
    checkpoint: str | None = setting(
        metavar="PATH", check=text(),
        help="a state_dict, or a dict holding one under 'state_dict' or 'model'; or a save_pretrained folder or a PEFT adapter folder",
    )
    data: str = setting(
        EXAMPLE_DATA, metavar="IMPORT|text:PATH|hf-dataset:PATH", identity=True, check=text(),
        help="callable returning a Dataset or an (inputs, targets) pair of tensors; text:PATH, a .txt or "
        ".jsonl corpus (or a folder of them) cut into blocks of tokens for a causal LM; or hf-dataset:PATH, a "
        "Dataset saved by datasets' save_to_disk (tokenised columns as they are, or a text column cut into blocks)",
    )  # fmt: skip
    test_data: str | None = setting(
        metavar="IMPORT|text:PATH|hf-dataset:PATH", identity=True, check=text("import string"),
        help="a test split, evaluated on the same weights at every point (test_loss, test_acc)",
    )  # fmt: skip
    loss: str = setting(
        "cross_entropy", metavar="NAME", identity=True, check=all_of(text(), _loss_name),
        help="cross_entropy (default; class labels, or token labels (B, T) for outputs (B, T, C), -100 ignored), "
        "causal_lm (Hugging Face causal LM: shifted by one), mse, or an import string of loss(outputs, targets)",
    )  # fmt: skip
    max_samples: int | None = setting(type=int, identity=True, check=positive, help="evaluate only the first N samples")
    max_test_samples: int | None = setting(
        type=int, identity=True, check=positive, help="evaluate only the first N test samples"
    )
    # Model folders (--model hf:DIR, hf.py). The task decides the model built on the weights: identity;
    # trusting a folder's code is a permission, not a value (the weights' sha256 is in the fingerprint).
    hf_task: str | None = setting(
        choices=tuple(HF_TASKS), metavar="|".join(HF_TASKS), identity=True,
        help="with --model hf:DIR: the model's task (default: from its config.json's architectures)",
    )  # fmt: skip
    trust_remote_code: bool = switch_setting(
        False, help="with --model hf:DIR: run code shipped inside the model folder (its config's auto_map; default off)"
    )
    # Text corpora (--data text:PATH, text.py). The tokenizer's folder is not identity, its content is:
    # it decides the blocks, whose sha256 is in the fingerprint; the cache's folder decides nothing.
    tokenizer: str | None = setting(
        metavar="DIR", check=text(), help="with --data text:PATH (or a saved data set's text column): the tokenizer's folder (default: the hf: model folder's)"
    )
    text_field: str = setting(
        "text", metavar="NAME", identity=True, check=text(), help="with a .jsonl corpus: each line's field of text; with hf-dataset:PATH: the text column (default text)"
    )
    seq_len: int | None = setting(
        type=int, metavar="N", identity=True, check=all_of(positive, _two_tokens),
        help="with --data text:PATH: tokens a block (default: the model's maximum positions, at most 1024)",
    )  # fmt: skip
    cache_dir: str | None = setting(
        metavar="DIR", check=text(), help="with --data text:PATH: where the tokenised blocks are cached (default: beside the corpus)"
    )


@dataclass(frozen=True)
class Directions:
    """Where the points lie: the directions (drawn, or of a kind its settings select: directions/) and
    the grid of offsets along them (or ``--points``)."""

    x: str = setting(
        DEFAULT_AXIS, metavar="MIN:MAX:NUM", identity=True, from_toml=_axis_from_toml,
        help="offsets along the first direction (default -1:1:25); auto[:NUM]: a span chosen for you (random "
        "directions: out to where the loss has risen; checkpoints: their models and a margin)",
    )  # fmt: skip
    y: str | None = setting(
        DEFAULT_AXIS, metavar="MIN:MAX:NUM", identity=True, from_toml=_axis_from_toml,
        help="offsets along the second direction, or auto[:NUM]; leave out for a 1D curve",
    )  # fmt: skip
    norm: str = setting("filter", choices=NORMS, identity=True, help="direction normalisation: filter (default), layer, weight or none")
    ignore: str = setting("biasbn", choices=IGNORE_RULES, identity=True, help="biasbn (default: 1-D parameters do not move) or none")
    dir_type: str = setting(
        "weights", choices=DIR_TYPES, identity=True,
        help="weights (default) or states (adds buffers such as BatchNorm statistics)",
    )  # fmt: skip
    # The kinds' settings (directions/): none of them given, random normal directions. Their paths are
    # not identity: the kind is, and the files' contents are (by sha256).
    to: str | None = setting(
        metavar="B.pt|DIR",
        help="the line from θ0 (--checkpoint) to checkpoint B: d1 = θB − θ0, not normalised; B may be a save_pretrained "
        "folder, or a PEFT adapter folder (θ0 with the adapter merged)",
    )  # fmt: skip
    plane: tuple[str, str] | None = setting(
        nargs=2, metavar=("B.pt", "C.pt"), help="the plane through θ0, B and C: d1 = θB − θ0, d2 = θC − θ0 (files or model folders)"
    )
    bend: str | None = setting(
        metavar="M.pt", help="with --to B.pt: the quadratic Bézier curve from θ0 through M to B, against t (--x)"
    )
    trajectory: str | None = setting(
        metavar="GLOB",
        help="checkpoints of a training run ('runs/epoch_*.pt', or folders: 'runs/checkpoint-*'): their first two principal components",
    )
    directions: str | None = setting(
        metavar="FILE|KIND",
        help="the directions of a surface file, or a torch file of one or two {name: tensor} dicts; or the name "
        "of a kind of directions (hessian: the Hessian's top eigenvectors)",
    )  # fmt: skip
    points: str | None = setting(
        metavar="FILE.csv", check=text(), help="evaluate these offsets (one or two columns a row) instead of a grid"
    )
    params: str | None = setting(
        metavar="REGEX", identity=True, check=all_of(text(), _regular_expression),
        help="only parameters whose names match move (re.search); the rest stay at θ0",
    )  # fmt: skip
    auto_rise: float = setting(
        5.0, type=float, metavar="FACTOR", check=number_above(1),
        help="with --x auto / --y auto on random directions: out until the loss is FACTOR times θ0's (default 5)",
    )  # fmt: skip


@dataclass(frozen=True)
class Evaluation:
    """How the values are computed, as far as both commands read it: the device, the batches, where the
    data is kept, and the Hessian (``--measure hessian``, ``--directions hessian``, ``dsurf hessian``)."""

    device: str = setting("auto", check=matching(r"^(auto|cpu|cuda(:\d+)?)$", "auto, cpu or cuda"), help="auto (default), cpu, cuda or cuda:N")
    batch_size: int | None = setting(
        type=int, check=positive, help="samples per forward pass (default: from the free device memory)"
    )  # None: from the free device memory
    data_placement: str = setting(
        "auto", choices=DATA_PLACEMENTS, metavar="auto|device|host|stream",
        help="where the data is kept: on the device, in host memory (batches copied to the device), or read from "
        "its Dataset on every pass (stream); default auto: the first of these it fits in",
    )  # fmt: skip
    workers: int = setting(
        0, type=int, metavar="N", check=count(0), help="with streamed data: DataLoader processes that read it (default 0)"
    )
    # The seed of every random draw: the random directions, and the Hessian solvers' starting vectors and
    # probes; here, not with the directions, because dsurf hessian draws with it too.
    seed: int = setting(
        0, type=int, identity=True, check=within_64_bits,
        help="seed of the random directions and of the Hessian's random vectors (default 0)",
    )  # fmt: skip
    hessian_samples: int | None = setting(
        type=int, metavar="N", identity=True, check=count(1), help="the Hessian over the first N train samples (default all)"
    )
    hessian_params: str = setting(
        "weights", choices=HESSIAN_PARAMS, parser_choices=True, identity=True,
        help="the Hessian over the parameters with more than one dimension (weights, default) or all",
    )  # fmt: skip
    hessian_tol: float = setting(
        1e-3, type=float, metavar="TOL", check=number_between(0, 1),
        help="relative accuracy of each eigenvalue (default 1e-3)",
    )  # fmt: skip


@dataclass(frozen=True)
class SurfaceEvaluation(Evaluation):
    """The evaluation of a surface's points: ``dsurf run``'s settings of it beyond :class:`Evaluation`."""

    chunk_size: int | None = setting(type=int, check=positive, help="grid points per unit of work (default: automatic)")
    points_per_pass: int | None = setting(
        type=int, check=positive, help="grid points evaluated in one pass over the data with vmap (default: what fits, at most 64)"
    )
    vmap: str = setting(
        "auto", choices=VMAP_MODES,
        help="auto (default: vmap where one point's pass is overhead-bound), tune (time both, keep the faster), on or off",
    )  # fmt: skip
    precision: str = setting(
        "fp32", choices=PRECISIONS, identity=True,
        help="fp32 (default, exact), tf32 (GPU TF32 matmuls/convolutions) or bf16 (bfloat16 autocast)",
    )  # fmt: skip
    dtype: str = setting(
        "fp32", choices=DTYPES, identity=True,
        help="the weights' dtype in the forward pass: fp32 (default), bf16 or fp16 (θ0 and the directions stay fp32; "
        "each point is cast once)",
    )  # fmt: skip
    compile: bool = switch_setting(False, help="torch.compile the forward pass (default off)")
    channels_last: bool | str = switch_setting(
        "auto", auto=True, help="channels-last memory format for 4-D inputs (default auto: on a CPU, off on a GPU)"
    )
    rank0: str = setting(
        "work", choices=RANK0_ROLES, parser_choices=True,
        help="under MPI: rank 0 also evaluates (work, default) or only coordinates",
    )  # fmt: skip
    measure: str = setting(
        "loss", choices=MEASURES, parser_choices=True, identity=True,
        help="what each point measures: loss (default: loss and accuracy), or hessian (also the Hessian's extreme eigenvalues)",
    )  # fmt: skip


@dataclass(frozen=True)
class Output:
    """Where the result is written."""

    out: str = setting("surface.h5", metavar="PATH", check=text(), help="surface file to write (default surface.h5)")


@dataclass(frozen=True)
class Spectrum:
    """``dsurf hessian``: how the spectrum at θ0 is summarised."""

    top_k: int = setting(5, type=int, metavar="K", check=count(1), help="eigenpairs at the top of the spectrum (default 5)")
    trace_probes: int = setting(
        64, type=int, metavar="N", check=all_of(count(1), _two_probes),
        help="Hutchinson's probe vectors for the trace (default 64)",
    )  # fmt: skip
    density_probes: int = setting(4, type=int, metavar="N", check=count(1), help="random vectors of the density (default 4)")
    lanczos_steps: int = setting(60, type=int, metavar="N", check=count(1), help="Lanczos steps of each (default 60)")


# ---------------------------------------------------------------- the readers' settings: compare, report


@dataclass(frozen=True)
class PictureScale:
    """``dsurf compare``: how loss values are mapped to colours and contour levels, one scale for every
    surface compared."""

    vmin: float | None = setting(type=float, help="lowest loss mapped to colours and levels (default: the surfaces' lowest)")
    vmax: float | None = setting(type=float, help="highest loss mapped (default: the surfaces' highest, at most 10)")
    levels: float | None = setting(
        type=float, metavar="STEP", help="distance between loss contour levels (decades with --log)"
    )
    log: bool = switch_setting(False, help="loss on a log scale (default off)")


@dataclass(frozen=True)
class Comparison:
    """``dsurf compare``: what is drawn and where."""

    out_dir: str | None = setting(
        metavar="DIR", check=text(), help="where to write (default: FIRST_compare/ beside the first surface)"
    )
    kind: str | None = setting(
        metavar="KIND[,KIND]", check=text(),
        help="2D: contour, contourf, heatmap, surface (3D), comma-separated; 1D: curve; default all that fit",
    )  # fmt: skip
    label: tuple[str, ...] | None = setting(
        nargs="+", metavar="NAME",
        help="the surfaces' names in pictures and tables, one per surface in order (default: the files' names)",
    )  # fmt: skip
    band: bool = switch_setting(
        False, help="1D: surfaces with the same --label (without --label: all) are repeats of one model (seeds), "
        "drawn as their mean and ± one standard deviation",
    )  # fmt: skip
    allow_different: bool = switch_setting(
        False, help="compare surfaces whose grids, direction kinds, --norm, --ignore or --dir-type differ"
    )
    format: str = setting(
        "png", choices=PICTURE_FORMATS, parser_choices=True, help="picture format: png (default), pdf or svg"
    )
    force: bool = switch_setting(False, help="replace existing pictures and tables that dsurf compare did not write")


@dataclass(frozen=True)
class Report:
    """``dsurf report``: where the HTML report goes."""

    out: str | None = setting(
        metavar="PATH.html", check=text(), help="the report to write (default: FIRST_report.html beside the first surface)"
    )
    force: bool = switch_setting(False, help="replace an existing --out that dsurf report did not write")
