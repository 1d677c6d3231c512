"""A split's data and its batches: resident on the evaluator's device, or streamed to it.

:class:`Samples` holds a split's inputs, a tensor or a dict of tensors (keyword arguments of the model,
the Hugging Face convention: ``input_ids``, ``attention_mask``, ...), and its targets, all indexed by
sample along dimension 0. :class:`Batches` yields the batches of one split on the device: slices of data
kept on the device, or copies streamed from host memory (on a GPU from pinned memory on a side stream,
the next batch copied while this one is computed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

Inputs = torch.Tensor | dict[str, torch.Tensor]


@dataclass(frozen=True)
class Samples:
    """The inputs (a tensor, or a dict of tensors given to the model as keyword arguments) and targets
    of one split, indexed by sample along dimension 0."""

    inputs: Inputs
    targets: torch.Tensor

    def __post_init__(self):
        lengths = {name: len(t) for name, t in self.named_tensors()}
        if len(set(lengths.values())) > 1:
            described = ", ".join(f"{n} {k}" for n, k in lengths.items())
            raise ValueError(f"inputs and targets differ in length: {described}")

    @classmethod
    def of(cls, data) -> "Samples":
        """Samples as they are, or from an ``(inputs, targets)`` pair."""
        if isinstance(data, Samples):
            return data
        inputs, targets = data
        return cls(dict(inputs) if isinstance(inputs, Mapping) else inputs, targets)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def keyword(self) -> bool:
        """True where the inputs are keyword arguments of the model."""
        return isinstance(self.inputs, dict)

    def named_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """Every tensor under a stable name (``inputs``, or ``inputs.<key>`` in key order; ``targets``)."""
        if self.keyword:
            named = [(f"inputs.{key}", self.inputs[key]) for key in sorted(self.inputs)]
        else:
            named = [("inputs", self.inputs)]
        return named + [("targets", self.targets)]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for _, t in self.named_tensors())

    def content_sha256(self) -> str:
        """:func:`tensors_sha256` of :meth:`named_tensors`."""
        return tensors_sha256(self.named_tensors())

    def first_not_finite(self) -> tuple[int, str] | None:
        """The first sample (its index, and the tensor's name) with a NaN or an infinity in a floating
        input or target; None where every value is finite."""
        found = None
        for name, tensor in self.named_tensors():
            if not tensor.is_floating_point() or not len(tensor):
                continue
            bad = ~torch.isfinite(tensor.reshape(len(tensor), -1)).all(dim=1)
            if bad.any():
                index = int(bad.nonzero()[0, 0])
                if found is None or index < found[0]:
                    found = (index, name)
        return found

    def slice(self, start: int, stop: int) -> "Samples":
        return Samples(map_inputs(self.inputs, lambda t: t[start:stop]), self.targets[start:stop])

    def pinned(self, device: torch.device) -> "Samples":
        """Host data to stream to a GPU: in pinned memory where that can be had, so copies run
        asynchronously."""
        if device.type != "cuda":
            return self
        try:
            return Samples(map_inputs(self.inputs, torch.Tensor.pin_memory), self.targets.pin_memory())
        except RuntimeError:
            return self


def tensors_sha256(named_tensors) -> str:
    """A digest of each tensor's name, dtype, shape and bytes, in the order given."""
    digest = hashlib.sha256()
    for name, tensor in named_tensors:
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's elements as bytes, in C order, on the host."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""


def map_inputs(inputs: Inputs, function) -> Inputs:
    if isinstance(inputs, dict):
        return {key: function(value) for key, value in inputs.items()}
    return function(inputs)


def to_device(inputs: Inputs, device: torch.device, channels_last: bool = False) -> Inputs:
    """Inputs on ``device`` (4-D image tensors in channels-last where asked)."""

    def move(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t

    return map_inputs(inputs, move)


def call_model(model: nn.Module, inputs: Inputs):
    """The model's raw output: ``model(**inputs)`` for keyword inputs, else ``model(inputs)``."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def batch_length(inputs: Inputs) -> int:
    if isinstance(inputs, dict):
        return len(next(iter(inputs.values())))
    return len(inputs)


class Batches:
    """The batches of one split on ``device``. Resident data (``resident=True``) is moved to the device
    once, here; other data stays in (pinned) host memory and each batch is copied when it is needed."""

    def __init__(self, samples: Samples, device: torch.device, *, resident: bool, channels_last: bool):
        self.device = device
        self.resident = resident
        self.channels_last = channels_last
        if resident:
            self.samples = Samples(to_device(samples.inputs, device, channels_last), samples.targets.to(device))
        else:
            self.samples = samples.pinned(device)

    def __len__(self) -> int:
        return len(self.samples)

    def head(self, count: int) -> tuple[Inputs, torch.Tensor]:
        """The first ``count`` samples on the device."""
        part = self.samples.slice(0, count)
        return to_device(part.inputs, self.device, self.channels_last), part.targets.to(self.device)

    def __call__(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[int, Inputs, torch.Tensor]]:
        """``(first sample, inputs, targets)`` of each batch of at most ``batch_size`` samples, over the
        first ``limit`` samples (default all)."""
        n = len(self) if limit is None else min(limit, len(self))
        starts = range(0, n, batch_size)
        if self.resident or self.device.type != "cuda":
            for start in starts:
                part = self.samples.slice(start, min(start + batch_size, n))
                yield start, to_device(part.inputs, self.device, self.channels_last), part.targets.to(self.device)
            return
        copy_stream = torch.cuda.Stream(self.device)
        compute_stream = torch.cuda.current_stream(self.device)

        def fetch(start):
            part = self.samples.slice(start, min(start + batch_size, n))
            with torch.cuda.stream(copy_stream):
                return to_device(part.inputs, self.device, self.channels_last), part.targets.to(self.device, non_blocking=True)

        upcoming = fetch(0)
        for start in starts:
            compute_stream.wait_stream(copy_stream)
            x, y = upcoming
            map_inputs(x, lambda t: t.record_stream(compute_stream))
            y.record_stream(compute_stream)
            if start + batch_size < n:
                upcoming = fetch(start + batch_size)
            yield start, x, y
