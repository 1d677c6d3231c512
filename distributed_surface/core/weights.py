"""Moving a model to a grid point and back: θ0, the directions, and stacked copies for vmap.

Point ``(a, b)`` is θ0 + a·d1 + b·d2. Only the tensors whose direction is non-zero along some axis
move (biases and norm layers stay where they are under ``ignore="biasbn"``). A point is always reached
from θ0, never stepped to from the previous point, so no rounding error accumulates, and
:meth:`MovingWeights.restore` gives back θ0 bit for bit.

θ0 and the directions may be kept in a wider dtype than the model's own tensors (``--dtype bf16``: the
model computes in bfloat16, θ0 and the directions stay fp32): each point is then summed in θ0's dtype
and cast to the model's once, so that small offsets do not vanish in bfloat16's rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .directions import Direction, base_tensors, is_movable


class MovingWeights:
    """The moving tensors of ``model`` (its own, live), their θ0 and their directions on ``device``.

    ``theta0``: θ0 by name, where the model's own tensors hold it in a narrower dtype (a model cast to
    bfloat16 for the forward pass): θ0 and the directions are kept in its dtype, and each point is cast
    to the model's once. None: θ0 is the model's tensors as they are."""

    def __init__(
        self, model: nn.Module, directions: Sequence[Direction], dir_type: str, device: torch.device,
        theta0: dict[str, torch.Tensor] | None = None,
    ):  # fmt: skip
        live = base_tensors(model, dir_type)
        master = live if theta0 is None else theta0
        names = [name for name, t in live.items() if is_movable(t)]
        missing = [name for name in names if any(name not in d for d in directions)]
        if missing:
            raise ValueError(f"the directions have no tensor for {missing[0]!r}")
        moved = [[d[name].to(device, master[name].dtype) for name in names] for d in directions]
        moving = [i for i in range(len(names)) if any(bool(d[i].count_nonzero()) for d in moved)]
        self.names = [names[i] for i in moving]
        self.live = [live[names[i]] for i in moving]
        self.theta0 = [master[names[i]].to(device).clone() for i in moving]
        self.directions = [[d[i] for i in moving] for d in moved]
        self.ndirections = len(directions)
        self.device = device

    def __bool__(self) -> bool:
        return bool(self.live)

    @property
    def nbytes(self) -> int:
        """Bytes of one copy of the moving tensors."""
        return sum(t.nbytes for t in self.theta0)

    def move_to(self, offset: np.ndarray) -> None:
        """Set the model's tensors to θ0 + Σ offset[j]·d_j (summed in θ0's dtype, then cast; and forget
        autocast's casts of the old values)."""
        torch.clear_autocast_cache()
        for index, (tensor, theta0) in enumerate(zip(self.live, self.theta0)):
            point = tensor if tensor.dtype == theta0.dtype else theta0.clone()
            point.copy_(theta0)
            for coefficient, direction in zip(offset, self.directions):
                point.add_(direction[index], alpha=float(coefficient))
            if point is not tensor:
                tensor.copy_(point)

    def restore(self) -> None:
        """Set the model's tensors back to θ0: bit for bit, or θ0 cast to their dtype (and forget
        autocast's casts of the old values)."""
        torch.clear_autocast_cache()
        for tensor, theta0 in zip(self.live, self.theta0):
            tensor.copy_(theta0)

    def stacked(self, offsets: np.ndarray) -> dict[str, torch.Tensor]:
        """θ0 + a_k·d1 + b_k·d2 for each of the K offsets, stacked along a new first dimension: θ0 first,
        then each direction in turn, as :meth:`move_to` sums them, in θ0's dtype, and cast to the model's."""
        stacked, coefficients = {}, {}
        for index, (name, theta0, live) in enumerate(zip(self.names, self.theta0, self.live)):
            if theta0.dtype not in coefficients:
                coefficients[theta0.dtype] = torch.as_tensor(offsets, dtype=theta0.dtype).to(self.device, non_blocking=True)
            shape = (len(offsets),) + (1,) * theta0.dim()
            tensor = theta0.unsqueeze(0).expand(len(offsets), *theta0.shape).clone()
            for j, direction in enumerate(self.directions):
                tensor.addcmul_(coefficients[theta0.dtype][:, j].reshape(shape), direction[index])
            stacked[name] = tensor.to(live.dtype)
        return stacked
