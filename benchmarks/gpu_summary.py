"""The GPU check's summary: how each step ended, and each target against what was measured.

Reads the step records and results that ``benchmarks/gpu_check.sh`` wrote into DSURF_BENCH_RESULTS
(``*_TAG.json``) and writes ``gpu_check_TAG.md`` there (and prints it). A step that failed leaves its
targets "not measured"; the summary itself never fails for a missing result.

    .venv/bin/python benchmarks/gpu_summary.py --tag cuda
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine, table  # noqa: E402

# The targets of the GPU path (issue "Scale on the device").
ANCHOR_TARGET = 10.0  # × the paper's per-point loop, ResNet-20 on 10,000 samples
EFFICIENCY_TARGET = 0.40  # of the measured bf16 matmul rate
RANKS_TARGET = 0.90  # efficiency of 4 ranks sharing one GPU against one
LM_TARGET = 0.40  # GPT-2 small in bf16: model FLOP/s against the device's bf16 peak (issue 19)
HAND_LOOP_TARGET = 1.0  # × the loop a researcher writes by hand, same model, data and points


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def steps(tag: str) -> list[list[str]]:
    path = RESULTS / f"gpu_check_steps_{tag}.tsv"
    try:
        return [line.split("\t")[:4] for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []


def rows_of(result: dict | None, **match) -> list[dict]:
    return [r for r in (result or {}).get("rows", []) if all(r.get(k) == v for k, v in match.items())]


def verdict(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return "met" if value >= target else "missed"


def targets(tag: str) -> list[list]:
    lines = []
    anchor = rows_of(load(f"anchor_loop_{tag}"), problem="resnet20")
    ours = [r for r in anchor if r["method"] != "anchor (paper loop)"]
    defaults = next((r["ratio"] for r in ours if r["method"].startswith("ours (defaults")), None)
    best = max(ours, key=lambda r: r["ratio"], default=None)
    lines.append(["ours (defaults) against the paper's loop, ResNet-20", f"≥ {ANCHOR_TARGET:g}×",
                  _ratio(defaults), verdict(defaults, ANCHOR_TARGET)])  # fmt: skip
    if best is not None:
        lines.append([f"best variant ({best['method']}) against the paper's loop", f"≥ {ANCHOR_TARGET:g}×",
                      _ratio(best["ratio"]), verdict(best["ratio"], ANCHOR_TARGET)])  # fmt: skip
    efficiency = rows_of(load(f"efficiency_{tag}"), problem="resnet20")
    bf16 = max((r for r in efficiency if r["variant"].startswith("bf16")), key=lambda r: r["efficiency"], default=None)
    lines.append([f"model FLOP/s against the bf16 matmul rate{' (' + bf16['variant'] + ')' if bf16 else ''}",
                  f"≥ {EFFICIENCY_TARGET:.0%}", f"{bf16['efficiency']:.1%}" if bf16 else "—",
                  verdict(bf16["efficiency"] if bf16 else None, EFFICIENCY_TARGET)])  # fmt: skip
    ranks = load(f"ranks_gpu_{tag}")
    most = max((r for r in (ranks or {}).get("rows", [])), key=lambda r: r["ranks"], default=None)
    value = most["efficiency_vs_1_rank"] if most else None
    lines.append([f"{most['ranks'] if most else 4} ranks sharing one GPU against one (efficiency)", f"≥ {RANKS_TARGET:g}",
                  f"{value:.2f}" if value is not None else "—", verdict(value, RANKS_TARGET)])  # fmt: skip
    crossover = load(f"vmap_crossover_{tag}")
    if crossover is not None:
        found = crossover.get("crossover")
        lines.append(["vmap crossover (FLOPs per module call)", f"replaces the estimate {crossover['current']:.3g}",
                      f"{found:.3g}" if found else "none in range", "measured"])  # fmt: skip
    # (per-sample rates: the compile step evaluates fewer samples per point)
    layout = {r["variant"]: r["achieved_gflops"] for r in efficiency}
    for precision in ("fp32", "bf16"):
        if precision in layout and f"{precision} --channels-last" in layout:
            gain = layout[f"{precision} --channels-last"] / layout[precision]
            lines.append([f"channels-last on/off ({precision})", "> 1 to turn it on", f"{gain:.2f}×", "measured"])
    compiled = {r["variant"]: r["achieved_gflops"] for r in rows_of(load(f"efficiency_compile_{tag}"), problem="resnet20")}
    for precision in ("fp32", "bf16"):
        if precision in layout and f"{precision} --compile" in compiled:
            gain = compiled[f"{precision} --compile"] / layout[precision]
            lines.append([f"--compile on/off ({precision})", "> 1 to turn it on", f"{gain:.2f}×", "measured"])
    lines += lm_targets(load(f"lm_{tag}"))
    for row in rows_of(load(f"precision_{tag}"), problem="resnet20"):
        lines.append([f"{row['precision']} loss error against fp32 (max relative)", f"≤ {row['bound']:g} (the tests' bound)",
                      f"{row['max_rel']:.2e}", "met" if row["max_rel"] <= row["bound"] else "missed"])  # fmt: skip
    return lines


def lm_targets(result: dict | None) -> list[list]:
    """The language model's lines: its bf16 model FLOP/s against the device's datasheet bf16 peak (where
    lm.py knows the device; else against the measured bf16 matmul rate, and the line says so), against
    the measured rate, its speed against the hand loop, and its tokens per second."""
    row = next(iter(rows_of(result, precision="bf16")), None)
    what = f"language model ({result['parameters'] / 1e6:.3g} M parameters, bf16)" if row else "language model (bf16)"
    if row is None:
        return [[f"{what}: model FLOP/s against the bf16 peak", f"≥ {LM_TARGET:.0%}", "—", verdict(None, LM_TARGET)],
                [f"{what} against the hand loop", f"≥ {HAND_LOOP_TARGET:g}×", "—", verdict(None, HAND_LOOP_TARGET)]]
    if row["of_peak"]:
        peak, share = f"datasheet {result['bf16_peak'] / 1e12:.0f} TFLOP/s", row["of_peak"]
    else:
        peak, share = f"no datasheet peak for this device: the measured bf16 matmul rate, {row['mm_flops'] / 1e12:.3g} TFLOP/s", row["of_mm"]
    return [
        [f"{what}: model FLOP/s against the bf16 peak ({peak})", f"≥ {LM_TARGET:.0%}", f"{share:.1%}", verdict(share, LM_TARGET)],
        [f"{what}: model FLOP/s against the measured bf16 matmul rate", "measured", f"{row['of_mm']:.1%}", "measured"],
        [f"{what} against the hand loop", f"≥ {HAND_LOOP_TARGET:g}×", _ratio(row["ratio"]), verdict(row["ratio"], HAND_LOOP_TARGET)],
        [f"{what}: tokens per second", "measured", f"{row['tokens_per_s']:,.0f}", "measured"],
    ]  # fmt: skip


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="cuda", help="the results' suffix: cuda, or dry for a dry run")
    args = parser.parse_args()
    device = machine()["gpu"] or f"CPU ({machine()['cpu']}; a dry run: toy sizes, not results)"
    md = [
        f"# GPU check ({args.tag}): {device}",
        "",
        "Command: `bash benchmarks/gpu_check.sh" + (" --dry-run`" if args.tag == "dry" else "`"),
        "",
        "## Steps",
        "",
        table(["step", "outcome", "seconds", "log"], steps(args.tag)),
        "",
        "## Targets",
        "",
        table(["what", "target", "measured", "verdict"], targets(args.tag)),
        "",
        f"Machine: {machine()}",
    ]
    path = RESULTS / f"gpu_check_{args.tag}.md"
    path.write_text("\n".join(md) + "\n")
    print(f"written: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
