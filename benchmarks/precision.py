"""Precision: the error that ``--precision tf32`` and ``--precision bf16`` bring, against fp32, over whole
grids of the built-in example (trained) and ResNet-20 (seeded weights, synthetic data).

bf16 runs as the evaluator runs it (autocast to bfloat16; the CPU has bfloat16 instructions). TF32
exists only on NVIDIA GPUs (on a CPU ``--precision tf32`` is fp32); here it is emulated: the inputs of
every convolution, linear layer and matmul are rounded to TF32's 10 mantissa bits (round to nearest
even) and the products accumulate in fp32, which is what TF32 tensor cores do. On a GPU the script
runs the real thing (``--device cuda``).

    .venv/bin/python benchmarks/precision.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import PeakMemory, command_line, machine, samples_of, table, wait_for_quiet, write_results  # noqa: E402
from models import cifar_like_data, resnet20  # noqa: E402

from distributed_surface.core import Axis, Grid, SurfaceEvaluator, base_tensors, make_directions  # noqa: E402
from distributed_surface.core.losses import cross_entropy  # noqa: E402
from distributed_surface.core.precision import PRECISION_LOSS_ERROR  # noqa: E402
from distributed_surface.example import digits_data, trained_digits_cnn  # noqa: E402

PRODUCTS = {F.conv1d, F.conv2d, F.conv3d, F.linear, torch.matmul, torch.mm, torch.bmm, torch.addmm}


def round_to_tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 rounded to 10 mantissa bits, to nearest, ties to even."""
    bits = t.contiguous().view(torch.int32).to(torch.int64)
    bits = (bits + 0x0FFF + ((bits >> 13) & 1)) & ~0x1FFF
    return bits.to(torch.int32).view(torch.float32).reshape(t.shape)


class EmulatedTF32(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PRODUCTS:
            def cast(v):
                return round_to_tf32(v) if isinstance(v, torch.Tensor) and v.dtype == torch.float32 else v

            args, kwargs = tree_map(cast, (args, kwargs))
        return func(*args, **kwargs)


PROBLEMS = {
    "example": (trained_digits_cnn, digits_data, None, "-1:1:11"),
    "resnet20": (resnet20, cifar_like_data, 1000, "-1:1:3"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--samples", type=int, default=None, help="the first N samples of each problem's data")
    parser.add_argument("--grid", type=int, default=None, help="points along each axis (default: the problem's)")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    assert torch.equal(round_to_tf32(torch.tensor([1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-12)])),
                       torch.tensor([1.0, 1 + 4 * 2**-11, -1.0]))  # fmt: skip
    rows = []
    for name in args.problems.split(","):
        model_factory, data_factory, samples, axis = PROBLEMS[name]
        inputs, targets = samples_of(data_factory(), args.samples or samples)
        axis = f"-1:1:{args.grid}" if args.grid else axis
        grid = Grid(Axis.parse(axis), Axis.parse(axis))
        offsets = grid.offsets(np.arange(grid.size))
        directions = make_directions(base_tensors(model_factory(), "weights"), 2, "filter", "biasbn", seed=0)
        quiet = wait_for_quiet(label=f"precision {name}")

        def values(precision: str, emulate: bool = False):
            with PeakMemory(device) as peak:
                ev = SurfaceEvaluator(model_factory(), directions, (inputs, targets), cross_entropy, None, device,
                                      vmap="off", precision=precision)  # fmt: skip
                if emulate:
                    with EmulatedTF32():
                        got = ev.evaluate(offsets)
                else:
                    got = ev.evaluate(offsets)
            return got, peak

        exact, _ = values("fp32")
        lows = {"bf16": values("bf16")}
        lows["tf32"] = values("tf32", emulate=device.type != "cuda")
        for precision, (got, peak) in lows.items():
            rel = np.abs(got["train_loss"] - exact["train_loss"]) / np.abs(exact["train_loss"])
            rows.append({
                "problem": name, "precision": precision, "emulated": precision == "tf32" and device.type != "cuda",
                "points": len(offsets), "samples": len(inputs), "max_rel": float(rel.max()), "median_rel": float(np.median(rel)),
                "max_abs": float(np.max(np.abs(got["train_loss"] - exact["train_loss"]))),
                "loss_range": [float(exact["train_loss"].min()), float(exact["train_loss"].max())],
                "acc_max_abs_diff": float(np.max(np.abs(got["train_acc"] - exact["train_acc"]))),
                "bound": PRECISION_LOSS_ERROR[precision], "peak_host_mib": peak.host_mib, "peak_device_mib": peak.device_mib,
                "load_before": quiet,
            })  # fmt: skip
            print(f"{name} {precision}: max relative loss error {rel.max():.2e}, median {np.median(rel):.2e}",
                  file=sys.stderr, flush=True)  # fmt: skip
    name = args.name or f"precision_{device.type}"
    md = [
        f"# Precision: error of tf32 and bf16 against fp32 ({device.type})",
        "",
        f"Command: `{command_line()}`",
        "",
        table(
            ["problem", "precision", "points", "samples/point", "max rel. loss error", "median rel. loss error",
             "max abs. loss error", "fp32 loss range", "max abs. accuracy diff (points of %)", "bound (tests)", "peak host MiB"],
            [[r["problem"], r["precision"] + (" (emulated)" if r["emulated"] else ""), r["points"], r["samples"], r["max_rel"],
              r["median_rel"], r["max_abs"], f"{r['loss_range'][0]:.3g} – {r['loss_range'][1]:.3g}", r["acc_max_abs_diff"],
              r["bound"], r["peak_host_mib"]] for r in rows],
        ),  # fmt: skip
        "",
        "Load before each problem (other work's busy cores; 1-min load average): "
        + "; ".join(sorted({f"{r['problem']}: {r['load_before']}" for r in rows})),
        "",
        f"Machine: {machine()}",
    ]
    write_results(name, {"command": command_line(), "machine": machine(), "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
