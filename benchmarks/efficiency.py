"""Efficiency: the model FLOP/s our evaluator achieves against the device's dense matmul rate.

FLOPs per sample are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the model's forward
pass (convolutions and matmuls, 2 per multiply-add; elementwise work is not counted). The matmul rate
is measured here, in the same precision, with square ``torch.mm`` of growing size (best of several),
before and after the model runs. Variants (flags of ``dsurf run``) are timed in interleaved rounds so that
other work on the machine falls on all of them; compile time and planning are reported apart
("setup"), not in the rate.

    .venv/bin/python benchmarks/efficiency.py                # CPU: fp32 and bf16
    .venv/bin/python benchmarks/efficiency.py --device cuda  # GPU: fp32, tf32, bf16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import PeakMemory, command_line, machine, samples_of, table, wait_for_quiet, write_results  # noqa: E402
from models import cifar_like_data, resnet20  # noqa: E402

from distributed_surface.core import SurfaceEvaluator, base_tensors, make_directions  # noqa: E402
from distributed_surface.core.losses import cross_entropy  # noqa: E402
from distributed_surface.example import digits_data, trained_digits_cnn  # noqa: E402

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


def matmul_rate(device: torch.device, precision: str, seconds: float = 0.5, sizes=(512, 1024, 2048, 4096)) -> dict:
    """Best dense matrix-product FLOP/s in ``precision``: square ``torch.mm`` of sizes 512..4096, and
    products of the same sizes done as channels-last 1×1 convolutions, 2048 pixels by n channels (on a
    CPU torch.mm goes to the BLAS, which on this AMD CPU reaches half of what oneDNN's convolutions
    reach on the same cores; the model's convolutions run in oneDNN)."""
    dtype = DTYPES[precision]
    best = {"flops": 0.0, "n": None, "op": None}
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        for n in sizes:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            image = torch.randn(8, n, 16, 16, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
            kernel = b.reshape(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
            ops = {
                "mm": (lambda: torch.mm(a, b), 2 * n**3),
                "1x1 conv": (lambda: torch.nn.functional.conv2d(image, kernel), 2 * 2048 * n * n),
            }
            for op, (run, flops) in ops.items():
                rate = flops / _fastest(run, device, seconds)
                if rate > best["flops"]:
                    best = {"flops": rate, "n": n, "op": op}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    return best


def _fastest(run, device: torch.device, seconds: float) -> float:
    run()
    _sync(device)
    runs, started, fastest = 0, time.perf_counter(), float("inf")
    while time.perf_counter() - started < seconds or runs < 3:
        t = time.perf_counter()
        run()
        _sync(device)
        fastest = min(fastest, time.perf_counter() - t)
        runs += 1
    return fastest


def flops_per_sample(model, inputs: torch.Tensor) -> float:
    batch = inputs[:8]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(batch)
    return counter.get_total_flops() / len(batch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PROBLEMS = {
    "example": (trained_digits_cnn, digits_data, None, 16),
    "resnet20": (resnet20, cifar_like_data, 2000, 2),
}


def variants_for(device: torch.device, with_compile: bool, plain: bool = True) -> list[dict]:
    """fp32, tf32 (GPU) and bf16, each with channels-last off and on; with ``with_compile`` also
    ``--compile`` of fp32 and bf16 (only those where not ``plain``)."""
    variants = []
    if plain:
        precisions = ("fp32", "tf32", "bf16") if device.type == "cuda" else ("fp32", "bf16")
        for precision in precisions:
            variants.append({"label": precision, "precision": precision, "channels_last": False})
            variants.append({"label": f"{precision} --channels-last", "precision": precision, "channels_last": True})
    if with_compile:
        for precision in ("fp32", "bf16"):
            variants.append({"label": f"{precision} --compile", "precision": precision, "channels_last": False, "compile": True})
    return variants


def run_problem(name: str, device: torch.device, variants: list[dict], rounds: int, peaks: dict,
                samples: int | None = None) -> list[dict]:  # fmt: skip
    model_factory, data_factory, default_samples, points = PROBLEMS[name]
    inputs, targets = samples_of(data_factory(), samples or default_samples)
    model = model_factory()
    flops = flops_per_sample(model, inputs)
    directions = make_directions(base_tensors(model, "weights"), 2, "filter", "biasbn", seed=0)
    offsets = np.random.default_rng(0).uniform(-1, 1, size=(points, 2))
    quiet = wait_for_quiet(label=f"efficiency {name}")
    evaluators = []
    for settings in variants:
        options = {k: v for k, v in settings.items() if k != "label"}
        with PeakMemory(device) as peak:
            started = time.perf_counter()
            ev = SurfaceEvaluator(model_factory(), directions, (inputs, targets), cross_entropy, None, device, **options)
            ev.evaluate(offsets[:1])  # plan (and compile) here
            _sync(device)
            setup = time.perf_counter() - started
        evaluators.append({"settings": settings, "ev": ev, "setup": setup, "seconds": 0.0, "peak": peak})
    for _ in range(rounds):
        for entry in evaluators:
            with PeakMemory(device) as peak:
                started = time.perf_counter()
                entry["ev"].evaluate(offsets)
                _sync(device)
                entry["seconds"] += time.perf_counter() - started
            entry["peak"] = peak
    after = wait_for_quiet(max_wait=0, label=f"efficiency {name}")
    rows = []
    for entry in evaluators:
        settings, ev = entry["settings"], entry["ev"]
        work = rounds * len(offsets) * len(inputs)
        achieved = work * flops / entry["seconds"]
        peak_rate = peaks[settings["precision"]]["flops"]
        plan = ev.plan
        rows.append({
            "problem": name, "variant": settings["label"], "samples": len(inputs), "mflop_per_sample": flops / 1e6,
            "points_per_s": rounds * len(offsets) / entry["seconds"], "achieved_gflops": achieved / 1e9,
            "matmul_gflops": peak_rate / 1e9, "efficiency": achieved / peak_rate, "setup_s": round(entry["setup"], 2),
            "plan": f"{plan.path}, K={plan.points_per_pass}, batch {plan.batch_size}",
            "peak_host_mib": entry["peak"].host_mib, "peak_device_mib": entry["peak"].device_mib,
            "load_before": quiet, "load_after": after,
        })  # fmt: skip
        print(f"{name} {settings['label']}: {achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak_rate:.1f}% of "
              f"{peak_rate / 1e9:.0f}", file=sys.stderr, flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--problems", default="example,resnet20")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time --compile (CPU: ~30 s to compile ResNet-20)")
    parser.add_argument("--no-plain", dest="plain", action="store_false", help="with --compile: only the compile variants")
    parser.add_argument("--samples", type=int, default=None, help="the first N samples of each problem's data")
    parser.add_argument("--matmul-seconds", dest="matmul_seconds", type=float, default=0.5,
                        help="seconds of each matmul rate measurement")  # fmt: skip
    parser.add_argument("--matmul-sizes", dest="matmul_sizes", default="512,1024,2048,4096", help="square matmul sizes")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    variants = variants_for(device, args.compile, args.plain)
    precisions = sorted({v["precision"] for v in variants})
    wait_for_quiet(label="efficiency matmul")
    sizes = [int(n) for n in args.matmul_sizes.split(",")]
    before = {p: matmul_rate(device, p, args.matmul_seconds, sizes) for p in precisions}
    rows = []
    for problem in args.problems.split(","):
        rows += run_problem(problem, device, variants, args.rounds, before, args.samples)
    after = {p: matmul_rate(device, p, args.matmul_seconds, sizes) for p in precisions}
    peaks = {p: max(before[p], after[p], key=lambda r: r["flops"]) for p in precisions}
    for row in rows:  # against the better of the two matmul measurements
        precision = next(v["precision"] for v in variants if v["label"] == row["variant"])
        row["matmul_gflops"] = peaks[precision]["flops"] / 1e9
        row["efficiency"] = row["achieved_gflops"] / row["matmul_gflops"]
    name = args.name or f"efficiency_{device.type}"
    md = [
        f"# Efficiency: achieved model FLOP/s against the measured matmul rate ({device.type})",
        "",
        f"Command: `{command_line()}`",
        "",
        "Dense matmul rate (best of square `torch.mm` and channels-last 1×1 convolutions, before / after the model runs): "
        + ", ".join(f"{p}: {before[p]['flops'] / 1e9:.0f} / {after[p]['flops'] / 1e9:.0f} GFLOP/s ({peaks[p]['op']}, n={peaks[p]['n']})"
                   for p in precisions),
        "",
        table(
            ["problem", "variant", "samples/point", "MFLOP/sample", "points/s", "GFLOP/s", "matmul GFLOP/s", "efficiency",
             "setup s", "plan", "peak host MiB", "peak device MiB"],
            [[r["problem"], r["variant"], r["samples"], r["mflop_per_sample"], r["points_per_s"], r["achieved_gflops"],
              r["matmul_gflops"], f"{100 * r['efficiency']:.1f}%", r["setup_s"], r["plan"], r["peak_host_mib"],
              r["peak_device_mib"]] for r in rows],
        ),  # fmt: skip
        "",
        "Load before/after each problem (other work's busy cores; 1-min load average): "
        + "; ".join(sorted({f"{r['problem']}: {r['load_before']} / {r['load_after']}" for r in rows})),
        "",
        f"Machine: {machine()}",
    ]
    write_results(name, {"command": command_line(), "machine": machine(), "matmul": {"before": before, "after": after},
                         "rows": rows}, "\n".join(md))  # fmt: skip


if __name__ == "__main__":
    main()
