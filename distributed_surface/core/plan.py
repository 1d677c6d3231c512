"""How an evaluator runs: one point per pass or K points per pass under vmap, the batch size, and why.

The choice is made once, without timing by default, so that ranks on like devices compute a point the
same way: vmap where one point's forward pass is dominated by per-operation overhead rather than by
arithmetic (its FLOPs, counted by torch's ``FlopCounterMode`` on a probe batch, below
``VMAP_FLOPS_PER_MODULE`` per module call for the device), after checking on a few samples that vmap
gives the model's own outputs. ``vmap="tune"`` times one point per pass against K per pass instead
and keeps the faster. The batch size and K follow the free memory (on a CPU: a cache-sized working
set) unless given. The numbers behind the constants are in docs/benchmarks.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .host import host_memory_available
from .options import VMAP_MODES  # noqa: F401 - the modes this module implements

# vmap pays where one point's forward pass has fewer FLOPs than this per module call: the work one
# call's fixed cost (~10 µs of dispatch, and of kernel launch on a GPU) would do at the device's rate
# (CPU: ~200 GFLOP/s on 2 cores, measured; GPU: ~20 TFLOP/s, an estimate: not measured yet).
VMAP_FLOPS_PER_MODULE = {"cpu": 2e6, "cuda": 2e8}
MAX_POINTS_PER_PASS = 64
# On a CPU the fastest batch keeps the largest activation inside the model about cache-sized (its
# output, which goes to the loss once, left out: a language model's logits); one point per pass takes at
# most CPU_MAX_BATCH samples (measured fastest for ResNet-20 and the built-in example).
CPU_WORKING_SET_BYTES = 8 * 2**20
CPU_MAX_BATCH = 128
# On a GPU the batch and K fill this share of the free memory.
GPU_MEMORY_FRACTION = 0.6
# Data stays on the GPU when it takes at most this share of the free memory (the rest is for activations).
RESIDENT_FRACTION = 0.5
MAX_BATCH = 8192
# vmap must be this much faster per point-sample than one point per pass to be chosen under "tune":
# timings of one batch are noisy, and a small gain on one batch often vanishes over the whole data.
TUNE_MARGIN = 1.25


@dataclass
class Plan:
    """``path`` "vmap" (``points_per_pass`` points per pass over the data) or "plain" (one point at a
    time), ``batch_size`` samples per forward pass, data ``resident`` on the device or streamed, and why."""

    path: str
    points_per_pass: int
    batch_size: int
    resident: bool
    reason: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class PlanRequest:
    """What the plan is chosen from: the evaluator's settings and what it measured of the model."""

    samples: int  # samples of the largest split
    device: torch.device
    batch_size: int | None
    points_per_pass: int | None
    vmap: str
    resident: bool
    profile: dict[str, float] | None  # see profiled_forward
    moving_bytes: int  # one copy of the moving tensors; 0 where nothing moves


def choose_plan(
    request: PlanRequest,
    *,
    pairs_per_pass: Callable[[], int],
    vmap_problem: Callable[[], str | None],
    seconds_per_pair: Callable[[Plan], float],
) -> tuple[Plan, str | None]:
    """The plan, and a warning where vmap was wanted but cannot run the model. ``pairs_per_pass()``:
    how many point-samples one pass may hold; ``vmap_problem()``: None where vmap runs the model and
    gives its outputs, else why not; ``seconds_per_pair(plan)``: a timing, for ``vmap="tune"`` only."""
    r = request
    n = r.samples
    fixed = r.batch_size is not None and (r.vmap == "off" or not r.moving_bytes)
    pairs = n if fixed else pairs_per_pass()
    cap = CPU_MAX_BATCH if r.device.type == "cpu" else MAX_BATCH
    plain = Plan("plain", 1, r.batch_size or even_batch(n, min(pairs, cap)), r.resident, "")
    if r.vmap == "off":
        plain.reason = "one point per pass (vmap off)"
        return plain, None
    if not r.moving_bytes:
        plain.reason = "one point per pass: no tensor moves"
        return plain, None
    max_k = r.points_per_pass or MAX_POINTS_PER_PASS
    if r.batch_size is None:
        max_k = max(1, min(max_k, pairs))
    if r.points_per_pass is None:  # K copies of the moving tensors must fit as well
        max_k = max(1, min(max_k, weight_copies_that_fit(r.device, r.moving_bytes)))

    def vmap_plan(k: int) -> Plan:
        return Plan("vmap", k, r.batch_size or even_batch(n, max(1, min(pairs // k, MAX_BATCH))), r.resident, "")

    why = ""
    if r.vmap == "auto" and r.points_per_pass is None:
        pays, why = vmap_pays(r.profile, plain.batch_size, r.device)
        if not pays:
            plain.reason = f"one point per pass: {why}"
            return plain, None
    problem = vmap_problem()
    if problem is not None:
        plain.reason = f"one point per pass: vmap cannot run this model ({problem})"
        return plain, plain.reason
    if r.vmap == "tune" and r.points_per_pass is None:
        return tuned(plain, vmap_plan, max_k, seconds_per_pair), None
    chosen = vmap_plan(max_k)
    if r.points_per_pass is not None:
        chosen.reason = f"{chosen.points_per_pass} points per pass (given)"
    elif r.vmap == "on":
        chosen.reason = f"{chosen.points_per_pass} points per pass (vmap on)"
    else:
        chosen.reason = f"{chosen.points_per_pass} points per pass: {why}"
    return chosen, None


def vmap_pays(profile: dict[str, float] | None, batch_size: int, device: torch.device) -> tuple[bool, str]:
    """Whether one point's forward pass is overhead-bound (see VMAP_FLOPS_PER_MODULE), and why."""
    if profile is None or profile["flops_per_sample"] is None:
        return False, "the model's FLOPs could not be counted"
    flops = profile["flops_per_sample"] * batch_size
    modules = max(1, profile["module_calls"])
    limit = VMAP_FLOPS_PER_MODULE.get(device.type, VMAP_FLOPS_PER_MODULE["cuda"]) * modules
    bound = "overhead" if flops < limit else "compute"
    why = (f"a pass of {batch_size} samples is {flops:.3g} FLOPs over {modules} module calls "
           f"({'<' if flops < limit else '>='} {limit:.3g}: {bound}-bound)")  # fmt: skip
    return flops < limit, why


def tuned(plain: Plan, vmap_plan: Callable[[int], Plan], max_k: int, seconds_per_pair: Callable[[Plan], float]) -> Plan:
    """Time one point per pass, the largest K that fits and a K between them; keep the fastest per
    point-sample. (vmap has a fixed cost per pass that only a large K repays, so K = 2 alone says little.)"""
    timings = []
    best, best_rate = plain, math.inf
    try:
        for k in dict.fromkeys([1, max_k, power_of_two_between(2, max_k)]):
            if k > 1 and max_k < 2:
                continue
            plan = plain if k == 1 else vmap_plan(k)
            rate = seconds_per_pair(plan)
            timings.append(f"{'plain' if k == 1 else f'K={k}'} {rate * 1e6:.3g} µs")
            # vmap must beat one point per pass by a margin (it is the less general path)
            if rate * (TUNE_MARGIN if best.path == "plain" else 1.0) < best_rate:
                best, best_rate = plan, rate
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
    what = "one point per pass" if best.path == "plain" else f"{best.points_per_pass} points per pass"
    best.reason = f"{what}, timed fastest per point-sample ({', '.join(timings)})"
    return best


def weight_copies_that_fit(device: torch.device, moving_bytes: int) -> int:
    """How many stacked copies of the moving tensors take at most a quarter of the free memory (on a
    CPU: a tenth of the free host memory)."""
    if device.type == "cuda":
        free = 0.25 * torch.cuda.mem_get_info(device)[0]
    else:
        free = 0.1 * host_memory_available()
    return int(free // max(1, moving_bytes))


def cpu_pairs_per_pass(profile: dict[str, float] | None) -> int:
    """Point-samples one pass may hold on a CPU: what keeps the largest activation inside the model
    within a cache-sized working set (and the whole pass within a share of the free host memory)."""
    if profile is None:  # no hooks (TorchScript): the batch measured best on CPUs
        return CPU_MAX_BATCH
    cache_bound = CPU_WORKING_SET_BYTES // max(1, profile["largest_bytes"])
    memory_bound = int(GPU_MEMORY_FRACTION * host_memory_available()) // max(1, profile["total_bytes"])
    return max(1, min(cache_bound, memory_bound))


def gpu_pairs_per_pass(device: torch.device, bytes_per_sample: int) -> int:
    """Point-samples one pass may hold on a GPU: what fills its share of the free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, int(GPU_MEMORY_FRACTION * free) // max(1, bytes_per_sample))


def fits_on_device(device: torch.device, nbytes: int) -> bool:
    """Whether data of ``nbytes`` stays on ``device`` (always on a CPU: it is in this memory already)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= RESIDENT_FRACTION * free


def even_batch(n: int, cap: int) -> int:
    """The batch size that splits ``n`` samples into the fewest batches of at most ``cap``, all of about
    the same size."""
    cap = max(1, min(cap, n))
    return -(-n // -(-n // cap))


def power_of_two_between(low: int, high: int) -> int:
    """A power of two near the geometric mean of ``low`` and ``high``."""
    return 2 ** round(math.log2(math.sqrt(low * high))) if high > low else low


def profiled_forward(model: nn.Module, forward: Callable[[], object], samples: int, *, count_flops: bool = True):
    """``forward()``'s output and the model's profile per sample: its FLOPs (2 per multiply-add of every
    matmul, convolution and attention product it runs, whichever module or function runs them; None
    where not ``count_flops``, or where the count fails), leaf-module calls, the largest bytes a module
    outputs other than the model's output (``forward()``'s tensor: a language model's logits, which
    only the loss reads), and the total bytes its modules output. The FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``
    (:func:`counted_flops`); the rest with forward hooks. The profile is None for a model that takes no
    hooks (TorchScript)."""
    sizes, calls = [], [0]

    def hook(module, args, output):
        if not any(True for _ in module.children()):
            calls[0] += 1
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                sizes.append((t.nbytes, t.data_ptr()))

    handles = []
    try:
        try:
            handles = [m.register_forward_hook(hook) for m in model.modules()]
        except RuntimeError:  # a TorchScript module takes no hooks: no profile
            return forward(), None
        flops = None
        if count_flops:
            try:
                out, flops = counted_flops(forward)
            except Exception:  # noqa: BLE001 - the counter's failure is not the model's: the plain call decides
                sizes.clear()
                calls[0] = 0
        if flops is None:
            out = forward()
    finally:
        for handle in handles:
            handle.remove()
    n = max(1, samples)
    output = out.data_ptr() if isinstance(out, torch.Tensor) else None
    profile = {
        "flops_per_sample": None if flops is None else flops / n,
        "module_calls": calls[0],
        "largest_bytes": max((size for size, place in sizes if place != output), default=0) // n,
        "total_bytes": sum(size for size, _ in sizes) // n,
    }
    return out, profile


def counted_flops(forward: Callable[[], object]) -> tuple[object, float]:
    """``forward()``'s output and the FLOPs it ran, counted by ``FlopCounterMode``: mm, addmm, bmm,
    baddbmm, convolutions and scaled-dot-product attention by torch's formulas, and the CPU's attention
    kernel, which torch's table lacks, by :func:`cpu_attention_flops`.

    Its first use in a process imports ``torch._dynamo`` (every ``TorchDispatchMode`` does): about 1 s
    and 70 MiB on a CPU, unless something (``transformers``, ``--compile``) has imported it already."""
    from torch.utils.flop_counter import FlopCounterMode

    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    with FlopCounterMode(display=False, custom_mapping={cpu_attention: cpu_attention_flops}) as counter:
        out = forward()
    return out, float(counter.get_total_flops())


def cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of attention over ``(batch, heads, length, dim)`` queries, keys and values: the scores
    Q·Kᵀ and their product with V, 2 per multiply-add, every position against every key (a causal
    mask's skipped half is counted, as torch counts its own attention kernels). Keys and values may
    have fewer heads than the queries (grouped-query attention): each query head still takes a full
    product."""
    batch, heads, length, dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * length * keys * (dim + value_dim)
