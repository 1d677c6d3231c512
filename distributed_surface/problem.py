"""The problem a surface is computed for: model, checkpoint, data and loss, built from import strings.

Every user mistake here raises :class:`UserError` with one line that names the problem.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .core.evaluate import BUILTIN_LOSSES, LossFunction, batch_loss_sum
from .errors import UserError


@dataclass
class Problem:
    """A model holding θ0, the data as two tensors, and the loss."""

    model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    loss_fn: LossFunction


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
                raise UserError(f"{what} {spec!r}: importing {str(path)!r} failed: {_describe(exc)}") from exc
    else:
        try:
            module = importlib.import_module(module_part)
        except Exception as exc:
            raise UserError(f"{what} {spec!r}: cannot import module {module_part!r}: {_describe(exc)}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(f"{what} {spec!r}: module {module_part!r} has no attribute {attr!r}") from None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _call(spec: str, what: str):
    factory = import_object(spec, what)
    if not callable(factory):
        raise UserError(f"{what} {spec!r} is not callable")
    try:
        return factory()
    except Exception as exc:
        raise UserError(f"{what} {spec!r} raised {_describe(exc)}") from exc


def build_model(spec: str) -> nn.Module:
    """Call the model factory; it must return an ``nn.Module``."""
    model = _call(spec, "--model")
    if not isinstance(model, nn.Module):
        raise UserError(f"--model {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a state_dict, or a dict holding one under ``state_dict`` or ``model``, into ``model``."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--checkpoint {path!r}: no such file")
    try:
        with warnings.catch_warnings():  # torch's advice (weights_only=False) is not ours to give
            warnings.simplefilter("ignore")
            # weights_only: a checkpoint is data, never code to run.
            loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged or foreign file
        raise UserError(
            f"--checkpoint {path!r} is not a readable torch checkpoint of tensors: {_describe(exc)}"
        ) from exc
    state = loaded
    if isinstance(loaded, dict):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                state = loaded[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--checkpoint {path!r} holds no state_dict (nor one under 'state_dict' or 'model')")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
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
        raise UserError(f"--checkpoint {path!r} does not match the model: {'; '.join(parts)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise UserError(
                f"--checkpoint {path!r} does not match the model: {key!r} has shape {tuple(value.shape)}, "
                f"the model's is {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state)


def _first(names: list[str], count: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")


def load_data(spec: str, max_samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Call the data factory; it must return a ``Dataset`` of (input, target) pairs or an
    ``(inputs, targets)`` pair of tensors. Returns the first ``max_samples`` samples as two tensors."""
    data = _call(spec, "--data")
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        inputs, targets = data
        if len(inputs) != len(targets):
            raise UserError(f"--data {spec!r}: {len(inputs)} inputs but {len(targets)} targets")
        if max_samples is not None:
            inputs, targets = inputs[:max_samples], targets[:max_samples]
    elif isinstance(data, Dataset):
        inputs, targets = _materialise(data, spec, max_samples)
    else:
        raise UserError(
            f"--data {spec!r} returned {type(data).__name__}, not a torch Dataset or an (inputs, targets) pair of tensors"
        )
    if len(inputs) == 0:
        raise UserError(f"--data {spec!r} holds no samples")
    return inputs, targets


def _materialise(dataset: Dataset, spec: str, max_samples: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        length = len(dataset)
    except TypeError:
        raise UserError(f"--data {spec!r}: the Dataset has no length") from None
    if max_samples is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(length, max_samples)))
    inputs, targets = [], []
    try:
        for x, y in DataLoader(dataset, batch_size=1024, shuffle=False):
            inputs.append(x)
            targets.append(torch.as_tensor(y))
    except Exception as exc:  # a Dataset may fail in any way (a missing image file, a bad index)
        raise UserError(f"--data {spec!r}: samples must be (input, target) pairs of tensors: {_describe(exc)}") from exc
    if not inputs:
        return torch.empty(0), torch.empty(0)
    return torch.cat(inputs), torch.cat(targets)


def resolve_loss(spec: str) -> LossFunction:
    """A built-in loss name (cross_entropy, mse) or an import string of ``loss(outputs, targets)``."""
    if spec in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[spec]
    if ":" not in spec:
        raise UserError(f"--loss {spec!r}: unknown loss; use {' or '.join(BUILTIN_LOSSES)} or an import string")
    loss = import_object(spec, "--loss")
    if not callable(loss):
        raise UserError(f"--loss {spec!r} is not callable")
    return loss


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


def check_model_accepts_data(problem: Problem, device: torch.device) -> None:
    """Run the model and the loss on two samples so that a mismatch fails now, with one clear line."""
    model = problem.model.to(device).eval()
    x, y = problem.inputs[:2].to(device), problem.targets[:2].to(device)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise UserError(
            f"the model rejects the data (inputs of shape {tuple(problem.inputs.shape[1:])}): {_describe(exc)}"
        ) from exc
    if not isinstance(out, torch.Tensor):
        raise UserError(f"the model must return a tensor, it returned {type(out).__name__}")
    try:
        batch_loss_sum(problem.loss_fn, out, y)
    except Exception as exc:
        raise UserError(
            f"the loss rejects the model's outputs {tuple(out.shape)} and targets {tuple(y.shape)}: {_describe(exc)}"
        ) from exc
