"""The arithmetic a pass runs in: fp32 (exact: TF32 off on GPUs), TF32 products, or bfloat16.

Only the products (convolutions, linear layers, matmuls) change precision; losses and argmaxes are
taken in fp32 at least and summed in float64.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from .options import DTYPES, PRECISIONS

# The largest relative error of the loss each precision may bring against fp32: about 4× the largest
# error measured over whole grids (benchmarks/results/precision_cpu.md). TF32 keeps 10 mantissa bits
# (GPUs only: on a CPU tf32 is fp32), bfloat16 7. tests/test_fast_evaluator.py holds the evaluator to
# these bounds and docs/performance.md shows them.
PRECISION_LOSS_ERROR = {"fp32": 1e-6, "tf32": 1e-2, "bf16": 5e-2}
# --dtype: the weights' dtype in the forward pass.
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
assert tuple(TORCH_DTYPES) == DTYPES


@contextmanager
def numerics(device: torch.device, precision: str):
    """fp32 with TF32 off (exact), TF32 on, or bfloat16 autocast, for the duration of the block."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    with ExitStack() as stack:
        if device.type == "cuda":
            stack.enter_context(_tf32(precision == "tf32"))
        if precision == "bf16":
            # The cast cache keeps each weight's bfloat16 copy while the block lasts, so a pass casts the
            # weights once, not once per batch; whatever moves the weights in the block clears it
            # (MovingWeights.move_to), else the next point would run on the last point's copies.
            stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
        yield


@contextmanager
def _tf32(enabled: bool):
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Losses and argmaxes are taken in fp32 at least: bf16 outputs are widened first."""
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


class BFloat16Products(TorchFunctionMode):
    """bfloat16 for the products (convolutions, linear layers, matmuls) inside vmap, where autocast does
    not reach: their floating inputs are cast to bfloat16; normalisation layers get fp32 inputs (their
    statistics and affine parameters stay fp32, as under autocast)."""

    PRODUCTS = frozenset({
        F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.linear,
        torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.Tensor.matmul, torch.Tensor.__matmul__,
    })  # fmt: skip
    NORMS = frozenset({F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm, torch.batch_norm, torch.layer_norm})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.PRODUCTS:
            args, kwargs = cast_floats((args, kwargs), torch.bfloat16)
        elif func in self.NORMS:
            args, kwargs = cast_floats((args, kwargs), torch.float32)
        return func(*args, **kwargs)


def cast_floats(tree, dtype: torch.dtype):
    def cast(value):
        return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    return tree_map(cast, tree)
