"""A split's data read from its ``Dataset`` on every pass: for data larger than host memory.

:class:`StreamedSamples` stands where :class:`~.samples.Samples` would, for a ``Dataset`` that is not
materialised. Its items are ``(input, target)`` pairs or dicts of tensors with the targets under
``labels`` (the Hugging Face convention). Only the targets are held in memory (read in one pass, at
first use: the losses' counts and label checks need all of them); the inputs are read again on every
pass over the data, in order, by a ``DataLoader`` with ``workers`` processes (in pinned memory for a
GPU). :class:`StreamedBatches` is the evaluator's view of it, the same as
:class:`~.samples.Batches`: a pass of K points reads each batch once, so K amortises the reading.

The items must be the same on every read (no random augmentation): every point must see the same data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .samples import Batches, Inputs, Samples, tensor_bytes, to_device

# Samples per read while the targets are gathered or the content hashed (not the evaluator's batch).
READ_BATCH = 256


class StreamedSamples:
    """The first ``limit`` items (default all) of ``dataset``, read on demand with ``workers`` loader
    processes."""

    def __init__(self, dataset: Dataset, workers: int = 0, limit: int | None = None):
        if workers < 0:
            raise ValueError(f"workers must be 0 or more, got {workers}")
        length = len(dataset)
        self.dataset = dataset if limit is None or limit >= length else Subset(dataset, range(limit))
        self.workers = workers
        self._targets: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def keyword(self) -> bool:
        return isinstance(self.dataset[0], Mapping)

    @property
    def inputs(self) -> Inputs:
        """The first two samples' inputs (what the evaluator probes the model with)."""
        return self.slice(0, 2).inputs

    @property
    def targets(self) -> torch.Tensor:
        """Every target, read once (one pass over the data) and kept."""
        if self._targets is None:
            self._targets = torch.cat([part.targets for part in self.read(READ_BATCH)])
        return self._targets

    def slice(self, start: int, stop: int) -> Samples:
        """Samples ``start .. stop-1``, read now and held in memory (for a few samples)."""
        stop = min(stop, len(self))
        return _collated(torch.utils.data.default_collate([self.dataset[i] for i in range(start, stop)]))

    def read(self, batch_size: int, *, pin: bool = False) -> Iterator[Samples]:
        """One pass over the data in order, in batches of ``batch_size``, in host memory (pinned where
        ``pin``). The worker processes last one pass: kept between passes, they were slow to stop (a
        join timeout per worker when the loader was collected)."""
        loader = DataLoader(self.dataset, batch_size=batch_size, shuffle=False, num_workers=self.workers, pin_memory=pin)
        for batch in loader:
            yield _collated(batch)

    def content_sha256(self) -> str:
        """The digest :meth:`Samples.content_sha256` gives for the same data materialised (so a run may
        resume another placement's file), computed a tensor at a time: a pass over the data for each
        input tensor."""
        digest = hashlib.sha256()
        first = self.slice(0, 1)
        for k, (name, tensor) in enumerate(first.named_tensors()):
            shape = (len(self), *tensor.shape[1:])
            digest.update(f"{name}:{tensor.dtype}:{shape};".encode())
            if name == "targets":  # (held in memory)
                digest.update(tensor_bytes(self.targets))
                continue
            for part in self.read(READ_BATCH):
                digest.update(tensor_bytes(part.named_tensors()[k][1]))
        return digest.hexdigest()


class StreamedBatches(Batches):
    """The batches of streamed data on ``device``: each pass reads the data anew."""

    def __init__(self, samples: StreamedSamples, device: torch.device, *, channels_last: bool):
        self.samples = samples
        self.device = device
        self.resident = False
        self.channels_last = channels_last

    def __call__(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[int, Inputs, torch.Tensor]]:
        n = len(self) if limit is None else min(limit, len(self))
        start = 0
        for part in self.samples.read(batch_size, pin=self.device.type == "cuda"):
            if start >= n:
                break
            if start + len(part) > n:
                part = part.slice(0, n - start)
            yield start, to_device(part.inputs, self.device, self.channels_last), part.targets.to(self.device, non_blocking=True)
            start += len(part)


class SamplesDataset(Dataset):
    """Samples in memory seen as a ``Dataset`` of items (to stream data that a factory returned as
    tensors, as a Dataset that does not fit would be)."""

    def __init__(self, samples: Samples):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        x = self.samples.inputs
        if isinstance(x, dict):
            return {**{key: value[index] for key, value in x.items()}, "labels": self.samples.targets[index]}
        return x[index], self.samples.targets[index]


def _collated(batch) -> Samples:
    """A collated batch, ``[inputs, targets]`` or a dict with ``labels``, as Samples."""
    if isinstance(batch, Mapping):
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        return Samples(inputs, torch.as_tensor(batch["labels"]))
    inputs, targets = batch
    return Samples(inputs, torch.as_tensor(targets))
