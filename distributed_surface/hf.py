"""Model folders saved by ``transformers``' ``save_pretrained``, loaded offline: ``--model hf:DIR``.

A folder holds ``config.json`` and safetensors weights (``model.safetensors``, or shards listed in
``model.safetensors.index.json``). The model is built by the Auto class of its task (``--hf-task``,
else the one its config's ``architectures`` name), in fp32 and eval mode, from the folder alone:
``local_files_only`` and ``HF_HUB_OFFLINE`` for the call, so a name that is not a folder is refused,
never looked up on the hub. Code shipped inside a folder (an ``auto_map`` in its config) runs only
under ``--trust-remote-code``, as in ``transformers``.

Torch-free and ``transformers``-free at import (the settings import :data:`HF_TASKS`): both are
imported only when a folder is loaded, so a plain run starts fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from .core.errors import UserError, first_line

PREFIX = "hf:"
# --hf-task: the Auto class of each task.
HF_TASKS = {
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "image-classification": "AutoModelForImageClassification",
}
CAUSAL_LM = "causal-lm"
MASKED_LM = "masked-lm"
# The task an architecture's class name ends with (GPT-2's causal LM is GPT2LMHeadModel).
_ARCHITECTURE_ENDINGS = {
    "ForCausalLM": "causal-lm",
    "LMHeadModel": "causal-lm",
    "ForMaskedLM": "masked-lm",
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
    "ForImageClassification": "image-classification",
}
SINGLE_WEIGHTS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
# The most positions a block of text gets by default (--seq-len): the model's maximum, at most this.
MAX_DEFAULT_POSITIONS = 1024


def is_folder_spec(spec) -> bool:
    """Whether ``--model`` names a model folder (``hf:DIR``)."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def folder_of(spec: str) -> Path:
    """The folder of ``hf:DIR``, which must exist and hold ``config.json``."""
    folder = Path(spec[len(PREFIX) :])
    if not spec[len(PREFIX) :] or not folder.is_dir():
        raise UserError(f"{spec}: no such folder; only local model folders are loaded (save_pretrained), nothing is downloaded")
    if not (folder / "config.json").is_file():
        raise UserError(f"{spec}: no config.json in the folder: not a model folder saved by save_pretrained")
    return folder


def read_config(spec: str) -> dict:
    """The folder's ``config.json`` as a dict."""
    path = folder_of(spec) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{spec}: config.json cannot be read as JSON: {first_line(exc)}") from None
    if not isinstance(config, dict):
        raise UserError(f"{spec}: config.json holds no JSON object")
    return config


def task_of(spec: str, config: dict) -> str:
    """The task the config's ``architectures`` name; one line asking for ``--hf-task`` where they name
    none or several."""
    names = config.get("architectures") or []
    tasks = sorted({task for name in names for end, task in _ARCHITECTURE_ENDINGS.items() if str(name).endswith(end)})
    if len(tasks) != 1:
        found = f"architectures {', '.join(map(str, names))}" if names else "no architectures"
        raise UserError(f"{spec}: its config.json names {found}: say which task with --hf-task ({', '.join(HF_TASKS)})")
    return tasks[0]


def max_positions(config: dict) -> int | None:
    """The most positions the model takes (``max_position_embeddings`` or ``n_positions``), if it says."""
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def check_remote_code(spec: str, config: dict, trusted: bool) -> None:
    """Refuse a folder that ships code (an ``auto_map`` in its config) unless ``--trust-remote-code``."""
    if "auto_map" in config and not trusted:
        raise UserError(
            f"{spec}: its config.json has an auto_map (code shipped inside the folder); it runs only with "
            "--trust-remote-code, and only if you trust its source"
        )


def implied(given: dict) -> dict:
    """The settings a model folder implies where they are not given: its task (from ``architectures``)
    and, for a causal LM, ``--loss causal_lm``. Also refuses code shipped in the folder without
    ``--trust-remote-code``, before anything is loaded."""
    spec = given.get("model")
    if not is_folder_spec(spec):
        return given
    config = read_config(spec)
    check_remote_code(spec, config, bool(given.get("trust_remote_code")))
    given = dict(given)
    given.setdefault("hf_task", task_of(spec, config))
    if given["hf_task"] == CAUSAL_LM:
        given.setdefault("loss", "causal_lm")
    return given


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_files(spec: str, folder: Path) -> list[Path]:
    """The folder's safetensors files: ``model.safetensors``, or the shards its index lists."""
    index = folder / SHARD_INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{spec}: {SHARD_INDEX} is not a shard index (a weight_map): {first_line(exc)}") from None
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise UserError(f"{spec}: the weights shard {missing[0]!r} that {SHARD_INDEX} lists is missing")
        return [folder / name for name in names]
    if (folder / SINGLE_WEIGHTS).is_file():
        return [folder / SINGLE_WEIGHTS]
    raise UserError(f"{spec}: no safetensors weights ({SINGLE_WEIGHTS} or {SHARD_INDEX}) in the folder")


@contextlib.contextmanager
def offline():
    """``HF_HUB_OFFLINE`` (and ``TRANSFORMERS_OFFLINE``) set for the call: nothing is looked up on the hub;
    ``transformers``' advice about weights and its progress bars are not printed (an error says what
    went wrong)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    before = {key: os.environ.get(key) for key in keys}
    os.environ.update({key: "1" for key in keys})
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()  # (a bar for the weights would break the one-line errors)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_model(spec: str, task: str | None, trust_remote_code: bool = False):
    """The model of folder ``hf:DIR`` for ``task`` in fp32 and eval mode, and its weights' files by name
    (relative to the folder) with their sha256. Every failure is one line."""
    import torch

    config_json = read_config(spec)
    folder = folder_of(spec)
    task = task or task_of(spec, config_json)
    check_remote_code(spec, config_json, trust_remote_code)
    files = weights_files(spec, folder)
    with offline():
        import transformers

        try:
            config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
        except Exception as exc:  # an unknown model_type, a damaged config: transformers raises many kinds
            raise UserError(f"{spec}: transformers cannot read its config.json: {first_line(exc)}") from None
        config.use_cache = False  # (a surface needs no key-value cache: it would only take memory)
        auto = getattr(transformers, HF_TASKS[task])
        try:
            model, info = auto.from_pretrained(
                folder, config=config, local_files_only=True, trust_remote_code=trust_remote_code, dtype=torch.float32,
                use_safetensors=True, output_loading_info=True, ignore_mismatched_sizes=True,  # (refused below, by name)
            )  # fmt: skip
        except Exception as exc:  # wrong shapes, an architecture the Auto class does not know, a damaged file
            raise UserError(f"{spec}: loading it as {task} ({HF_TASKS[task]}) failed: {first_line(exc)}") from None
    # transformers fills weights missing from the files with random ones: a surface about them means nothing.
    for key, what in (("missing_keys", "missing from"), ("mismatched_keys", "of the wrong shape in")):
        # (a mismatched key comes as (name, shape in the file, shape of the model))
        names = sorted(_described(entry) for entry in info.get(key) or ())
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise UserError(f"{spec}: weights {what} its safetensors files: {shown}")
    model = model.float().eval()
    return model, {path.name: file_sha256(path) for path in files}


def _described(entry) -> str:
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        name, stored, wanted = entry
        return f"{name} (the file's {tuple(stored)}, the model's {tuple(wanted)})"
    return str(entry)
