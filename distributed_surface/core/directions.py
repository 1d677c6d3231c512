"""Random directions in weight space, normalised as in Li et al. (NeurIPS 2018).

A direction is a dict that maps each parameter name to a tensor of that parameter's shape. Only torch
is used here, so the functions can be called from a notebook.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .options import DIR_TYPES, IGNORE_RULES, NORMS

# The paper's code adds this to every norm it divides by, so that an all-zero slice stays finite.
_EPS = 1e-10

Direction = dict[str, torch.Tensor]


def base_tensors(model: nn.Module, dir_type: str) -> dict[str, torch.Tensor]:
    """The tensors a direction moves: ``named_parameters()`` for "weights", ``state_dict()`` (which
    adds buffers such as BatchNorm running statistics) for "states". Detached, not copied."""
    if dir_type == "weights":
        return {name: p.detach() for name, p in model.named_parameters()}
    if dir_type == "states":
        return {name: t.detach() for name, t in model.state_dict(keep_vars=True).items()}
    raise ValueError(f"unknown direction type {dir_type!r}; expected one of {', '.join(DIR_TYPES)}")


def is_movable(tensor: torch.Tensor) -> bool:
    """Integer and boolean tensors (e.g. BatchNorm's ``num_batches_tracked``) never move."""
    return tensor.is_floating_point()


def random_direction(base: Mapping[str, torch.Tensor], generator: torch.Generator) -> Direction:
    """One N(0, 1) tensor per floating-point tensor of ``base``, drawn in ``base``'s order on the CPU in
    float32 (so a seed gives the same direction on every device); zeros for integer tensors."""
    direction = {}
    for name, tensor in base.items():
        if is_movable(tensor):
            drawn = torch.randn(tuple(tensor.shape), generator=generator, dtype=torch.float32)
            direction[name] = drawn.to(tensor.dtype)
        else:
            direction[name] = torch.zeros(tuple(tensor.shape), dtype=tensor.dtype)
    return direction


def normalize_direction(direction: Direction, base: Mapping[str, torch.Tensor], norm: str, ignore: str) -> Direction:
    """Rescale ``direction`` in place to the scale of ``base`` (θ0) and return it.

    Tensors with more than one dimension: ``filter`` rescales each slice along dim 0 to the norm of
    θ0's slice, ``layer`` the whole tensor to θ0's norm, ``weight`` multiplies by θ0 elementwise,
    ``none`` leaves it. Tensors with one dimension or fewer are zeroed under ``ignore="biasbn"`` and set
    to θ0 under ``ignore="none"``. Integer tensors stay zero.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")
    if ignore not in IGNORE_RULES:
        raise ValueError(f"unknown ignore rule {ignore!r}; expected one of {', '.join(IGNORE_RULES)}")
    for name, d in direction.items():
        w = base[name].detach().to(device=d.device)
        if not is_movable(w):
            d.zero_()
        elif d.dim() <= 1:
            if ignore == "biasbn":
                d.zero_()
            else:
                d.copy_(w)
        elif norm == "filter":
            for d_slice, w_slice in zip(d, w):
                d_slice.mul_(w_slice.norm() / (d_slice.norm() + _EPS))
        elif norm == "layer":
            d.mul_(w.norm() / (d.norm() + _EPS))
        elif norm == "weight":
            d.mul_(w)
    return direction


def make_directions(
    base: Mapping[str, torch.Tensor], count: int, norm: str, ignore: str, seed: int
) -> list[Direction]:
    """``count`` normalised directions (1 for a curve, 2 for a surface), drawn one after the other from
    one generator seeded with ``seed``. Returned on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    cpu_base = {name: t.detach().cpu() for name, t in base.items()}
    return [normalize_direction(random_direction(cpu_base, generator), cpu_base, norm, ignore) for _ in range(count)]


def difference(base: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> Direction:
    """``target − base`` for every tensor of ``base`` (zero for integer tensors): the direction from one
    model to another, not normalised (the paper's ``--model_file2``). Float64 arithmetic, stored in each
    tensor's own dtype."""
    direction = {}
    for name, tensor in base.items():
        other = target[name]
        if is_movable(tensor):
            direction[name] = (other.detach().double() - tensor.detach().double()).to(tensor.dtype).cpu()
        else:
            direction[name] = torch.zeros(tuple(tensor.shape), dtype=tensor.dtype)
    return direction


def restrict(direction: Direction, keep) -> Direction:
    """``direction`` with every tensor whose name ``keep(name)`` rejects set to zero (in place)."""
    for name, tensor in direction.items():
        if not keep(name):
            tensor.zero_()
    return direction
