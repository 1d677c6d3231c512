"""Losses and their reductions: every measurement is a sum over counted targets divided by their count.

A loss reduces a batch of outputs to per-point sums, the loss summed over the batch's counted
targets and, where the targets are class labels, the hits of the argmax, in float64 and int64 on the
device. How many targets count is known from the targets alone, before any forward pass. A split's
loss is therefore the mean over all its counted targets (tokens for a sequence model, samples for a
classifier), never a mean of per-batch or per-sequence means.

Outputs carry a leading points dimension K (``(K, B, ...)``: K grid points evaluated on one batch of
B samples); targets are the batch's ``(B, ...)``. Built-in losses:

- ``cross_entropy``: logits ``(B, C)`` against class labels ``(B,)``; ``(B, T, C)`` against ``(B, T)``
  (class dimension last: sequence models, Hugging Face's layout); ``(B, C, d1, ...)`` against
  ``(B, d1, ...)`` (class dimension 1: PyTorch's layout, e.g. segmentation). Where both layouts fit
  (only if a size repeats), the class dimension is the last. Targets equal to ``-100`` (PyTorch's
  ``ignore_index``) are skipped. Float targets of the logits' shape are class probabilities (class
  dimension 1, as ``F.cross_entropy``): one count per probability vector, no accuracy.
- ``causal_lm``: Hugging Face's causal language-model convention: the labels are the input tokens and
  the logits at position t predict the label at t + 1, so logits and labels are shifted by one before
  the token cross-entropy, ``-100`` ignored: ``transformers``' ``model(**batch, labels=...).loss``,
  weighted by tokens over the data set.
- ``mse``: the per-sample mean squared error of the raw outputs against float targets of their shape;
  with class labels ``(B,)`` for ``(B, C)`` outputs, the paper code's convention: the softmax of the
  outputs against one-hot targets. One count per sample.
- A user's ``loss(outputs, targets)`` returns one loss per sample ``(B,)`` or the batch mean (a scalar):
  one count per sample.

Accuracy is the percentage of counted class labels that the argmax over the class dimension hits. It
is measured wherever the targets are class labels for the outputs (see :func:`class_layout`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from .options import BUILTIN_LOSS_NAMES

IGNORE_INDEX = -100

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def logits_of(output) -> torch.Tensor:
    """The tensor a loss takes from a model's output: the output itself, its ``logits`` (an object with
    that attribute, such as a Hugging Face ``ModelOutput``, or a dict with that key), else the first
    element of a tuple or list. Raises ValueError where there is none."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ValueError(
        f"the model's output ({type(output).__name__}) is not a tensor and has neither 'logits' nor a tensor "
        "as its first element"
    )


def class_layout(outputs: torch.Tensor, targets: torch.Tensor, points: bool = False) -> str | None:
    """Where the class dimension of ``outputs`` (one point's ``(B, ...)``, or K points' ``(K, B, ...)``
    where ``points``) is, for integer class-label ``targets``: "last" (``(B, ..., C)`` against
    ``(B, ...)``), "dim1" (``(B, C, ...)`` against ``(B, ...)``), or None where the targets are not
    class labels for these outputs."""
    shape = outputs.shape[1:] if points else outputs.shape
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool or len(shape) < 2:
        return None
    if shape[:-1] == targets.shape:
        return "last"
    if (shape[0], *shape[2:]) == tuple(targets.shape):
        return "dim1"
    return None


def _class_last(outputs: torch.Tensor, layout: str) -> torch.Tensor:
    """K points' outputs ``(K, B, ...)`` with the class dimension moved last."""
    return outputs.movedim(2, -1) if layout == "dim1" else outputs


def _expand(targets: torch.Tensor, k: int) -> torch.Tensor:
    return targets.unsqueeze(0).expand(k, *targets.shape)


def _hits(logits_last: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-point hits (K,) of class-last logits ``(K, B, ..., C)`` against labels ``(B, ...)``. (An
    ignored label, -100, never equals an argmax: it needs no mask.)"""
    k = logits_last.shape[0]
    return (logits_last.argmax(dim=-1) == labels).reshape(k, -1).sum(dim=1)


def check_labels(labels: torch.Tensor, num_classes: int, *, ignore: bool, what: str = "class label") -> None:
    """Raise ValueError where a label is outside ``0 .. num_classes - 1`` (``-100`` allowed where
    ``ignore``), naming the first such sample."""
    labels = labels.long()  # (in a uint8 tensor -100 would wrap around to 156)
    flat = labels.reshape(len(labels), -1) if labels.dim() else labels.reshape(1, 1)
    bad = (flat < 0) | (flat >= num_classes)
    if ignore:
        bad &= flat != IGNORE_INDEX
    rows = torch.nonzero(bad.any(dim=1)).flatten()
    if rows.numel():
        sample = int(rows[0])
        value = int(flat[sample][bad[sample]][0])
        raise ValueError(
            f"{what} {value} of sample {sample} is outside the model's {num_classes} outputs (0..{num_classes - 1})"
        )


class Loss:
    """A loss and its reduction to sums. Subclasses define the conventions (see the module's docstring)."""

    name = "loss"

    def check(self, outputs: torch.Tensor, targets: torch.Tensor, all_targets: torch.Tensor) -> None:
        """Raise ValueError, naming the problem, where this loss cannot take ``outputs`` of one point (on a
        few samples) against their ``targets``, or where any of a split's ``all_targets`` is out of range."""
        raise NotImplementedError

    def has_accuracy(self, outputs: torch.Tensor, targets: torch.Tensor) -> bool:
        return class_layout(outputs, targets) is not None

    def loss_count(self, targets: torch.Tensor) -> int:
        """How many targets the loss is averaged over: the denominator of the split's loss."""
        return len(targets)

    def label_count(self, targets: torch.Tensor) -> int:
        """How many class labels accuracy is counted over."""
        return int((targets.long() != IGNORE_INDEX).sum())

    def sums(self, outputs: torch.Tensor, targets: torch.Tensor, accuracy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-point loss sums (K,) float64 and hits (K,) int64 (None without ``accuracy``) of outputs
        ``(K, B, ...)`` against targets ``(B, ...)``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<loss {self.name}>"


class CrossEntropy(Loss):
    name = "cross_entropy"

    def check(self, outputs, targets, all_targets):
        if targets.is_floating_point():
            if outputs.dim() < 2 or tuple(targets.shape) != tuple(outputs.shape):
                raise ValueError(
                    f"cross_entropy takes integer class labels, or class probabilities of the outputs' shape "
                    f"{tuple(outputs.shape)}; got {str(targets.dtype).replace('torch.', '')} targets of shape {tuple(targets.shape)}"
                )
            return
        layout = class_layout(outputs, targets)
        if layout is None:
            raise ValueError(
                f"cross_entropy: class labels of shape {tuple(targets.shape)} fit neither outputs (B, ..., C) nor "
                f"(B, C, ...) of shape {tuple(outputs.shape)}"
            )
        check_labels(all_targets, outputs.shape[-1 if layout == "last" else 1], ignore=True)

    def loss_count(self, targets):
        if targets.is_floating_point():  # one probability vector per sample (and position)
            return targets[:, 0].numel() if targets.dim() > 1 else len(targets)
        return self.label_count(targets)

    def sums(self, outputs, targets, accuracy):
        k = outputs.shape[0]
        if targets.is_floating_point():
            flat = outputs.reshape(k * outputs.shape[1], *outputs.shape[2:])
            per = F.cross_entropy(flat, _expand(targets, k).reshape(flat.shape), reduction="none")
            return per.reshape(k, -1).sum(dim=1, dtype=torch.float64), None
        logits = _class_last(outputs, class_layout(outputs, targets, points=True))
        return _token_sums(logits, targets, accuracy)


def _token_sums(logits: torch.Tensor, labels: torch.Tensor, accuracy: bool):
    """Cross-entropy sums of class-last logits ``(K, B, ..., C)`` against labels ``(B, ...)``, ignored
    labels contributing nothing."""
    k, classes = logits.shape[0], logits.shape[-1]
    labels = labels.long()
    flat_labels = labels.reshape(-1) if k == 1 else _expand(labels, k).reshape(-1)
    per = F.cross_entropy(logits.reshape(-1, classes), flat_labels, reduction="none", ignore_index=IGNORE_INDEX)
    loss = per.reshape(k, -1).sum(dim=1, dtype=torch.float64)
    return loss, _hits(logits, labels) if accuracy else None


class CausalLM(Loss):
    name = "causal_lm"

    def check(self, outputs, targets, all_targets):
        if targets.is_floating_point() or targets.dim() != 2 or outputs.dim() != 3 or tuple(outputs.shape[:2]) != tuple(targets.shape):
            raise ValueError(
                f"causal_lm takes logits (B, T, V) and integer labels (B, T); got outputs {tuple(outputs.shape)} "
                f"and {str(targets.dtype).replace('torch.', '')} labels {tuple(targets.shape)}"
            )
        if targets.shape[1] < 2:
            raise ValueError("causal_lm needs sequences of at least 2 tokens (each token predicts the next)")
        check_labels(all_targets, outputs.shape[-1], ignore=True, what="token")

    def has_accuracy(self, outputs, targets):
        return True

    def loss_count(self, targets):
        return self.label_count(targets)

    def label_count(self, targets):
        return int((targets[:, 1:].long() != IGNORE_INDEX).sum())

    def sums(self, outputs, targets, accuracy):
        # Position t predicts token t + 1: the labels shift left by one and the last position is ignored
        # (slicing the logits instead would copy them, a tenth of a small model's loss time).
        labels = F.pad(targets[:, 1:].long(), (0, 1), value=IGNORE_INDEX)
        return _token_sums(outputs, labels, accuracy)


class MeanSquaredError(Loss):
    name = "mse"

    def check(self, outputs, targets, all_targets):
        if _paper_labels(outputs, targets):
            check_labels(all_targets, outputs.shape[1], ignore=False)
            return
        if not targets.is_floating_point() or tuple(targets.shape) != tuple(outputs.shape):
            raise ValueError(
                f"mse takes float targets of the outputs' shape {tuple(outputs.shape)}, or class labels (B,) for "
                f"outputs (B, C); got {str(targets.dtype).replace('torch.', '')} targets of shape {tuple(targets.shape)}"
            )

    def has_accuracy(self, outputs, targets):
        return _paper_labels(outputs, targets)

    def label_count(self, targets):
        return len(targets)

    def sums(self, outputs, targets, accuracy):
        k, b = outputs.shape[0], outputs.shape[1]
        if outputs.dim() == 3 and class_layout(outputs, targets, points=True) == "last":  # (K, B, C), (B,)
            probabilities = F.softmax(outputs, dim=-1)
            one_hot = F.one_hot(targets.long(), num_classes=outputs.shape[-1]).to(probabilities.dtype)
            per = (probabilities - one_hot).pow(2).mean(dim=-1)
        else:
            per = (outputs - targets).pow(2).reshape(k, b, -1).mean(dim=2)
        loss = per.sum(dim=1, dtype=torch.float64)
        return loss, _hits(outputs, targets) if accuracy else None


def _paper_labels(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """(B, C) outputs against (B,) class labels: mse's softmax-against-one-hot case."""
    return outputs.dim() == 2 and class_layout(outputs, targets) == "last"


class UserLoss(Loss):
    """A user's ``loss(outputs, targets)``: one loss per sample, or the batch mean."""

    def __init__(self, function: LossFunction, name: str | None = None):
        self.function = function
        self.name = name or getattr(function, "__name__", "loss")

    def check(self, outputs, targets, all_targets):
        value = self.function(outputs, targets)
        if not isinstance(value, torch.Tensor) or value.shape not in ((), (outputs.shape[0],)):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"the loss function must return one value per sample or a scalar, got {shape}")
        layout = class_layout(outputs, targets)
        if layout is not None:
            check_labels(all_targets, outputs.shape[-1 if layout == "last" else 1], ignore=True)

    def sums(self, outputs, targets, accuracy):
        totals = []
        for point in outputs:
            value = self.function(point, targets)
            if value.dim() == 0:  # a batch mean
                totals.append(value.to(torch.float64) * point.shape[0])
            elif value.shape == (point.shape[0],):
                totals.append(value.sum(dtype=torch.float64))
            else:
                raise ValueError(f"the loss function must return one value per sample or a scalar, got shape {tuple(value.shape)}")
        loss = torch.stack(totals) if totals else torch.zeros(0, dtype=torch.float64, device=outputs.device)
        if not accuracy:
            return loss, None
        return loss, _hits(_class_last(outputs, class_layout(outputs, targets, points=True)), targets)


cross_entropy = CrossEntropy()
causal_lm = CausalLM()
mse = MeanSquaredError()
BUILTIN_LOSSES: dict[str, Loss] = {loss.name: loss for loss in (cross_entropy, causal_lm, mse)}
assert tuple(BUILTIN_LOSSES) == BUILTIN_LOSS_NAMES


def as_loss(loss: Loss | LossFunction) -> Loss:
    """A :class:`Loss` as it is; a plain function ``loss(outputs, targets)`` wrapped as a user's loss."""
    return loss if isinstance(loss, Loss) else UserLoss(loss)
