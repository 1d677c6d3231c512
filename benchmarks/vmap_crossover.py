"""Where vmap stops paying: K points per pass against one point per pass, over models of growing width.

A family of small CNNs (four 3×3 convolutions of ``width`` channels with ReLUs on 16×16 images, and a
linear head) is evaluated with ``SurfaceEvaluator`` at a fixed batch, once with ``--vmap off`` and once
with K points per pass. Each model's work per module call (FLOPs of one pass of a batch, over its
leaf-module calls, as ``core.plan.vmap_pays`` counts it) is set against vmap's speed-up; the crossover
is where the speed-up falls through 1 (interpolated in log FLOPs), the value for
``core.plan.VMAP_FLOPS_PER_MODULE`` on this device.

    .venv/bin/python benchmarks/vmap_crossover.py                 # CPU
    .venv/bin/python benchmarks/vmap_crossover.py --device cuda
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import command_line, machine, table, wait_for_quiet, write_results  # noqa: E402

from distributed_surface.core import SurfaceEvaluator, base_tensors, make_directions  # noqa: E402
from distributed_surface.core.plan import VMAP_FLOPS_PER_MODULE, profiled_forward  # noqa: E402


def cnn(width: int) -> nn.Module:
    torch.manual_seed(0)
    layers, channels = [], 3
    for _ in range(4):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


def seconds_per_point(evaluator: SurfaceEvaluator, offsets: np.ndarray, device: torch.device, repeats: int) -> float:
    evaluator.evaluate(offsets[:2])  # warm-up (and the plan)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        evaluator.evaluate(offsets)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best / len(offsets)


def crossover(rows: list[dict]) -> float | None:
    """The FLOPs per module call where the speed-up of vmap first falls through 1 (log-interpolated)."""
    for a, b in zip(rows, rows[1:]):
        if a["speedup"] >= 1 > b["speedup"]:
            la, lb = math.log(a["flops_per_call"]), math.log(b["flops_per_call"])
            sa, sb = math.log(a["speedup"]), math.log(b["speedup"])
            return math.exp(la + (lb - la) * sa / (sa - sb))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--widths", default="4,8,16,32,64,128,256")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--samples", type=int, default=512, help="samples per point")
    parser.add_argument("--k", type=int, default=16, help="points per pass under vmap")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    data = (torch.randn(args.samples, 3, 16, 16, generator=generator), torch.randint(0, 10, (args.samples,), generator=generator))
    offsets = np.random.default_rng(0).uniform(-1, 1, size=(args.k, 2))
    quiet = wait_for_quiet(label="vmap crossover")
    rows = []
    for width in [int(w) for w in args.widths.split(",")]:
        model = cnn(width).to(device)
        directions = make_directions(base_tensors(model, "weights"), 2, "filter", "biasbn", seed=0)
        x = data[0][: args.batch].to(device)
        with torch.no_grad():
            _, profile = profiled_forward(model, lambda: model(x), len(x))
        per_call = profile["flops_per_sample"] * args.batch / max(1, profile["module_calls"])
        timings = {}
        for mode in ("off", "on"):
            evaluator = SurfaceEvaluator(cnn(width), directions, data, batch_size=args.batch, device=device, vmap=mode,
                                         points_per_pass=args.k if mode == "on" else None, channels_last=False)  # fmt: skip
            timings[mode] = seconds_per_point(evaluator, offsets, device, args.repeats)
        rows.append({"width": width, "flops_per_call": per_call, "plain_s_per_point": timings["off"],
                     "vmap_s_per_point": timings["on"], "speedup": timings["off"] / timings["on"]})  # fmt: skip
        print(f"width {width}: {per_call:.3g} FLOPs per module call, vmap {rows[-1]['speedup']:.2f}× one point per pass",
              file=sys.stderr, flush=True)  # fmt: skip
    found = crossover(rows)
    current = VMAP_FLOPS_PER_MODULE.get(device.type, VMAP_FLOPS_PER_MODULE["cuda"])
    name = args.name or f"vmap_crossover_{device.type}"
    verdict = (f"vmap stops paying at about **{found:.3g} FLOPs per module call** (the current constant: {current:.3g})"
               if found else f"no crossover in this range (the current constant: {current:.3g})")  # fmt: skip
    md = [
        f"# Where vmap stops paying ({device.type}{', ' + str(machine()['gpu']) if device.type == 'cuda' else ''})",
        "",
        f"Command: `{command_line()}`; batch {args.batch}, {args.samples} samples per point, K = {args.k}.",
        "",
        verdict + ".",
        "",
        table(["width", "FLOPs per module call", "one point per pass (s/point)", f"vmap K={args.k} (s/point)", "vmap speed-up"],
              [[r["width"], r["flops_per_call"], r["plain_s_per_point"], r["vmap_s_per_point"], round(r["speedup"], 2)]
               for r in rows]),  # fmt: skip
        "",
        f"Load before: {quiet}. Machine: {machine()}",
    ]
    write_results(name, {"command": command_line(), "machine": machine(), "crossover": found, "current": current,
                         "rows": rows}, "\n".join(md))  # fmt: skip


if __name__ == "__main__":
    main()
