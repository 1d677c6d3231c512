"""The problem a surface is computed for: model, checkpoint, data and loss, built from import strings.

Every user mistake here raises :class:`UserError` with one line that names the problem.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .core.host import host_memory_available
from .core.losses import BUILTIN_LOSSES, Loss, as_loss, logits_of
from .core.measurements import TEST, TRAIN
from .core.samples import Samples, call_model, tensors_sha256, to_device
from .core.stream import SamplesDataset, StreamedSamples
from .core.errors import UserError, first_line
from .engine.runtime import ranks_on_node
from . import hf, hf_dataset, model_folders, text

# --data-placement auto streams a Dataset larger than this share of the available host memory.
HOST_DATA_FRACTION = 0.5
# Items read twice to check that a streamed Dataset gives the same data on every read.
STREAM_CHECK_ITEMS = 4


@dataclass
class Problem:
    """A model holding θ0, the data of each split (train, and test where given), and the loss;
    ``weights_files``: a model folder's safetensors files, by name, with their sha256; ``made``: the
    splits whose data was made from files on disk (a tokenised ``text:`` corpus, an ``hf-dataset:``),
    as the tensors they were made into, by split: what another process may be given rather than make
    them again (:func:`load_problem`'s ``made``)."""

    model: nn.Module
    splits: dict[str, Samples | StreamedSamples]
    loss: Loss
    weights_files: dict[str, str] = field(default_factory=dict)
    made: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def load_problem(config, made: Mapping[str, dict[str, torch.Tensor]] | None = None) -> Problem:
    """Build the model (with its checkpoint), the data of each split and the loss from ``config`` (a
    :class:`~.config.RunConfig` or :class:`~.config.HessianConfig`: their ``problem`` section, and where
    the data is kept, from their ``evaluation``). ``made``: the data of splits made from files, as
    another process made them (its :attr:`Problem.made`), taken as they are: nothing is tokenised or
    read from a cache for them."""
    section = config.problem
    weights: dict[str, str] = {}
    if hf.is_folder_spec(section.model):
        model, weights = hf.load_model(section.model, section.hf_task, section.trust_remote_code)
    else:
        model = build_model(section.model)
    if section.checkpoint is not None:
        load_checkpoint(model, section.checkpoint)
    how = {"placement": config.evaluation.data_placement, "workers": config.evaluation.workers}
    made = dict(made or {})
    wanted = {TRAIN: (section.data, section.max_samples, "--data")}
    if section.test_data is not None:
        wanted[TEST] = (section.test_data, section.max_test_samples, "--test-data")
    splits = {}
    for split, (spec, most, flag) in wanted.items():
        if split not in made and is_made_from_files(spec):
            made[split] = make_data(spec, flag, _reading(section, model), _folder_facts(section, model))
        splits[split] = load_data(spec, most, flag, **how, made=made.get(split))
    return Problem(model=model, splits=splits, loss=resolve_loss(section.loss), weights_files=weights,
                   made={split: made[split] for split in wanted if split in made})  # fmt: skip


def is_made_from_files(spec) -> bool:
    """Whether a data spec is made from files by this package (a ``text:`` corpus, an ``hf-dataset:``),
    rather than by calling the user's code."""
    return text.is_corpus_spec(spec) or hf_dataset.is_dataset_spec(spec)


def make_data(spec: str, flag: str, reading: text.Reading | None, model_folder: dict | None) -> dict[str, torch.Tensor]:
    """The tensors (with ``labels``) that a ``text:`` corpus or an ``hf-dataset:`` is made into: a corpus
    as ``reading`` says (:mod:`.text`), a saved data set for the model ``model_folder`` describes (its
    ``task`` and ``pad_token_id``: :mod:`.hf_dataset`)."""
    if text.is_corpus_spec(spec):
        if reading is None or reading.tokenizer is None or reading.seq_len is None:
            raise UserError(f"{flag} {spec!r}: a text corpus needs a tokenizer and a block length (--tokenizer, --seq-len)")
        return text.load_blocks(spec, reading, flag)
    return hf_dataset.load(spec, flag, reading=reading, **(model_folder or {}))


def _reading(section, model: nn.Module) -> text.Reading:
    """How the ``text:`` corpora become blocks for ``model``: the tokenizer (default: the model folder's)
    and the settings; no token may reach past the model's input embedding."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocabulary = getattr(embedding, "num_embeddings", None)
    tokenizer = section.tokenizer or (str(hf.folder_of(section.model)) if hf.is_folder_spec(section.model) else None)
    return text.Reading(tokenizer, section.seq_len, section.text_field, section.cache_dir, vocabulary)


def _folder_facts(section, model: nn.Module) -> dict:
    """What a saved data set's reading takes from the model: its task (None for a model from an import
    string) and the token id its ragged rows are padded with (the config's ``pad_token_id``, else 0)."""
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    return {"task": section.hf_task if hf.is_folder_spec(section.model) else None, "pad_token_id": pad if isinstance(pad, int) else 0}


def fingerprint(problem: Problem) -> dict[str, object]:
    """Content hashes of θ0 and of each split's data, and the sample counts: a resumed run must match
    them. The train split's are ``data_sha256`` and ``num_samples``; another split's carry its name."""
    prints: dict[str, object] = {"theta0_sha256": tensors_sha256(problem.model.state_dict().items())}
    if problem.weights_files:  # a model folder's files, as read: {name: sha256}, in JSON
        prints["weights_sha256"] = json.dumps(problem.weights_files, sort_keys=True)
    for split, samples in problem.splits.items():
        prefix = "" if split == TRAIN else f"{split}_"
        prints[f"{prefix}data_sha256"] = samples.content_sha256()
        prints[f"{prefix}num_samples"] = len(samples)
    return prints


def fingerprint_what(key: str) -> str:
    """What a fingerprint key stands for, in words: ``test_data_sha256`` -> "the test data"."""
    if key == "theta0_sha256":
        return "the model's weights (θ0)"
    if key == "weights_sha256":
        return "the model folder's weights files"
    split = key.rpartition("data_sha256")[0] or key.rpartition("num_samples")[0]
    split = split.rstrip("_")
    if key.endswith("num_samples"):
        return f"the number of {split + ' ' if split else ''}samples"
    return f"the {split + ' ' if split else ''}data"


def import_object(spec: str, what: str):
    """Resolve ``pkg.module:name`` or ``path/to/file.py:name`` to the object it names."""
    module_part, sep, attr = str(spec).rpartition(":")
    if not sep or not module_part or not attr:
        raise UserError(f"{what} {spec!r}: expected 'package.module:callable' or 'path/file.py:callable'")
    if module_part.endswith(".py"):
        path = Path(module_part)
        if not path.is_file():
            raise UserError(f"{what} {spec!r}: no such file {str(path)!r}")
        module_name = "_dsurf_user_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        module = sys.modules.get(module_name)
        if module is None:
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            try:
                module_spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[module_name]
                raise UserError(f"{what} {spec!r}: importing {str(path)!r} failed: {first_line(exc)}") from exc
    else:
        try:
            module = importlib.import_module(module_part)
        except Exception as exc:
            raise UserError(f"{what} {spec!r}: cannot import module {module_part!r}: {first_line(exc)}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(f"{what} {spec!r}: module {module_part!r} has no attribute {attr!r}") from None


def _call(spec: str, what: str):
    factory = import_object(spec, what)
    if not callable(factory):
        raise UserError(f"{what} {spec!r} is not callable")
    try:
        return factory()
    except Exception as exc:
        raise UserError(f"{what} {spec!r} raised {first_line(exc)}") from exc


def build_model(spec: str) -> nn.Module:
    """Call the model factory; it must return an ``nn.Module``."""
    model = _call(spec, "--model")
    if not isinstance(model, nn.Module):
        raise UserError(f"--model {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a state_dict, or a dict holding one under ``state_dict`` or ``model``, into ``model``."""
    model.load_state_dict(read_state(path, model, "--checkpoint"))


def read_state(path: str, model: nn.Module, flag: str, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The state_dict in checkpoint ``path`` (or the one it holds under ``state_dict`` or ``model``; a
    ``module.`` prefix from DataParallel/DDP removed), checked to fit ``model``: the same keys and
    shapes. ``path`` may be a folder: a ``save_pretrained`` model folder or a PEFT adapter folder
    (:mod:`.model_folders`). ``mmap``: tensors stay in the file until read (memory-mapped), where its
    format allows. ``flag`` names the option in the one-line errors."""
    file = Path(path)
    if file.is_dir():
        return _fitting(model_folders.read_folder_state(path, model, flag), model, path, flag)
    if not file.is_file():
        raise UserError(f"{flag} {path!r}: no such file or folder")
    loaded = None
    for mapped in ((True, False) if mmap else (False,)):
        try:
            with warnings.catch_warnings():  # torch's advice (weights_only=False) is not ours to give
                warnings.simplefilter("ignore")
                # weights_only: a checkpoint is data, never code to run.
                loaded = torch.load(file, map_location="cpu", weights_only=True, mmap=mapped)
            break
        except Exception as exc:  # torch raises many kinds for a damaged or foreign file
            if mapped:
                continue  # (an old-format file cannot be mapped: read it whole)
            raise UserError(f"{flag} {path!r} is not a readable torch checkpoint of tensors: {first_line(exc)}") from exc
    state = loaded
    if isinstance(loaded, dict):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                state = loaded[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{flag} {path!r} holds no state_dict (nor one under 'state_dict' or 'model')")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    return _fitting(state, model, path, flag)


def _fitting(state: dict[str, torch.Tensor], model: nn.Module, path: str, flag: str) -> dict[str, torch.Tensor]:
    """``state``, checked to have ``model``'s keys and shapes (one line naming the first that differ)."""
    expected = model.state_dict()
    for key, value in expected.items():
        # Checkpoints from before PyTorch 0.4.1 (the paper's among them) have no BatchNorm counter.
        if key.endswith("num_batches_tracked") and key not in state:
            state = {**state, key: torch.zeros_like(value)}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected {_first(unexpected)}")
        raise UserError(f"{flag} {path!r} does not match the model: {'; '.join(parts)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise UserError(
                f"{flag} {path!r} does not match the model: {key!r} has shape {tuple(value.shape)}, "
                f"the model's is {tuple(expected[key].shape)}"
            )
    return state


def _first(names: list[str], count: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")


def load_data(
    spec: str, max_samples: int | None, flag: str = "--data", *, placement: str = "auto", workers: int = 0,
    made: dict[str, torch.Tensor] | None = None,
) -> Samples | StreamedSamples:
    """Call the data factory and return its first ``max_samples`` samples. It may return a ``Dataset``
    whose items are ``(input, target)`` pairs or dicts of tensors (the Hugging Face convention:
    keyword inputs of the model, with the targets under ``labels``), an ``(inputs, targets)`` pair of
    tensors (the inputs may be a dict of tensors), or a dict of tensors holding ``labels``.

    ``placement`` ``stream`` (or ``auto``, for a Dataset too large for host memory: see
    :func:`streams`) returns :class:`StreamedSamples`, read with ``workers`` loader processes on every
    pass; otherwise the samples are read into memory now. ``made``: the tensors a ``text:`` corpus or an
    ``hf-dataset:`` was made into (:func:`make_data`), taken in place of calling ``spec``."""
    if made is not None:
        data = made
    elif is_made_from_files(spec):
        raise UserError(f"{flag} {spec!r}: a corpus or saved data set is made by load_problem, not called")
    else:
        data = _call(spec, flag)
    if isinstance(data, Dataset) and placement in ("auto", "stream"):
        dataset = _sized(data, spec, flag, max_samples)
        if placement == "stream" or streams(dataset, spec, flag):
            return _streamed(dataset, spec, flag, workers)
    samples = _in_memory(data, spec, flag, max_samples)
    if placement == "stream":
        return StreamedSamples(SamplesDataset(samples), workers)
    return samples


def streams(dataset: Dataset, spec: str, flag: str) -> bool:
    """``auto``: whether a Dataset is too large to read into host memory (more than
    ``HOST_DATA_FRACTION`` of what is available to each of the job's ranks on this node, estimated from
    its first sample)."""
    first = _first_samples(dataset, spec, flag, 1)
    return first.nbytes * len(dataset) > HOST_DATA_FRACTION * host_memory_available() / ranks_on_node()


def _sized(dataset: Dataset, spec: str, flag: str, max_samples: int | None) -> Dataset:
    try:
        length = len(dataset)
    except TypeError:
        raise UserError(f"{flag} {spec!r}: the Dataset has no length") from None
    if length == 0:
        raise UserError(f"{flag} {spec!r} holds no samples")
    return dataset if max_samples is None or max_samples >= length else torch.utils.data.Subset(dataset, range(max_samples))


def _first_samples(dataset: Dataset, spec: str, flag: str, count: int) -> Samples:
    """The first ``count`` items, collated, checked to be pairs or dicts with ``labels``."""
    try:
        items = [dataset[i] for i in range(min(count, len(dataset)))]
    except Exception as exc:  # a Dataset may fail in any way (a missing image file, a bad index)
        raise UserError(f"{flag} {spec!r}: reading its first samples failed: {first_line(exc)}") from exc
    first = items[0]
    if isinstance(first, Mapping):
        _split_labels(dict(first), spec, flag)  # raises where 'labels' is missing, naming the keys
    elif not (isinstance(first, (tuple, list)) and len(first) == 2):
        raise UserError(
            f"{flag} {spec!r}: samples must be (input, target) pairs or dicts with 'labels', got {type(first).__name__}"
        )
    try:
        batch = torch.utils.data.default_collate(items)
    except Exception as exc:  # noqa: BLE001 - ragged items, or items that are not tensors
        raise _unstackable(exc, spec, flag) from exc
    return _batch_samples(batch, spec, flag)


def _batch_samples(batch, spec: str, flag: str) -> Samples:
    """A collated batch of a Dataset's items (``[inputs, targets]``, or a dict with ``labels``) as Samples."""
    if isinstance(batch, Mapping):
        inputs, targets = _split_labels(dict(batch), spec, flag)
    else:
        inputs, targets = batch[0], torch.as_tensor(batch[1])
    return _samples(inputs, targets, spec, flag)


def _unstackable(exc: Exception, spec: str, flag: str) -> UserError:
    hint = ""
    if "stack expects each tensor to be equal size" in str(exc) or "resize" in str(exc):
        hint = " (samples must have equal shapes: pad sequences, with attention_mask 0 and labels -100 on the padding)"
    return UserError(f"{flag} {spec!r}: its samples cannot be stacked into batches{hint}: {first_line(exc)}")


def _streamed(dataset: Dataset, spec: str, flag: str, workers: int) -> StreamedSamples:
    """The Dataset read on every pass: refused where two reads of its first items differ (random
    augmentation), since every point would then see other data."""
    once = _first_samples(dataset, spec, flag, STREAM_CHECK_ITEMS)
    again = _first_samples(dataset, spec, flag, STREAM_CHECK_ITEMS)
    if any(not torch.equal(a, b) for (_, a), (_, b) in zip(once.named_tensors(), again.named_tensors())):
        raise UserError(
            f"{flag} {spec!r}: its items differ from one read to the next (random augmentation?); streamed, every "
            "point would see other data: make it deterministic, or read it into memory (--data-placement host)"
        )
    return StreamedSamples(dataset, workers)


def _in_memory(data, spec: str, flag: str, max_samples: int | None) -> Samples:
    if isinstance(data, Mapping) and _tensors(data):
        inputs, targets = _split_labels(dict(data), spec, flag)
        samples = _samples(inputs, targets, spec, flag)
        samples = samples.slice(0, max_samples) if max_samples is not None else samples
    elif isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], torch.Tensor) and _tensors(data[0]):
        samples = _samples(data[0], data[1], spec, flag)
        samples = samples.slice(0, max_samples) if max_samples is not None else samples
    elif isinstance(data, Dataset):
        return _materialise(data, spec, flag, max_samples)
    else:
        raise UserError(
            f"{flag} {spec!r} returned {type(data).__name__}, not a torch Dataset or an (inputs, targets) pair of tensors"
        )
    if len(samples) == 0:
        raise UserError(f"{flag} {spec!r} holds no samples")
    return samples


def _tensors(inputs) -> bool:
    if isinstance(inputs, Mapping):
        return bool(inputs) and all(isinstance(v, torch.Tensor) for v in inputs.values())
    return isinstance(inputs, torch.Tensor)


def _split_labels(item: dict, spec: str, flag: str):
    if "labels" not in item:
        raise UserError(
            f"{flag} {spec!r}: dict samples need their targets under 'labels' (the Hugging Face convention); "
            f"they have {_first(sorted(map(str, item)))}"
        )
    targets = item.pop("labels")
    if not item:
        raise UserError(f"{flag} {spec!r}: dict samples hold only 'labels', no inputs for the model")
    return item, targets


def _samples(inputs, targets, spec: str, flag: str) -> Samples:
    if not _tensors(inputs) or not isinstance(targets, torch.Tensor):
        raise UserError(f"{flag} {spec!r}: inputs and targets must be tensors (or the inputs a dict of tensors)")
    try:
        return Samples(dict(inputs) if isinstance(inputs, Mapping) else inputs, targets)
    except ValueError as exc:
        raise UserError(f"{flag} {spec!r}: {exc}") from None


def _materialise(dataset: Dataset, spec: str, flag: str, max_samples: int | None) -> Samples:
    dataset = _sized(dataset, spec, flag, max_samples)
    _first_samples(dataset, spec, flag, 1)  # (checks the items' form)
    try:
        parts = [_batch_samples(batch, spec, flag) for batch in DataLoader(dataset, batch_size=1024, shuffle=False)]
    except UserError:
        raise
    except Exception as exc:  # a Dataset may fail in any way (a missing image file, a bad index, ragged items)
        raise _unstackable(exc, spec, flag) from exc
    if parts[0].keyword:
        inputs = {key: torch.cat([part.inputs[key] for part in parts]) for key in parts[0].inputs}
    else:
        inputs = torch.cat([part.inputs for part in parts])
    return _samples(inputs, torch.cat([part.targets for part in parts]), spec, flag)


def resolve_loss(spec: str) -> Loss:
    """A built-in loss name (cross_entropy, causal_lm, mse) or an import string of ``loss(outputs, targets)``."""
    if spec in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[spec]
    if ":" not in spec:
        raise UserError(f"--loss {spec!r}: unknown loss; use {', '.join(BUILTIN_LOSSES)} or an import string")
    loss = import_object(spec, "--loss")
    if not callable(loss):
        raise UserError(f"--loss {spec!r} is not callable")
    return as_loss(loss)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA where available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``. With ``auto`` and
    ``cuda``, the process with node-local rank ``r`` takes GPU ``r mod (GPUs on the node)``."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name in ("auto", "cuda") or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine")
        if name.startswith("cuda:"):
            index = int(name.split(":", 1)[1])
            if index >= torch.cuda.device_count():
                raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
            return torch.device(name)
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    raise UserError(f"--device {name!r}: expected auto, cpu or cuda")


def check_problem(problem: Problem, device: torch.device, flags: Mapping[str, str] | None = None) -> None:
    """Run the model and the loss on two samples of every split, and check every target against the
    model's outputs, so that a mismatch fails now, with one clear line, before any file is touched.
    ``flags`` name each split's command-line flag in the messages."""
    flags = flags or {}
    model = problem.model.to(device).eval()
    for split, samples in problem.splits.items():
        flag = flags.get(split, f"the {split} data")
        if isinstance(samples, Samples):  # (streamed data is not read ahead of the run to look)
            _check_finite(samples, flag)
        x, y = to_device(samples.slice(0, 2).inputs, device), samples.targets[:2].to(device)
        try:
            with torch.no_grad():
                out = call_model(model, x)
        except Exception as exc:
            raise UserError(f"the model rejects {flag} (inputs {_shapes(samples)}): {first_line(exc)}") from exc
        try:
            out = logits_of(out)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if out.is_floating_point() and not torch.isfinite(out).all():
            sample = int((~torch.isfinite(out.reshape(len(out), -1))).any(dim=1).nonzero()[0, 0])
            raise UserError(f"{flag}: the model's outputs at θ0 for sample {sample} are not finite (NaN or inf): every loss would be")
        try:
            with torch.no_grad():
                problem.loss.check(out, y, samples.targets)
        except Exception as exc:
            raise UserError(
                f"the loss rejects the model's outputs {tuple(out.shape)} and the targets {tuple(y.shape)} of {flag}: {first_line(exc)}"
            ) from exc
        if problem.loss.loss_count(samples.targets) < 1:
            raise UserError(f"{flag}: every target is ignored (-100): there is nothing to average the loss over")


def _check_finite(samples: Samples, flag: str) -> None:
    """Refuse data with a NaN or an infinity in it: every point's loss would be NaN, and the run would
    finish as if it had computed something."""
    found = samples.first_not_finite()
    if found is not None:
        index, name = found
        raise UserError(f"{flag}: sample {index} has a value that is not finite (NaN or inf) in its {name}: every loss would be NaN")


def _shapes(samples: Samples) -> str:
    if samples.keyword:
        return "{" + ", ".join(f"{k}: {tuple(v.shape[1:])}" for k, v in samples.inputs.items()) + "}"
    return f"of shape {tuple(samples.inputs.shape[1:])}"
