"""Anchor: the paper code's per-point loop against our evaluator, same model, data, directions and grid.

The anchor is our own re-implementation of what the loss-landscape code of Li et al. (2018) does at
every grid point (written from its description, no code copied): rebuild every parameter as
θ0 + a·d1 + b·d2 from the float64 numpy offsets (new tensors, ``p.data = ...``), then stream the whole
data set through a ``DataLoader`` in batches of 128, moving each batch to the device and reading the
loss and the hit count back with ``.item()`` after every batch. It is kinder to itself than the
original: the data set is a ``TensorDataset`` already in memory (no image decoding or transforms, no
worker processes) and the forward pass runs under ``torch.no_grad()``.

Ours is ``SurfaceEvaluator`` with the defaults of ``dsurf run`` (fp32, automatic batch size and plan,
channels-last on a CPU),
plus optional variants (``--variants``). Points per second are measured on the same grid, interleaved
(anchor half 1, ours half 1, anchor half 2, ours half 2) so that a burst of other work on the machine
falls on both; one warm-up point each is not timed (ours makes its plan there: reported apart).

    .venv/bin/python benchmarks/anchor_loop.py                 # both models, CPU
    .venv/bin/python benchmarks/anchor_loop.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import PeakMemory, command_line, machine, samples_of, table, wait_for_quiet, write_results  # noqa: E402
from models import cifar_like_data, resnet20  # noqa: E402

from distributed_surface.core import Axis, Grid, SurfaceEvaluator, base_tensors, make_directions  # noqa: E402
from distributed_surface.core.losses import cross_entropy  # noqa: E402
from distributed_surface.example import digits_data, trained_digits_cnn  # noqa: E402

ANCHOR_BATCH = 128


def anchor_evaluate(model: nn.Module, directions, dataset, offsets: np.ndarray, device: torch.device):
    """The paper code's loop, point by point. Returns (loss, acc) arrays."""
    loader = DataLoader(dataset, batch_size=ANCHOR_BATCH, shuffle=False)
    params = list(model.parameters())
    names = [name for name, _ in model.named_parameters()]
    theta0 = [p.data.clone() for p in params]
    dx = [directions[0][name].to(device) for name in names]
    dy = [directions[1][name].to(device) for name in names] if len(directions) > 1 else None
    criterion = nn.CrossEntropyLoss()
    model.eval()
    losses, accs = [], []
    try:
        for offset in offsets:  # float64 numpy
            step = [np.float64(v) for v in offset]
            for k, (p, w) in enumerate(zip(params, theta0)):
                change = dx[k] * step[0] if dy is None else dx[k] * step[0] + dy[k] * step[1]
                p.data = w + change.type(w.dtype)
            total_loss, correct, total = 0.0, 0, 0
            with torch.no_grad():
                for inputs, targets in loader:
                    inputs, targets = inputs.to(device), targets.to(device)
                    outputs = model(inputs)
                    loss = criterion(outputs, targets)
                    total_loss += loss.item() * len(targets)
                    _, predicted = torch.max(outputs.data, 1)
                    correct += predicted.eq(targets).sum().item()
                    total += len(targets)
            losses.append(total_loss / total)
            accs.append(100.0 * correct / total)
    finally:
        for p, w in zip(params, theta0):
            p.data = w
    return np.array(losses), np.array(accs)


PROBLEMS = {
    # name: (model factory, data factory, grid)
    "example": (trained_digits_cnn, digits_data, "-1:1:11", "-1:1:11"),
    "resnet20": (resnet20, cifar_like_data, "-1:1:2", "-1:1:2"),
}


def run_problem(name: str, device: torch.device, variants: list[dict], samples: int | None) -> list[dict]:
    model_factory, data_factory, xs, ys = PROBLEMS[name]
    inputs, targets = samples_of(data_factory(), samples)
    grid = Grid(Axis.parse(xs), Axis.parse(ys))
    offsets = grid.offsets(np.arange(grid.size))
    model = model_factory().to(device)
    directions = make_directions(base_tensors(model, "weights"), 2, "filter", "biasbn", seed=0)
    dataset = TensorDataset(inputs, targets)
    half = len(offsets) // 2
    rows = []

    quiet = wait_for_quiet(label=f"anchor {name}")
    # warm-up (not timed): one point each; ours plans (and times its candidate plans) here
    anchor_evaluate(model, directions, dataset, offsets[:1], device)
    evaluators = []
    for settings in variants:
        started = time.perf_counter()
        ev = SurfaceEvaluator(model_factory(), directions, (inputs, targets), cross_entropy, settings.get("batch_size"),
                              device, "weights", **{k: v for k, v in settings.items() if k not in ("label", "batch_size")})  # fmt: skip
        ev.evaluate(offsets[:1])
        evaluators.append((settings, ev, time.perf_counter() - started))

    seconds = {"anchor": 0.0, **{s["label"]: 0.0 for s in variants}}
    values = {key: [] for key in seconds}
    memory = {}
    for part in (slice(0, half), slice(half, None)):
        with PeakMemory(device) as peak:
            started = time.perf_counter()
            values["anchor"].append(anchor_evaluate(model, directions, dataset, offsets[part], device))
            seconds["anchor"] += time.perf_counter() - started
        memory["anchor"] = peak
        for settings, ev, _ in evaluators:
            with PeakMemory(device) as peak:
                started = time.perf_counter()
                got = ev.evaluate(offsets[part])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[settings["label"]] += time.perf_counter() - started
            memory[settings["label"]] = peak
            values[settings["label"]].append((got["train_loss"], got["train_acc"]))
    after = wait_for_quiet(max_wait=0, label=f"anchor {name}")

    anchor_loss = np.concatenate([v[0] for v in values["anchor"]])
    anchor_rate = len(offsets) / seconds["anchor"]
    rows.append({
        "problem": name, "method": "anchor (paper loop)", "points": len(offsets), "samples": len(inputs),
        "seconds": round(seconds["anchor"], 3), "points_per_s": anchor_rate, "ratio": 1.0,
        "plan": f"DataLoader, batch {ANCHOR_BATCH}, .item() per batch", "setup_s": None, "max_rel_diff_vs_anchor": 0.0,
        "peak_host_mib": memory["anchor"].host_mib, "peak_device_mib": memory["anchor"].device_mib,
        "load_before": quiet, "load_after": after,
    })  # fmt: skip
    for settings, ev, setup in evaluators:
        label = settings["label"]
        loss = np.concatenate([v[0] for v in values[label]])
        rate = len(offsets) / seconds[label]
        plan = ev.plan
        rows.append({
            "problem": name, "method": label, "points": len(offsets), "samples": len(inputs),
            "seconds": round(seconds[label], 3), "points_per_s": rate, "ratio": rate / anchor_rate,
            "plan": f"{plan.path}, K={plan.points_per_pass}, batch {plan.batch_size}: {plan.reason}",
            "setup_s": round(setup, 3), "max_rel_diff_vs_anchor": float(np.max(np.abs(loss - anchor_loss) / np.abs(anchor_loss))),
            "peak_host_mib": memory[label].host_mib, "peak_device_mib": memory[label].device_mib,
            "load_before": quiet, "load_after": after,
        })  # fmt: skip
        print(f"{name}: {label}: {rate:.3g} points/s, {rate / anchor_rate:.2f}× the anchor ({anchor_rate:.3g})",
              file=sys.stderr, flush=True)  # fmt: skip
    return rows


VARIANTS = {
    # The defaults: fp32, channels-last on a CPU (off on a GPU), batch and plan automatic.
    "defaults": {"label": "ours (defaults: fp32)"},
    "contiguous": {"label": "ours --channels-last=off", "channels_last": False},
    "channels_last": {"label": "ours --channels-last", "channels_last": True},
    "bf16": {"label": "ours --precision bf16", "precision": "bf16"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--problems", default="example,resnet20")
    parser.add_argument("--variants", default="defaults,contiguous,bf16", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--quick", action="store_true", help="1,000 samples (a smoke test, not a result)")
    parser.add_argument("--samples", type=int, default=None, help="the first N samples of each problem's data")
    parser.add_argument("--name", default=None, help="results file name (default anchor_loop_<device type>)")
    args = parser.parse_args()
    device = torch.device(args.device)
    # A run tunes glibc's malloc for the whole process at its start (runtime.keep_freed_host_memory);
    # do it before anything is timed, so that the anchor runs with the same allocator throughout. (With
    # glibc's defaults both run 2-3x slower on a CPU: run with MALLOC_MMAP_THRESHOLD_=131072
    # MALLOC_TRIM_THRESHOLD_=131072 to see it.)
    from distributed_surface.engine.runtime import keep_freed_host_memory

    keep_freed_host_memory()
    variants = [VARIANTS[v] for v in args.variants.split(",")]
    rows = []
    for problem in args.problems.split(","):
        rows += run_problem(problem, device, variants, args.samples or (1000 if args.quick else None))
    name = args.name or f"anchor_loop_{device.type}"
    md = [
        f"# Anchor: the paper's per-point loop against our evaluator ({device.type})",
        "",
        f"Command: `{command_line()}`",
        "",
        table(
            ["problem", "method", "points", "samples/point", "points/s", "× anchor", "max rel. diff of loss", "peak host MiB",
             "peak device MiB", "plan"],
            [[r["problem"], r["method"], r["points"], r["samples"], r["points_per_s"], round(r["ratio"], 2),
              r["max_rel_diff_vs_anchor"], r["peak_host_mib"], r["peak_device_mib"], r["plan"]] for r in rows],
        ),  # fmt: skip
        "",
        "Load before/after each problem (other work's busy cores; 1-min load average): "
        + "; ".join(sorted({f"{r['problem']}: {r['load_before']} / {r['load_after']}" for r in rows})),
        "",
        f"Machine: {machine()}",
    ]
    write_results(name, {"command": command_line(), "machine": machine(), "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
