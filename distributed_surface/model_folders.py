"""Model folders as checkpoints: a ``save_pretrained`` folder, or a PEFT (LoRA) adapter folder, wherever a
checkpoint file is taken (``--checkpoint``, ``--to``, ``--plane``, ``--bend``, ``--trajectory``).

- A **model folder** (``config.json`` and safetensors weights, as :mod:`.hf` reads them) gives the
  state_dict its safetensors files hold, read with ``safetensors`` alone; its names must be the model's
  (a weight the folder leaves out because the model ties it to another, as GPT-2's ``lm_head`` is tied
  to its embedding, is the one it is tied to). The folder's own ``config.json`` is not read: the weights
  are taken into the ``--model``'s architecture, and their names and shapes must fit it.
- An **adapter folder** (``adapter_config.json`` and ``adapter_model.safetensors``, as ``peft`` saves
  them) gives the model at θ0 with the adapter merged into it (``peft``'s ``merge_and_unload``); it needs
  ``peft``. An adapter whose ``base_model_name_or_path`` is a local folder with other weights than the
  model's is refused.

What a folder is recorded by (:func:`folder_files`): the sha256 of each of its weights files (and of an
adapter's config, which holds its scaling), as a checkpoint file is recorded by its own.

Torch-free at import: torch, ``safetensors`` and ``peft`` are imported when a folder is read.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

from . import hf
from .core.errors import UserError, first_line

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file()


def folder_files(flag: str, path: str) -> dict[str, str]:
    """The files that decide a folder checkpoint's weights, by name (relative to the folder), with their
    sha256: an adapter's config and weights, or a model folder's safetensors files."""
    files = _adapter_files(flag, path) if is_adapter(Path(path)) else _weights_files(flag, path)
    return {file.name: hf.file_sha256(file) for file in files}


def _adapter_files(flag: str, path: str) -> list[Path]:
    folder = Path(path)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise UserError(f"{flag} {path!r}: an adapter folder without {ADAPTER_WEIGHTS} (only safetensors adapters are read)")
    return [folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS]


def _weights_files(flag: str, path: str) -> list[Path]:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise UserError(f"{flag} {path!r}: a folder, but neither a model folder (config.json) nor a PEFT adapter ({ADAPTER_CONFIG})")
    return hf.weights_files(f"{flag} {path!r}", folder)


def read_folder_state(path: str, model, flag: str) -> dict:
    """The state_dict a folder checkpoint gives for ``model`` (which holds θ0): a model folder's weights,
    or ``model`` with an adapter folder merged. Names and shapes are checked by the caller
    (:func:`~.problem.read_state`)."""
    folder = Path(path)
    if is_adapter(folder):
        return _merged_state(path, model, flag)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state = {}
    for file in _weights_files(flag, path):
        try:
            state.update(load_file(file))
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{flag} {path!r}: {file.name} is not a readable safetensors file: {first_line(exc)}") from None
    return _with_tied(state, model)


def _with_tied(state: dict, model) -> dict:
    """``state`` with each of the model's tensors that it lacks but whose storage the model shares with
    one it holds (tied weights, which ``save_pretrained`` writes once) filled from that one."""
    expected = {name: t for name, t in model.state_dict().items() if t.numel()}  # (empty ones share no storage)
    present = {}
    for name, tensor in expected.items():
        if name in state:
            present.setdefault((tensor.data_ptr(), tuple(tensor.shape)), name)
    filled = dict(state)
    for name, tensor in expected.items():
        twin = present.get((tensor.data_ptr(), tuple(tensor.shape)))
        if name not in filled and twin is not None:
            filled[name] = state[twin]
    return filled


def _merged_state(path: str, model, flag: str) -> dict:
    """``model`` (a copy) with the adapter of folder ``path`` merged into it, as a state_dict."""
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise UserError(f"{flag} {path!r} is a PEFT adapter folder: merging it needs peft, which cannot be imported ({first_line(exc)}): pip install peft") from None
    folder = Path(path)
    _adapter_files(flag, path)  # (its weights file is there)
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{flag} {path!r}: {ADAPTER_CONFIG} cannot be read as JSON: {first_line(exc)}") from None
    _check_base(path, flag, config, model)
    with hf.offline(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (peft's and transformers' advice about their own APIs is not ours to give)
        try:
            merged = PeftModel.from_pretrained(copy.deepcopy(model), str(folder), is_trainable=False).merge_and_unload()
        except Exception as exc:  # peft raises many kinds: modules the model lacks, shapes, a damaged file
            raise UserError(f"{flag} {path!r}: the adapter does not fit the model: {first_line(exc)}") from None
    return {name: tensor.detach() for name, tensor in merged.state_dict().items()}


def _check_base(path: str, flag: str, config: dict, model) -> None:
    """Refuse an adapter whose base model is a local folder holding other weights than ``model``'s folder
    (where both are known: a base named on the hub, or a model not loaded from a folder, is not checked)."""
    base = config.get("base_model_name_or_path")
    own = getattr(model, "name_or_path", None)
    if not base or not own or not Path(base).is_dir() or not Path(own).is_dir():
        return
    if Path(base).resolve() == Path(own).resolve():
        return
    theirs = _weights_files(f"{flag} {path!r} (its base)", base)
    mine = _weights_files("--model", own)
    if sorted(hf.file_sha256(f) for f in theirs) != sorted(hf.file_sha256(f) for f in mine):
        raise UserError(f"{flag} {path!r}: the adapter was made for the model in {base!r}, which holds other weights than --model's {own!r}")
