"""The evaluator: the measurements of every split at grid points θ0 + a·d1 (+ b·d2), a chunk at a time.

It keeps the model, θ0 and the directions on its device, and the data too where it fits (else it
streams the data from host memory; :mod:`.samples`). At every point each split (train, and test where
given) is evaluated on the same perturbed weights. A chunk of points runs in one of two ways
(:mod:`.plan` chooses):

- ``vmap``: K points in one pass over the data. ``torch.func.functional_call`` under ``torch.vmap``
  runs the model once per batch with K stacked copies of the moving tensors (:mod:`.weights`), so each
  batch is read once for K points and every kernel does K points' work.
- ``plain``: one point at a time: the model's own tensors are set to the point (always from θ0), the
  data passes through, and θ0 is restored bit for bit at the end.

Both agree to about 1e-7 relative in fp32 (the same arithmetic, summed in another order). Losses are
reduced to sums and counts (:mod:`.losses`); sums stay on the device until the end of a call: there
is no host synchronisation per batch or per point. A model vmap cannot run (data-dependent control
flow, ``.item()``, random ops in eval mode) falls back to ``plain`` with a warning that says why.

It returns plain numpy arrays named by measurement; it knows nothing of grids, files or processes.
torch and numpy only.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, contextmanager

import numpy as np
import torch
from torch import nn

from .directions import Direction
from .errors import first_line
from .losses import Loss, LossFunction, as_loss, cross_entropy, logits_of
from .measurements import SPLITS, Measurement, measurement_name
from .plan import (
    VMAP_MODES,
    Plan,
    PlanRequest,
    choose_plan,
    cpu_pairs_per_pass,
    even_batch,
    fits_on_device,
    gpu_pairs_per_pass,
    profiled_forward,
)
from .directions import base_tensors
from .precision import DTYPES, PRECISIONS, TORCH_DTYPES, BFloat16Products, at_least_fp32, cast_floats, numerics
from .samples import Batches, Inputs, Samples, batch_length, call_model, to_device
from .stream import StreamedBatches, StreamedSamples
from .weights import MovingWeights

# Data given as one split is the first split's (train).
Data = Samples | StreamedSamples | tuple | Mapping[str, Samples | StreamedSamples | tuple]


class BatchError(ValueError):
    """The model or the loss failed on one batch; the message names the split and its samples."""


class SurfaceEvaluator:
    """The loss of every split, and its accuracy where its targets are class labels, at offsets along
    one or two directions.

    ``data``: one split's ``Samples`` or ``(inputs, targets)`` pair (the train split), or a mapping
    from split names (:data:`~.measurements.SPLITS`) to them. ``loss``: a :class:`~.losses.Loss` or a
    function ``loss(outputs, targets)`` of one value per sample or the batch mean.
    ``evaluate(offsets)`` takes an array of shape (K, ndirections) and returns a dict of (K,) float64
    arrays named as :attr:`measurements` (``train_loss``, ``train_acc``, ``test_loss``, ...): loss averaged
    over every counted target, accuracy in percent. The model is in eval mode; its tensors hold θ0, bit
    for bit, after every call.

    Speed settings (none changes the values beyond float rounding, except ``precision`` and ``dtype``):
    ``batch_size`` samples per forward pass (None: from the free memory); ``points_per_pass`` K, points
    per pass over the data under vmap (None: as many as fit, at most 64); ``vmap`` "auto" (vmap where
    one point's pass is overhead-bound), "tune" (time both ways, keep the faster), "on" (vmap wherever
    the model allows) or "off" (one point at a time); ``precision`` "fp32" (exact: TF32 is switched off
    on the GPU), "tf32" (TF32 matmuls and convolutions on GPUs that have them; fp32 on a CPU) or
    "bf16" (autocast to bfloat16); ``dtype`` "fp32" (the model as it is), "bf16" or "fp16": the dtype of
    the model's tensors and floating inputs in the forward pass, with θ0 and the directions kept as the
    model holds them (fp32) and each point cast once (per point, or per pass of K points under vmap),
    never per batch (:class:`~.weights.MovingWeights`); the model itself is cast in place, and after a
    call holds θ0 cast to that dtype; ``compile`` (``torch.compile`` the forward pass);
    ``channels_last`` (for 4-D inputs; None: on a CPU only); ``resident`` (None: keep the data on the
    device where it fits, else copy each batch to it from host memory; True/False to force). Data
    given as :class:`~.stream.StreamedSamples` is read from its Dataset on every pass
    (:attr:`placement`).
    """

    def __init__(
        self,
        model: nn.Module,
        directions: Sequence[Direction],
        data: Data,
        loss: Loss | LossFunction = cross_entropy,
        batch_size: int | None = None,
        device: torch.device | str = "cpu",
        dir_type: str = "weights",
        *,
        points_per_pass: int | None = None,
        vmap: str = "auto",
        precision: str = "fp32",
        dtype: str = "fp32",
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
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        splits = _splits(data)
        self.loss = as_loss(loss)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.precision = precision
        self.dtype = TORCH_DTYPES[dtype] if dtype != "fp32" else None  # None: the model's own (fp32)
        theta0 = None
        if self.dtype is not None:  # θ0 as given (fp32), before the model is cast for the forward pass
            theta0 = {name: t.clone() for name, t in base_tensors(self.model, dir_type).items()}
            self.model.to(self.dtype)
        self.vmap_mode = vmap
        self._batch_size = batch_size
        self._points_per_pass = points_per_pass
        first = next(iter(splits.values()))
        # None: channels-last on a CPU, where it measured faster (benchmarks/), and only where the model
        # accepts it; not on a GPU, where it is not measured yet.
        asked = self.device.type == "cpu" if channels_last is None else bool(channels_last)
        self._channels_last = asked and _has_image_input(first.inputs)
        # Before the tensors are taken: converting the model's memory format replaces their storage.
        first_out = self._probe(first, warn=channels_last is not None)

        self._counts, self.measurements, self._accuracy = {}, [], {}
        for split, samples in splits.items():
            out = first_out if samples is first else self._forward_head(samples)
            self._accuracy[split] = self.loss.has_accuracy(out, samples.targets[: len(out)].to(self.device))
            counts = (self.loss.loss_count(samples.targets), self.loss.label_count(samples.targets))
            if counts[0] < 1 or (self._accuracy[split] and counts[1] < 1):
                raise ValueError(f"the {split} data has no target to average over: every one is ignored (-100)")
            self._counts[split] = counts
            self.measurements.append(Measurement(measurement_name(split, "loss")))
            if self._accuracy[split]:
                self.measurements.append(Measurement(measurement_name(split, "acc")))

        self._weights = MovingWeights(self.model, directions, dir_type, self.device, theta0)
        self.streamed = any(isinstance(samples, StreamedSamples) for samples in splits.values())
        if self.streamed:
            self.resident = False
        else:
            total_bytes = sum(s.nbytes for s in splits.values())
            self.resident = fits_on_device(self.device, total_bytes) if resident is None else bool(resident)
        self._data = {
            split: StreamedBatches(samples, self.device, channels_last=self._channels_last)
            if isinstance(samples, StreamedSamples)
            else Batches(samples, self.device, resident=self.resident, channels_last=self._channels_last)
            for split, samples in splits.items()
        }
        self._forward_plain: Callable = self._plain_call
        self._forward_many: Callable = torch.vmap(self._functional, in_dims=(0, None), randomness="error")
        if compile:
            self._forward_plain = _compiled(self._forward_plain, "the model")
            self._forward_many = _compiled(self._forward_many, "the vmapped model")
        self._plan: Plan | None = None

    # -- what it measures -----------------------------------------------------------------------------

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self._data)

    @property
    def placement(self) -> str:
        """Where the data is kept: ``device`` (moved there once), ``host`` (each batch copied to the
        device when it is needed) or ``stream`` (read from its Dataset on every pass)."""
        return "stream" if self.streamed else "device" if self.resident else "host"

    @property
    def num_samples(self) -> int:
        """Samples of the first split (train)."""
        return len(next(iter(self._data.values())))

    def split_sizes(self) -> dict[str, int]:
        return {split: len(batches) for split, batches in self._data.items()}

    def point(self, offset: np.ndarray) -> dict[str, torch.Tensor]:
        """The moving tensors' values at ``offset`` (θ0 + Σ offset_j·d_j), as new tensors."""
        stacked = self._weights.stacked(np.asarray(offset, dtype=np.float64)[None])
        return {name: tensor[0] for name, tensor in stacked.items()}

    def train_batches(self, samples: int | None = None) -> list[tuple[Inputs, torch.Tensor]]:
        """The first split's first ``samples`` samples (None: all), in batches of the plan's size, on the
        device."""
        batches = self._data[self.splits[0]]
        limit = len(batches) if samples is None else min(samples, len(batches))
        size = self.plan.batch_size if self._batch_size else even_batch(limit, self.plan.batch_size)
        return [(x, y) for _, x, y in batches(size, limit=limit)]

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
        if offsets.shape[1] != self._weights.ndirections:
            raise ValueError(f"expected offsets along {self._weights.ndirections} directions, got {offsets.shape[1]}")
        plan = self.plan
        sums = _Totals()
        try:
            with numerics(self.device, self.precision):
                if plan.path == "vmap":
                    self._evaluate_vmap(offsets, sums)
                elif plan.resident:
                    for k, offset in enumerate(offsets):
                        self._weights.move_to(offset)
                        for split in self._data:
                            for start, x, y in self._batches(split):
                                with self._naming(split, start, x):
                                    self._add(split, sums, k, k + 1, self._forward_plain(x).unsqueeze(0), y)
                else:
                    # Streamed data crosses to the device once per call, each batch serving every point.
                    for split in self._data:
                        for start, x, y in self._batches(split):
                            for k, offset in enumerate(offsets):
                                self._weights.move_to(offset)
                                with self._naming(split, start, x):
                                    self._add(split, sums, k, k + 1, self._forward_plain(x).unsqueeze(0), y)
        finally:
            self._weights.restore()
        results = {}
        for split in self._data:
            # One host synchronisation per split and call, not per batch or per point.
            loss_sums, hits = sums.totals(split, len(offsets), self.device)
            loss_count, label_count = self._counts[split]
            loss = loss_sums / loss_count
            results[measurement_name(split, "loss")] = loss
            if self._accuracy[split]:
                # where the loss is not finite the outputs are not numbers either: their argmax means nothing
                acc = 100.0 * hits.astype(np.float64) / label_count
                results[measurement_name(split, "acc")] = np.where(np.isfinite(loss), acc, np.nan)
        return results

    def _evaluate_vmap(self, offsets: np.ndarray, sums) -> None:
        """K points per pass, K halved where the device runs out of memory."""
        start, count = 0, len(offsets)
        while start < count:
            stop = min(start + self.plan.points_per_pass, count)
            try:
                stacked = self._weights.stacked(offsets[start:stop])
                for split in self._data:
                    for first, x, y in self._batches(split):
                        with self._naming(split, first, x):
                            self._add(split, sums, start, stop, self._forward_many(stacked, x), y)
            except torch.OutOfMemoryError:
                if self.plan.points_per_pass == 1:
                    raise
                sums.forget(start, stop)
                self.plan.points_per_pass //= 2
                self.plan.reason += "; K halved after running out of device memory"
                torch.cuda.empty_cache()
                continue
            start = stop

    def _add(self, split: str, sums, start: int, stop: int, out: torch.Tensor, y: torch.Tensor) -> None:
        """Add the sums of outputs ``(K, B, ...)`` of points ``start .. stop-1`` to the split's."""
        loss_sum, hits = self.loss.sums(at_least_fp32(out), y, self._accuracy[split])
        sums.add(split, start, stop, loss_sum, hits)

    def _batches(self, split: str):
        """The split's batches: of the given batch size, or of the plan's evened out over the split."""
        batches = self._data[split]
        size = self.plan.batch_size if self._batch_size else even_batch(len(batches), self.plan.batch_size)
        return batches(size)

    @contextmanager
    def _naming(self, split: str, start: int, x: Inputs):
        """Any failure of the model or the loss on a batch becomes a :class:`BatchError` that names the
        batch's samples; running out of memory and interruptions pass through."""
        try:
            yield
        except (torch.OutOfMemoryError, BatchError):
            raise
        except Exception as exc:
            stop = start + batch_length(x) - 1
            raise BatchError(f"the model or the loss failed on {split} samples {start}..{stop}: {first_line(exc)}") from exc

    def _inputs(self, x: Inputs) -> Inputs:
        """Floating inputs in the model's dtype (``dtype``); token ids and masks as they are."""
        return x if self.dtype is None else cast_floats(x, self.dtype)

    def _plain_call(self, x: Inputs) -> torch.Tensor:
        return logits_of(call_model(self.model, self._inputs(x)))

    def _functional(self, tensors: dict[str, torch.Tensor], x: Inputs) -> torch.Tensor:
        with warnings.catch_warnings(), ExitStack() as stack:
            # vmap's note that an op runs through its slow fallback: the plan's timing already saw it
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            if self.precision == "bf16" and torch.is_autocast_enabled(self.device.type):
                # autocast does not reach convolutions with batched weights under vmap: cast them here
                stack.enter_context(BFloat16Products())
            x = self._inputs(x)
            if isinstance(x, dict):
                out = torch.func.functional_call(self.model, tensors, (), x, strict=False)
            else:
                out = torch.func.functional_call(self.model, tensors, (x,), strict=False)
            return logits_of(out)

    # -- probing --------------------------------------------------------------------------------------

    def _forward_head(self, samples: Samples, count: int = 2) -> torch.Tensor:
        part = samples.slice(0, min(count, len(samples)))
        with torch.no_grad():
            return self._plain_call(to_device(part.inputs, self.device, self._channels_last))

    def _probe(self, samples: Samples, warn: bool) -> torch.Tensor:
        """The model's outputs on a few samples, and its profile for the plan, in channels-last where that
        is on. Where the model fails in channels-last (``.view`` of an activation, say), it goes back to
        the contiguous format (with a warning, where channels-last was asked for) and the probe runs
        again."""
        if self._channels_last:
            self.model.to(memory_format=torch.channels_last)
            try:
                return self._profiled_head(samples)
            except Exception as exc:  # noqa: BLE001 - whatever fails, the contiguous model is the judge
                self.model.to(memory_format=torch.contiguous_format)
                self._channels_last = False
                if warn:
                    warnings.warn(f"distributed_surface: channels-last off: the model fails with it ({first_line(exc)})",
                                  RuntimeWarning, stacklevel=4)  # fmt: skip
        return self._profiled_head(samples)

    def _profiled_head(self, samples: Samples) -> torch.Tensor:
        part = samples.slice(0, min(2, len(samples)))
        x = to_device(part.inputs, self.device, self._channels_last)
        # Only vmap="auto" without a given K decides from the FLOPs (counting them costs ~1 s the first time).
        count = self.vmap_mode == "auto" and self._points_per_pass is None
        with torch.no_grad():
            out, self._profile = profiled_forward(self.model, lambda: self._plain_call(x), len(part), count_flops=count)
        return out

    # -- plan -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _make_plan(self) -> Plan:
        request = PlanRequest(
            samples=max(self.split_sizes().values()),
            device=self.device,
            batch_size=self._batch_size,
            points_per_pass=self._points_per_pass,
            vmap=self.vmap_mode,
            resident=self.resident,
            profile=self._profile,
            moving_bytes=self._weights.nbytes if self._weights else 0,
        )
        plan, warning = choose_plan(
            request,
            pairs_per_pass=self._pairs_per_pass,
            vmap_problem=self._vmap_problem,
            seconds_per_pair=self._seconds_per_pair,
        )
        if warning:
            warnings.warn(f"distributed_surface: {warning}", RuntimeWarning, stacklevel=4)
        return plan

    def _first_batch(self, count: int) -> tuple[Inputs, torch.Tensor]:
        return next(iter(self._data.values())).head(count)

    def _pairs_per_pass(self) -> int:
        """How many point-samples one pass may hold (on a GPU: activations measured on a probe batch)."""
        if self.device.type != "cuda":
            return cpu_pairs_per_pass(self._profile)
        x, _ = self._first_batch(16)  # the allocator knows best: measure a probe batch
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        with numerics(self.device, self.precision):
            self._forward_plain(x)
        torch.cuda.synchronize(self.device)
        per_sample = (torch.cuda.max_memory_allocated(self.device) - before) // max(1, batch_length(x))
        return gpu_pairs_per_pass(self.device, per_sample)

    def _seconds_per_pair(self, plan: Plan) -> float:
        """Seconds per point-sample of ``plan`` on the first batch of the data, at θ0: the fastest of at
        least 3 timed runs after a warm-up, more for short runs (up to 20, or 50 ms in all), so that a
        burst of other work on the machine does not decide the plan."""
        k = plan.points_per_pass
        offsets = np.zeros((k, self._weights.ndirections))
        x, y = self._first_batch(plan.batch_size)
        split = self.splits[0]
        sums = _Totals()

        def once():
            if plan.path == "vmap":
                self._add(split, sums, 0, k, self._forward_many(self._weights.stacked(offsets), x), y)
            else:
                self._weights.move_to(offsets[0])
                self._add(split, sums, 0, 1, self._forward_plain(x).unsqueeze(0), y)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

        best, spent, runs = float("inf"), 0.0, 0
        try:
            with numerics(self.device, self.precision):
                once()  # warm-up
                while runs < 3 or (spent < 0.05 and runs < 20):
                    began = time.perf_counter()
                    once()
                    elapsed = time.perf_counter() - began
                    best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
        finally:
            self._weights.restore()
        return best / (k * batch_length(x))

    def _vmap_problem(self) -> str | None:
        """None where vmap runs this model and gives the per-point outputs; else why not."""
        x, _ = self._first_batch(8)
        offsets = np.zeros((2, self._weights.ndirections))
        offsets[1] = 0.5
        try:
            with numerics(self.device, "fp32"):
                many = self._forward_many(self._weights.stacked(offsets), x)
                one = []
                for offset in offsets:
                    self._weights.move_to(offset)
                    one.append(self._forward_plain(x))
        except Exception as exc:  # noqa: BLE001 - whatever vmap rejects, the plain path still works
            return first_line(exc)
        finally:
            self._weights.restore()
        if not isinstance(many, torch.Tensor) or many.shape != (2, *one[0].shape):
            return "vmap returned outputs of another shape"
        expected = torch.stack(one).to(torch.float64)
        error = (many.to(torch.float64) - expected).abs().max().item()
        scale = expected.abs().max().item()
        # (in a narrower dtype the two paths may round a product differently: a few of its steps)
        tolerance = 1e-4 if self.dtype is None else 8 * torch.finfo(self.dtype).eps
        if not error <= tolerance * max(scale, 1e-6):  # also catches NaN
            return f"vmap gave other outputs than the per-point model (max difference {error:.3g})"
        if self.precision != "fp32":
            try:
                with numerics(self.device, self.precision):
                    self._forward_many(self._weights.stacked(offsets), x)
            except Exception as exc:  # noqa: BLE001
                return f"in {self.precision}: {first_line(exc)}"
        return None


class _Totals:
    """The per-point loss sums and hits of one call, split by split. Each batch's sums are kept as they
    come and added up once per range of points at the end: a few device operations per point rather
    than per batch, which on a CPU is a tenth of a small model's time."""

    def __init__(self):
        self._parts: dict[tuple[str, int, int], list] = defaultdict(list)

    def add(self, split: str, start: int, stop: int, loss: torch.Tensor, hits: torch.Tensor | None) -> None:
        self._parts[split, start, stop].append((loss, hits))

    def forget(self, start: int, stop: int) -> None:
        """Drop what points ``start .. stop-1`` have gathered (they are computed again)."""
        for key in [key for key in self._parts if key[1:] == (start, stop)]:
            del self._parts[key]

    def totals(self, split: str, count: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
        """The split's loss sums (count,) float64 and hits (count,) int64, on the host."""
        loss = torch.zeros(count, dtype=torch.float64, device=device)
        hits = torch.zeros(count, dtype=torch.int64, device=device)
        for (name, start, stop), parts in self._parts.items():
            if name != split:
                continue
            loss[start:stop] = torch.stack([part[0] for part in parts]).sum(dim=0)
            if parts[0][1] is not None:
                hits[start:stop] = torch.stack([part[1] for part in parts]).sum(dim=0)
        return loss.cpu().numpy(), hits.cpu().numpy()


def _splits(data: Data) -> dict[str, Samples | StreamedSamples]:
    """The splits of ``data`` in :data:`SPLITS` order; one split given alone is the first."""
    if isinstance(data, Mapping) and not isinstance(data, Samples):
        unknown = [name for name in data if name not in SPLITS]
        if unknown:
            raise ValueError(f"unknown split {unknown[0]!r}; expected {', '.join(SPLITS)}")
        if not data:
            raise ValueError("no data to evaluate")
        splits = {name: _samples(data[name]) for name in SPLITS if name in data}
    else:
        splits = {SPLITS[0]: _samples(data)}
    empty = [name for name, samples in splits.items() if len(samples) == 0]
    if empty:
        raise ValueError(f"the {empty[0]} data holds no samples")
    return splits


def _samples(data) -> Samples | StreamedSamples:
    return data if isinstance(data, StreamedSamples) else Samples.of(data)


def _has_image_input(inputs: Inputs) -> bool:
    values = inputs.values() if isinstance(inputs, dict) else (inputs,)
    return any(t.dim() == 4 for t in values)


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
            warnings.warn(f"distributed_surface: torch.compile failed on {what}, running it eagerly: {first_line(exc)}",
                          RuntimeWarning, stacklevel=2)  # fmt: skip
            state["call"] = function
            return function(*args)

    return call
