"""Evaluation of loss and accuracy at grid points θ0 + a·d1 (+ b·d2).

The evaluator keeps the model, θ0 and the directions on its device, and the data too where it fits
(else it streams the data from host memory, batch by batch, overlapping the copies with compute). It
evaluates a chunk of points at a time, in one of two ways:

- ``vmap``: K points in one pass over the data. ``torch.func.functional_call`` under ``torch.vmap``
  runs the model once per batch with K stacked copies of the moving tensors, θ0 + a_k·d1 + b_k·d2,
  so each batch is read once for K points and every kernel does K points' work.
- ``plain``: one point at a time: the model's own tensors are set to the point (always from θ0, so no
  error accumulates), the data passes through, and θ0 is restored bit for bit at the end.

Both agree to about 1e-7 relative in fp32 (the same arithmetic, summed in another order). The plan is
decided at the first call. ``vmap="auto"`` (the default) decides without timing, so that ranks on like
devices compute a point the same way (the batch size and K still follow the free memory, on a GPU
especially; values then agree to ~1e-7): vmap where one point's forward pass is dominated by
per-operation overhead rather than arithmetic (its FLOPs, counted with forward hooks on the probe
sample, below ``VMAP_FLOPS_PER_MODULE`` for the device per module call), after checking on a few samples
that vmap gives the model's own outputs. ``vmap="tune"`` times one point per pass against K per pass on
a batch and keeps the faster (plans may then differ between ranks: values agree to ~1e-6). A model vmap
cannot run (data-dependent control flow, ``.item()``, random ops in eval mode, in-place updates of its
own state) falls back to ``plain`` with a warning that says why. The batch size and K come from the free
device memory (on a CPU: from a cache-sized working set) unless given. Loss and hit counts stay on the
device until the end of a call: there is no host synchronisation per batch or per point.

It returns plain numpy arrays; it knows nothing of grids, files or processes. torch and numpy only.
"""

from __future__ import annotations

import ctypes
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from .directions import Direction, base_tensors, is_movable

# loss(outputs, targets) -> per-sample losses of shape (B,), or one scalar: the batch mean.
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PRECISIONS = ("fp32", "tf32", "bf16")
# The largest relative error of the loss each precision may bring against fp32: about 4× the largest
# error measured over whole grids (benchmarks/results/precision_cpu.md: bf16 2.2e-2 and emulated TF32
# 2.0e-3 on the built-in example, where the loss spans 0.003..23). TF32 keeps 10 mantissa bits (GPUs
# only: on a CPU --precision tf32 is fp32), bfloat16 7. tests/test_fast_evaluator.py holds the evaluator
# to these bounds and the README shows them.
PRECISION_LOSS_ERROR = {"fp32": 1e-6, "tf32": 1e-2, "bf16": 5e-2}
VMAP_MODES = ("auto", "tune", "on", "off")
# vmap pays where one point's forward pass is overhead-bound: where its FLOPs are fewer than this many per
# module call, i.e. the work one module call's fixed cost (~10 µs of dispatch, and of kernel launch on
# a GPU) would do at the device's rate (CPU: ~200 GFLOP/s on 2 cores; GPU: ~20 TFLOP/s, an estimate: not
# measured yet). On 2 CPU cores: a 64-sample toy CNN (0.2 MFLOP a pass, 6 modules) runs 5× faster with
# vmap; the built-in example (550 MFLOP, 9 modules) and ResNet-20 (10 GFLOP, 65) do not gain from it.
VMAP_FLOPS_PER_MODULE = {"cpu": 2e6, "cuda": 2e8}

MAX_POINTS_PER_PASS = 64
# On a CPU the fastest batch keeps the largest activation about cache-sized (ResNet-20 on 2 EPYC cores:
# 128-256 samples); on a GPU the batch and K fill this share of the free memory.
CPU_WORKING_SET_BYTES = 8 * 2**20
# One point per pass on a CPU: at most this many samples a batch. Measured on 2 EPYC cores (fp32, and
# channels-last): ResNet-20 runs fastest at 128-256, the built-in example at 128 (2-3× faster than at
# 899, where the working-set rule alone would put it; see benchmarks/README.md).
CPU_MAX_BATCH = 128
GPU_MEMORY_FRACTION = 0.6
# Data stays on the GPU when it takes at most this share of the free memory (the rest is for activations).
RESIDENT_FRACTION = 0.5
MAX_BATCH = 8192
# vmap must be this much faster per point-sample than one point per pass to be chosen: timings of one
# batch are noisy, and a small gain measured on one batch often vanishes over the whole data.
TUNE_MARGIN = 1.25


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


@dataclass
class Plan:
    """How the evaluator runs: ``path`` "vmap" (``points_per_pass`` points per pass over the data) or
    "plain" (one point at a time), ``batch_size`` samples per forward pass, data ``resident`` on the
    device or streamed, and why."""

    path: str
    points_per_pass: int
    batch_size: int
    resident: bool
    reason: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class SurfaceEvaluator:
    """Loss (and accuracy, where targets are class labels) at offsets along one or two directions.

    ``evaluate(offsets)`` takes an array of shape (K, ndirections) and returns ``{"loss": (K,),
    "acc": (K,)}`` float64 arrays, averaged over every sample, accuracy in percent. The model is in eval
    mode; its tensors hold θ0, bit for bit, after every call.

    Speed settings (none changes the values beyond float rounding, except ``precision``):
    ``batch_size`` samples per forward pass (None: from the free memory); ``points_per_pass`` K, points
    per pass over the data under vmap (None: as many as fit, at most 64); ``vmap`` "auto" (vmap where
    one point's pass is overhead-bound), "tune" (time both ways, keep the faster), "on" (vmap wherever
    the model allows) or "off" (one point at a time);
    ``precision`` "fp32" (exact: TF32 is switched off on the GPU), "tf32" (TF32 matmuls and
    convolutions on GPUs that have them; the same as fp32 on a CPU) or "bf16" (autocast to bfloat16);
    ``compile`` (``torch.compile`` the forward pass); ``channels_last`` (for 4-D inputs; None: on a CPU only); ``resident``
    (None: keep the data on the device where it fits, else stream it; True/False to force).
    """

    def __init__(
        self,
        model: nn.Module,
        directions: Sequence[Direction],
        inputs: torch.Tensor,
        targets: torch.Tensor,
        loss_fn: LossFunction,
        batch_size: int | None = None,
        device: torch.device | str = "cpu",
        dir_type: str = "weights",
        *,
        points_per_pass: int | None = None,
        vmap: str = "auto",
        precision: str = "fp32",
        compile: bool = False,
        channels_last: bool | None = None,
        resident: bool | None = None,
    ):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if points_per_pass is not None and points_per_pass < 1:
            raise ValueError(f"points per pass must be at least 1, got {points_per_pass}")
        if vmap not in VMAP_MODES:
            raise ValueError(f"unknown vmap mode {vmap!r}; expected one of {', '.join(VMAP_MODES)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        self.device = torch.device(device)
        if self.device.type == "cpu":
            _keep_freed_host_memory()
        self.model = model.to(self.device).eval()
        self.loss_fn = loss_fn
        self.precision = precision
        self.vmap_mode = vmap
        self._batch_size = batch_size
        self._points_per_pass = points_per_pass
        # None: channels-last on a CPU, where it measured 1.1-2.5× faster (benchmarks/), and only where
        # the model accepts it; not on a GPU, where it is not measured yet.
        asked = self.device.type == "cpu" if channels_last is None else bool(channels_last)
        self._channels_last = asked and inputs.dim() == 4
        # Before the tensors are taken: converting the model's memory format replaces their storage.
        probe = self._probe(inputs[: min(len(inputs), 2)], warn=channels_last is not None)
        self.outputs = ("loss", "acc") if is_class_labels(probe, targets[: len(probe)].to(self.device)) else ("loss",)

        live = base_tensors(self.model, dir_type)
        names = [name for name, t in live.items() if is_movable(t)]
        directions = [[d[name].to(self.device, live[name].dtype) for name in names] for d in directions]
        # Tensors whose direction is zero along every axis (biases and norm layers under ignore=biasbn)
        # never move: neither path touches them.
        moving = [i for i in range(len(names)) if any(bool(d[i].count_nonzero()) for d in directions)]
        self._names = [names[i] for i in moving]
        self._live = [live[names[i]] for i in moving]
        self._theta0 = [t.clone() for t in self._live]
        self._directions = [[d[i] for i in moving] for d in directions]
        self._ndirections = len(directions)

        self.resident = self._fits_on_device(inputs, targets) if resident is None else bool(resident)
        if self.resident:
            # The data goes to the device once, here, not once per point.
            self.inputs = self._to_device(inputs)
            self.targets = targets.to(self.device)
        else:
            self.inputs, self.targets = _pinned(inputs, self.device), _pinned(targets, self.device)
        self._flat_loss = loss_fn in BUILTIN_LOSSES.values()  # row-wise: K points' outputs in one call
        self._forward_plain: Callable = self.model
        self._forward_many: Callable = torch.vmap(self._functional, in_dims=(0, None), randomness="error")
        if compile:
            self._forward_plain = _compiled(self._forward_plain, "the model")
            self._forward_many = _compiled(self._forward_many, "the vmapped model")
        self._plan: Plan | None = None

    def _probe(self, x: torch.Tensor, warn: bool) -> torch.Tensor:
        """The model's outputs on a few samples, in channels-last where that is on. Where the model fails
        in channels-last (``.view`` of an activation, say), it goes back to the contiguous format (with
        a warning, where channels-last was asked for) and the probe runs again."""
        if not self._channels_last:
            return self._profiled_forward(x)
        self.model.to(memory_format=torch.channels_last)
        try:
            return self._profiled_forward(x)
        except Exception as exc:  # noqa: BLE001 - whatever fails, the contiguous model is the judge
            self.model.to(memory_format=torch.contiguous_format)
            self._channels_last = False
            if warn:
                lines = str(exc).strip().splitlines()
                warnings.warn(f"distributed_surface: channels-last off: the model fails with it "
                              f"({type(exc).__name__}: {lines[0] if lines else ''})", RuntimeWarning, stacklevel=4)  # fmt: skip
            return self._profiled_forward(x)

    def _profiled_forward(self, x: torch.Tensor) -> torch.Tensor:
        """One forward pass: the outputs, and the model's profile for the plan (FLOPs, module calls,
        largest activation per sample), so that planning on a CPU needs no other forward pass."""
        with torch.no_grad():
            out, self._profile = _profiled(self.model, self._to_device(x))
        return out

    @property
    def num_samples(self) -> int:
        return len(self.inputs)

    @property
    def plan(self) -> Plan:
        """How this evaluator runs; decided (with ``vmap="tune"``: timed) at the first use."""
        if self._plan is None:
            self._plan = self._make_plan()
        return self._plan

    # -- evaluation -----------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, offsets: np.ndarray) -> dict[str, np.ndarray]:
        offsets = np.atleast_2d(np.asarray(offsets, dtype=np.float64))
        if offsets.shape[1] != self._ndirections:
            raise ValueError(f"expected offsets along {self._ndirections} directions, got {offsets.shape[1]}")
        plan = self.plan
        count = len(offsets)
        loss_sums = torch.zeros(count, dtype=torch.float64, device=self.device)
        hits = torch.zeros(count, dtype=torch.int64, device=self.device)
        try:
            with self._numerics():
                if plan.path == "vmap":
                    start = 0
                    while start < count:
                        stop = min(start + self.plan.points_per_pass, count)
                        try:
                            self._evaluate_many(offsets[start:stop], loss_sums[start:stop], hits[start:stop])
                        except torch.OutOfMemoryError:
                            if self.plan.points_per_pass == 1:
                                raise
                            loss_sums[start:stop], hits[start:stop] = 0, 0
                            self.plan.points_per_pass //= 2
                            self.plan.reason += "; K halved after running out of device memory"
                            torch.cuda.empty_cache()
                            continue
                        start = stop
                elif plan.resident:
                    for k, offset in enumerate(offsets):
                        self._move_to(offset)
                        for x, y in self._batches(plan.batch_size):
                            self._accumulate(self._forward_plain(x), y, loss_sums[k], hits[k])
                else:
                    # Streamed data crosses to the device once per call, each batch serving every point.
                    for x, y in self._batches(plan.batch_size):
                        for k, offset in enumerate(offsets):
                            self._move_to(offset)
                            self._accumulate(self._forward_plain(x), y, loss_sums[k], hits[k])
        finally:
            self._restore()
        # One host synchronisation per call, not per batch or per point.
        n = self.num_samples
        results = {"loss": loss_sums.cpu().numpy() / n}
        if "acc" in self.outputs:
            results["acc"] = 100.0 * hits.cpu().numpy().astype(np.float64) / n
        return results

    def _evaluate_many(self, offsets: np.ndarray, loss_sums: torch.Tensor, hits: torch.Tensor) -> None:
        """K points in one pass over the data: every batch goes through the model once, with K stacked
        copies of the moving tensors."""
        stacked = self._stacked(offsets)
        for x, y in self._batches(self.plan.batch_size):
            out = self._forward_many(stacked, x)  # (K, B, ...)
            loss_sums += self._loss_sums(out, y)
            if "acc" in self.outputs:
                hits += (out.argmax(dim=-1) == y).sum(dim=1)

    def _functional(self, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings(), ExitStack() as stack:
            # vmap's note that an op runs through its slow fallback: the plan's timing already saw it
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            if self.precision == "bf16" and torch.is_autocast_enabled(self.device.type):
                # autocast does not reach convolutions with batched weights under vmap: cast them here
                stack.enter_context(_BFloat16Products())
            return torch.func.functional_call(self.model, tensors, (x,), strict=False)

    def _stacked(self, offsets: np.ndarray) -> dict[str, torch.Tensor]:
        """θ0 + a_k·d1 + b_k·d2 for each of the K offsets, stacked along a new first dimension: θ0 first,
        then each direction in turn, as the plain path sums them."""
        stacked, coefficients = {}, {}
        for index, (name, theta0) in enumerate(zip(self._names, self._theta0)):
            if theta0.dtype not in coefficients:
                coefficients[theta0.dtype] = torch.as_tensor(offsets, dtype=theta0.dtype).to(self.device, non_blocking=True)
            shape = (len(offsets),) + (1,) * theta0.dim()
            tensor = theta0.unsqueeze(0).expand(len(offsets), *theta0.shape).clone()
            for j, direction in enumerate(self._directions):
                tensor.addcmul_(coefficients[theta0.dtype][:, j].reshape(shape), direction[index])
            stacked[name] = tensor
        return stacked

    def _loss_sums(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-point loss sums (K,) in float64 of outputs (K, B, ...) against targets (B, ...)."""
        out = _at_least_fp32(out)
        k, b = out.shape[0], out.shape[1]
        if self._flat_loss:  # row-wise losses: all K points in one call
            flat_y = y.unsqueeze(0).expand(k, *y.shape).reshape(k * b, *y.shape[1:])
            return self.loss_fn(out.reshape(k * b, *out.shape[2:]), flat_y).reshape(k, b).sum(1, dtype=torch.float64)
        return torch.stack([batch_loss_sum(self.loss_fn, out[i], y) for i in range(k)])

    def _accumulate(self, out: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor, hits: torch.Tensor) -> None:
        out = _at_least_fp32(out)
        loss_sum += batch_loss_sum(self.loss_fn, out, y)
        if "acc" in self.outputs:
            hits += (out.argmax(dim=1) == y).sum()

    def _move_to(self, offset: np.ndarray) -> None:
        # Always start from θ0 rather than stepping from the last point, so no error accumulates.
        for index, (tensor, theta0) in enumerate(zip(self._live, self._theta0)):
            tensor.copy_(theta0)
            for coefficient, direction in zip(offset, self._directions):
                tensor.add_(direction[index], alpha=float(coefficient))

    def _restore(self) -> None:
        for tensor, theta0 in zip(self._live, self._theta0):
            tensor.copy_(theta0)

    # -- data -----------------------------------------------------------------------------------------

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self._channels_last else x

    def _batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The data in batches on the device: slices of the resident data, or copies streamed from host
        memory (on a GPU from pinned memory on a side stream, the next batch copied while this one is
        computed)."""
        n = self.num_samples if limit is None else min(limit, self.num_samples)
        starts = range(0, n, batch_size)
        if self.resident or self.device.type != "cuda":
            for start in starts:
                stop = min(start + batch_size, n)
                yield self._to_device(self.inputs[start:stop]), self.targets[start:stop].to(self.device)
            return
        copy_stream = torch.cuda.Stream(self.device)
        compute_stream = torch.cuda.current_stream(self.device)

        def fetch(start):
            stop = min(start + batch_size, n)
            with torch.cuda.stream(copy_stream):
                return self._to_device(self.inputs[start:stop]), self.targets[start:stop].to(self.device, non_blocking=True)

        upcoming = fetch(0)
        for start in starts:
            compute_stream.wait_stream(copy_stream)
            x, y = upcoming
            x.record_stream(compute_stream)
            y.record_stream(compute_stream)
            if start + batch_size < n:
                upcoming = fetch(start + batch_size)
            yield x, y

    def _fits_on_device(self, inputs: torch.Tensor, targets: torch.Tensor) -> bool:
        if self.device.type != "cuda":
            return True  # the data is in this memory already
        free, _ = torch.cuda.mem_get_info(self.device)
        return inputs.nbytes + targets.nbytes <= RESIDENT_FRACTION * free

    # -- numerics -------------------------------------------------------------------------------------

    @contextmanager
    def _numerics(self, precision: str | None = None):
        """fp32 with TF32 off (exact), TF32 on, or bfloat16 autocast, for the duration of a call."""
        precision = precision or self.precision
        with ExitStack() as stack:
            if self.device.type == "cuda":
                stack.enter_context(_tf32(precision == "tf32"))
            if precision == "bf16":
                # No cast cache: it would keep the bfloat16 copy of the weights of the first point.
                stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False))
            yield

    # -- plan -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _make_plan(self) -> Plan:
        n = self.num_samples
        fixed = self._batch_size is not None and (self.vmap_mode == "off" or not self._live)
        pairs = n if fixed else self._pairs_per_pass()  # samples × points that one pass may hold
        cap = CPU_MAX_BATCH if self.device.type == "cpu" else MAX_BATCH
        plain_batch = self._batch_size or _even_batch(n, min(pairs, cap))
        plain = Plan("plain", 1, plain_batch, self.resident, "")
        if self.vmap_mode == "off":
            plain.reason = "one point per pass (vmap off)"
            return plain
        if not self._live:
            plain.reason = "one point per pass: no tensor moves"
            return plain
        max_k = self._points_per_pass or MAX_POINTS_PER_PASS
        if self._batch_size is None:
            max_k = max(1, min(max_k, pairs))
        if self._points_per_pass is None:  # K copies of the moving tensors must fit as well
            max_k = max(1, min(max_k, self._weight_copies_that_fit()))

        def vmap_plan(k: int) -> Plan:
            batch = self._batch_size or _even_batch(n, max(1, min(pairs // k, MAX_BATCH)))
            return Plan("vmap", k, batch, self.resident, "")

        if self.vmap_mode == "auto" and self._points_per_pass is None:
            pays, why = self._vmap_pays(plain.batch_size)
            if not pays:
                plain.reason = f"one point per pass: {why}"
                return plain
        problem = self._vmap_problem()
        if problem is not None:
            plain.reason = f"one point per pass: vmap cannot run this model ({problem})"
            warnings.warn(f"distributed_surface: {plain.reason}", RuntimeWarning, stacklevel=3)
            return plain
        if self.vmap_mode == "tune" and self._points_per_pass is None:
            return self._tuned(plain, vmap_plan, max_k)
        chosen = vmap_plan(max_k)
        if self._points_per_pass is not None:
            chosen.reason = f"{chosen.points_per_pass} points per pass (given)"
        elif self.vmap_mode == "on":
            chosen.reason = f"{chosen.points_per_pass} points per pass (vmap on)"
        else:
            chosen.reason = f"{chosen.points_per_pass} points per pass: {why}"
        return chosen

    def _vmap_pays(self, batch_size: int) -> tuple[bool, str]:
        """Whether one point's forward pass is overhead-bound (see VMAP_FLOPS_PER_MODULE), and why."""
        if self._profile is None:
            return False, "the model's FLOPs could not be counted"
        flops = self._profile["flops_per_sample"] * batch_size
        modules = max(1, self._profile["module_calls"])
        limit = VMAP_FLOPS_PER_MODULE.get(self.device.type, VMAP_FLOPS_PER_MODULE["cuda"]) * modules
        relation = "<" if flops < limit else ">="
        why = (f"a pass of {batch_size} samples is {flops:.3g} FLOPs over {modules} module calls "
               f"({relation} {limit:.3g}: {'overhead' if flops < limit else 'compute'}-bound)")
        return flops < limit, why

    def _tuned(self, plain: Plan, vmap_plan: Callable[[int], Plan], max_k: int) -> Plan:
        """Time one point per pass, the largest K that fits and a K between them on the first batch of
        the data; keep the fastest per point-sample. (vmap has a fixed cost per pass that only a large K
        repays, so K = 2 alone says little.)"""
        timings = []
        best, best_rate = plain, math.inf
        try:
            for k in dict.fromkeys([1, max_k, _power_of_two_between(2, max_k)]):
                if k > 1 and max_k < 2:
                    continue
                plan = plain if k == 1 else vmap_plan(k)
                rate = self._seconds_per_pair(plan)
                timings.append(f"{'plain' if k == 1 else f'K={k}'} {rate * 1e6:.3g} µs")
                # vmap must beat one point per pass by a margin (it is the less general path)
                if rate * (TUNE_MARGIN if best.path == "plain" else 1.0) < best_rate:
                    best, best_rate = plan, rate
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
        what = "one point per pass" if best.path == "plain" else f"{best.points_per_pass} points per pass"
        best.reason = f"{what}, timed fastest per point-sample ({', '.join(timings)})"
        return best

    def _seconds_per_pair(self, plan: Plan) -> float:
        """Seconds per point-sample of ``plan`` on the first batch of the data, at θ0: the fastest of at
        least 3 timed runs after a warm-up, more for short runs (up to 20, or 50 ms in all), so that a
        burst of other work on the machine does not decide the plan."""
        k, batch = plan.points_per_pass, plan.batch_size
        offsets = np.zeros((k, self._ndirections))
        loss, hits = torch.zeros(k, dtype=torch.float64, device=self.device), torch.zeros(k, dtype=torch.int64, device=self.device)
        x, y = next(self._batches(batch, limit=batch))

        def once():
            if plan.path == "vmap":
                out = self._forward_many(self._stacked(offsets), x)
                loss.add_(self._loss_sums(out, y))
            else:
                self._move_to(offsets[0])
                self._accumulate(self._forward_plain(x), y, loss[0], hits[0])
            _synchronize(self.device)

        best, spent, runs = math.inf, 0.0, 0
        try:
            with self._numerics():
                once()  # warm-up
                while runs < 3 or (spent < 0.05 and runs < 20):
                    start = time.perf_counter()
                    once()
                    elapsed = time.perf_counter() - start
                    best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
        finally:
            self._restore()
        return best / (k * len(x))

    def _vmap_problem(self) -> str | None:
        """None where vmap runs this model and gives the per-point outputs; else why not."""
        n = min(self.num_samples, 8)
        x = self._to_device(self.inputs[:n])
        offsets = np.zeros((2, self._ndirections))
        offsets[1] = 0.5
        try:
            with self._numerics("fp32"):
                many = self._forward_many(self._stacked(offsets), x)
                one = []
                for offset in offsets:
                    self._move_to(offset)
                    one.append(self._forward_plain(x))
        except Exception as exc:  # noqa: BLE001 - whatever vmap rejects, the plain path still works
            lines = str(exc).strip().splitlines()
            return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()
        finally:
            self._restore()
        if not isinstance(many, torch.Tensor) or many.shape != (2, *one[0].shape):
            return "vmap returned outputs of another shape"
        expected = torch.stack(one).to(torch.float64)
        error = (many.to(torch.float64) - expected).abs().max().item()
        scale = expected.abs().max().item()
        if not error <= 1e-4 * max(scale, 1e-6):  # also catches NaN
            return f"vmap gave other outputs than the per-point model (max difference {error:.3g})"
        if self.precision != "fp32":
            try:
                with self._numerics():
                    self._forward_many(self._stacked(offsets), x)
            except Exception as exc:  # noqa: BLE001
                lines = str(exc).strip().splitlines()
                return f"in {self.precision}: {type(exc).__name__}: {lines[0] if lines else ''}".strip()
        return None

    def _weight_copies_that_fit(self) -> int:
        """How many stacked copies of the moving tensors take at most a quarter of the free memory (on a
        CPU: a tenth of the free host memory)."""
        moving = max(1, sum(t.nbytes for t in self._theta0))
        if self.device.type == "cuda":
            free = 0.25 * torch.cuda.mem_get_info(self.device)[0]
        else:
            free = 0.1 * _host_memory_available()
        return int(free // moving)

    def _pairs_per_pass(self) -> int:
        """How many point-samples one pass may hold: on a GPU, what fills its share of the free memory
        (activations measured on a probe batch); on a CPU, what keeps the largest activation within a
        cache-sized working set (and the whole pass within a share of the free host memory)."""
        if self.device.type == "cuda":  # the allocator knows best: measure a probe batch
            probe = self._to_device(self.inputs[: min(self.num_samples, 16)])
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            with self._numerics():
                self._forward_plain(probe)
            torch.cuda.synchronize(self.device)
            per_sample = max(1, (torch.cuda.max_memory_allocated(self.device) - before) // len(probe))
            free, _ = torch.cuda.mem_get_info(self.device)
            return max(1, int(GPU_MEMORY_FRACTION * free) // per_sample)
        if self._profile is None:  # no hooks (TorchScript): the batch measured best on CPUs
            return CPU_MAX_BATCH
        per_sample_largest = max(1, self._profile["largest_bytes"])
        per_sample_total = max(1, self._profile["total_bytes"])
        cache_bound = CPU_WORKING_SET_BYTES // per_sample_largest
        memory_bound = int(GPU_MEMORY_FRACTION * _host_memory_available()) // per_sample_total
        return max(1, min(cache_bound, memory_bound))


def _power_of_two_between(low: int, high: int) -> int:
    """A power of two near the geometric mean of ``low`` and ``high``."""
    return 2 ** round(math.log2(math.sqrt(low * high))) if high > low else low


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Losses and argmax are taken in fp32 at least: bf16 outputs are widened first."""
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


class _BFloat16Products(TorchFunctionMode):
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
            args, kwargs = _cast_floats((args, kwargs), torch.bfloat16)
        elif func in self.NORMS:
            args, kwargs = _cast_floats((args, kwargs), torch.float32)
        return func(*args, **kwargs)


def _cast_floats(tree, dtype: torch.dtype):
    def cast(value):
        return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    return tree_map(cast, tree)


def _even_batch(n: int, cap: int) -> int:
    """The batch size that splits ``n`` samples into the fewest batches of at most ``cap``, all of about
    the same size."""
    cap = max(1, min(cap, n))
    return -(-n // -(-n // cap))


def _profiled(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float] | None]:
    """The model's output on ``x`` and its profile per sample: FLOPs of its convolution and linear
    layers (2 per multiply-add; other modules and functional matmuls are not counted), leaf-module
    calls, and the largest and total bytes its modules output. Counted with forward hooks: torch's
    ``FlopCounterMode`` would cost every rank ~1 s and ~80 MiB the first time it runs."""
    sizes, calls, flops = [], [0], [0.0]

    def hook(module, args, output):
        if not any(True for _ in module.children()):
            calls[0] += 1
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        for t in outputs:
            if isinstance(t, torch.Tensor):
                sizes.append(t.nbytes)
        if isinstance(output, torch.Tensor):
            flops[0] += _module_flops(module, output)

    handles = []
    try:
        try:
            handles = [m.register_forward_hook(hook) for m in model.modules()]
        except RuntimeError:  # a TorchScript module takes no hooks: no profile
            return model(x), None
        out = model(x)
    finally:
        for handle in handles:
            handle.remove()
    n = max(1, len(x))
    profile = {
        "flops_per_sample": flops[0] / n,
        "module_calls": calls[0],
        "largest_bytes": (max(sizes) if sizes else x.nbytes) // n,
        "total_bytes": (sum(sizes) if sizes else x.nbytes) // n,
    }
    return out, profile


def _module_flops(module: nn.Module, output: torch.Tensor) -> float:
    """2 × the multiply-adds of a convolution or linear layer that produced ``output``; 0 for others."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return 2.0 * output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return 2.0 * output.numel() * module.in_features
    return 0.0


# glibc's malloc serves blocks above its mmap threshold (128 KiB at first, raised only as such blocks are
# freed) with fresh mmap()s, and trims freed heap memory at 128 KiB. A CPU forward pass allocates and
# frees activations of 0.1-10 MiB per layer, so every batch paid page faults and zeroing for them: the
# built-in example ran 2.5-3× slower (40 against 120 points/s on 2 cores, benchmarks/README.md).
MALLOC_MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest allowed value on 64-bit
MALLOC_TRIM_THRESHOLD_BYTES = 64 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt() parameters, from glibc's malloc.h


def _keep_freed_host_memory() -> None:
    """Keep freed activation memory in the process for the next batch (glibc only; elsewhere nothing).
    Process-wide, like the MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ environment variables,
    which take precedence where set."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc: its allocator is its own
        pass


def _host_memory_available() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def _pinned(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host data to stream to a GPU: in pinned memory where that can be had, so copies run
    asynchronously."""
    if device.type != "cuda":
        return t
    try:
        return t.pin_memory()
    except RuntimeError:
        return t


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _tf32(enabled: bool):
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _compiled(function: Callable, what: str) -> Callable:
    """``torch.compile(function)``; where compiling fails, the function as it is, with a warning.
    Running out of memory is not a compile failure: it goes to the caller (evaluate() halves K)."""
    # Static shapes: a few distinct batch shapes occur (a probe, the batch, a shorter last batch), and
    # kernels specialised to each are faster than one dynamic-shape kernel.
    compiled = torch.compile(function, dynamic=False)
    state = {"call": compiled}

    def call(*args):
        try:
            return state["call"](*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001
            if state["call"] is function:
                raise
            message = str(exc).strip()
            warnings.warn(f"distributed_surface: torch.compile failed on {what}, running it eagerly: "
                          f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}",
                          RuntimeWarning, stacklevel=2)  # fmt: skip
            state["call"] = function
            return function(*args)

    return call
