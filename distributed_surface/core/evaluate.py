"""Evaluation of loss and accuracy at grid points θ0 + a·d1 (+ b·d2).

The evaluator keeps the model, θ0, the directions and the whole data set resident on its device and
evaluates a chunk of points at a time. It returns plain numpy arrays; it knows nothing of grids,
files or processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .directions import Direction, base_tensors, is_movable

# loss(outputs, targets) -> per-sample losses of shape (B,), or one scalar: the batch mean.
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of logits against class labels."""
    return F.cross_entropy(outputs, targets, reduction="none")


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error. With class labels as targets, the paper code's convention: the
    softmax of the outputs against one-hot targets."""
    if is_class_labels(outputs, targets):
        outputs = F.softmax(outputs, dim=1)
        targets = F.one_hot(targets, num_classes=outputs.shape[1]).to(outputs.dtype)
    if outputs.shape != targets.shape:
        raise ValueError(f"mse needs targets of the output's shape {tuple(outputs.shape)}, got {tuple(targets.shape)}")
    return (outputs - targets).pow(2).reshape(outputs.shape[0], -1).mean(dim=1)


BUILTIN_LOSSES: dict[str, LossFunction] = {"cross_entropy": cross_entropy, "mse": mse}


def is_class_labels(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """True where targets are integer class labels for (batch, classes) outputs."""
    return outputs.dim() == 2 and targets.dim() == 1 and not targets.is_floating_point()


def batch_loss_sum(loss_fn: LossFunction, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The sum over the batch of the per-sample loss, in float64, on the outputs' device."""
    loss = loss_fn(outputs, targets)
    if loss.dim() == 0:  # a batch mean
        return loss.to(torch.float64) * outputs.shape[0]
    if loss.shape != (outputs.shape[0],):
        raise ValueError(
            f"the loss function must return one value per sample or a scalar, got shape {tuple(loss.shape)}"
        )
    return loss.sum(dtype=torch.float64)


class SurfaceEvaluator:
    """Loss (and accuracy, where targets are class labels) at offsets along one or two directions.

    ``evaluate(offsets)`` takes an array of shape (K, ndirections) and returns ``{"loss": (K,),
    "acc": (K,)}`` float64 arrays, averaged over every sample, accuracy in percent. The model is in eval
    mode; its tensors are reset to θ0, bit for bit, after every point.
    """

    def __init__(
        self,
        model: nn.Module,
        directions: Sequence[Direction],
        inputs: torch.Tensor,
        targets: torch.Tensor,
        loss_fn: LossFunction,
        batch_size: int,
        device: torch.device | str = "cpu",
        dir_type: str = "weights",
    ):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.loss_fn = loss_fn
        self.batch_size = batch_size
        # The data goes to the device once, here, not once per point.
        self.inputs = inputs.to(self.device)
        self.targets = targets.to(self.device)
        live = base_tensors(self.model, dir_type)
        names = [name for name, t in live.items() if is_movable(t)]
        self._live = [live[name] for name in names]
        self._theta0 = [live[name].clone() for name in names]
        self._directions = [[d[name].to(self.device, live[name].dtype) for name in names] for d in directions]
        self.outputs = ("loss", "acc") if self._classifies() else ("loss",)

    @property
    def num_samples(self) -> int:
        return len(self.inputs)

    def _classifies(self) -> bool:
        with torch.no_grad():
            probe = self.model(self.inputs[:1])
        return is_class_labels(probe, self.targets[:1])

    @torch.no_grad()
    def evaluate(self, offsets: np.ndarray) -> dict[str, np.ndarray]:
        offsets = np.atleast_2d(np.asarray(offsets, dtype=np.float64))
        if offsets.shape[1] != len(self._directions):
            raise ValueError(f"expected offsets along {len(self._directions)} directions, got {offsets.shape[1]}")
        results = {name: np.empty(len(offsets)) for name in self.outputs}
        try:
            for k, offset in enumerate(offsets):
                self._move_to(offset)
                loss, acc = self._evaluate_here()
                results["loss"][k] = loss
                if "acc" in results:
                    results["acc"][k] = acc
        finally:
            self._restore()
        return results

    def _move_to(self, offset: np.ndarray) -> None:
        # Always start from θ0 rather than stepping from the last point, so no error accumulates.
        for index, (tensor, theta0) in enumerate(zip(self._live, self._theta0)):
            tensor.copy_(theta0)
            for coefficient, direction in zip(offset, self._directions):
                tensor.add_(direction[index], alpha=float(coefficient))

    def _restore(self) -> None:
        for tensor, theta0 in zip(self._live, self._theta0):
            tensor.copy_(theta0)

    def _evaluate_here(self) -> tuple[float, float]:
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for start in range(0, self.num_samples, self.batch_size):
            x = self.inputs[start : start + self.batch_size]
            y = self.targets[start : start + self.batch_size]
            out = self.model(x)
            loss_sum += batch_loss_sum(self.loss_fn, out, y)
            if "acc" in self.outputs:
                correct += (out.argmax(dim=1) == y).sum()
        # One host synchronisation per point, not per batch.
        loss, hits = loss_sum.item(), correct.item()
        return loss / self.num_samples, 100.0 * hits / self.num_samples
