"""Strong scaling: one fixed grid over N MPI ranks, with the real engine and the real ``dsurf run``.

1. Real runs, N = 1, 2 (all this machine's cores allow): ResNet-20 on 500 synthetic CIFAR-sized
   samples, a 4×4 grid, ``timeout 300 mpirun --oversubscribe -np N /usr/bin/time .venv/bin/dsurf run ...``.
   Wall time and per-rank timings are read from the surface file (its ``runs`` and ``timings``); peak
   memory per rank from ``/usr/bin/time``.
2. Simulated evaluator, N = 2 … 64 oversubscribed ranks: the engine as it is, with a model whose
   forward() sleeps 50 ms (100 ms on rank 1: one rank 2× slower) and one forward per point
   (``--max-samples 4 --batch-size 4 --vmap off``), on a 51×51 grid (2,601 points, 130 s of work at
   50 ms). Ranks run ``benchmarks/rank_probe.py run ...`` (``dsurf``'s own ``cli.main`` plus a probe that
   records peak memory and the coordinator's CPU time). Sleeping ranks overlap on 2 cores, so what is
   measured is the engine: hand-out, messages, file writes, start and end.

Dynamic chunking is what the engine does. Static chunking (each rank a fixed contiguous share) is
emulated from the same run: each rank's share of the points times its measured seconds per point, plus
the run's measured fixed cost (wall time not spent evaluating on the busiest rank).

Ideal time: the points divided by the ranks' summed measured rates (so a 2× slower rank counts half).
Efficiency = ideal / wall. Speedup = the time one fast rank would take (points × its seconds per point)
/ wall; with one half-speed rank the best possible is N − 0.5.

    .venv/bin/python benchmarks/scaling.py             # both parts (~4 min on 2 cores)
    .venv/bin/python benchmarks/scaling.py --ranks 2,4 --grid 21   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import FIGURES, ROOT, command_line, machine, table, wait_for_quiet, write_results  # noqa: E402

from distributed_surface.storage import Status, read_surface  # noqa: E402

DSURF = str(ROOT / ".venv" / "bin" / "dsurf")
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def mpi_env() -> dict:
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    return env


def mpirun(ranks: int, command: list[str], env: dict, timeout: int, options: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, float]:
    full = ["timeout", str(timeout), "mpirun", "--oversubscribe", "--tag-output", *options, "-np", str(ranks), *command]
    started = time.perf_counter()
    result = subprocess.run(full, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(full)}\n{result.stderr[-3000:]}")
    return result, elapsed


def file_stats(path: Path) -> dict:
    """Wall time of the last run and per-rank points and busy seconds, from the surface file."""
    data = read_surface(str(path))
    run = data.runs[-1]
    wall = float(run["end"] - run["start"])
    per_rank = {}
    for record in data.timings:
        entry = per_rank.setdefault(int(record["rank"]), {"chunks": 0, "points": 0, "busy_s": 0.0})
        entry["chunks"] += 1
        entry["points"] += int(record["points"])
        entry["busy_s"] += float(record["seconds"])
    for entry in per_rank.values():
        entry["s_per_point"] = entry["busy_s"] / entry["points"]
    assert data.status == Status.COMPLETE and data.done.all(), f"{path}: {data.status}"
    t = data.timings
    phase = float(np.max(t["start"] + t["seconds"]) - np.min(t["start"]))  # first chunk's start to last one's end
    return {"wall_s": wall, "phase_s": phase, "per_rank": per_rank, "points": int(data.done.size), "mode": run["mode"].decode()}


def analyse(stats: dict, ranks: int, fast_rank_s: float | None = None) -> dict:
    """Ideal time, efficiency, speedup, and the static-chunking emulation."""
    per_rank = stats["per_rank"]
    points, wall = stats["points"], stats["wall_s"]
    rates = {r: 1.0 / e["s_per_point"] for r, e in per_rank.items()}
    ideal = points / sum(rates.values())
    busiest = max(e["busy_s"] for e in per_rank.values())
    fixed = max(0.0, wall - busiest)
    shares = [len(part) for part in np.array_split(np.arange(points), ranks)]
    # a rank that computed nothing in the dynamic run (none here) is taken at the median speed
    median_s = float(np.median([e["s_per_point"] for e in per_rank.values()]))
    static_makespan = max(shares[r] * per_rank.get(r, {"s_per_point": median_s})["s_per_point"] for r in range(ranks))
    static_wall = static_makespan + fixed
    fast = fast_rank_s if fast_rank_s is not None else min(e["s_per_point"] for e in per_rank.values())
    return {
        "ideal_s": ideal, "efficiency": ideal / wall, "speedup": points * fast / wall,
        "phase_efficiency": ideal / stats["phase_s"],
        "static_wall_s": static_wall, "static_efficiency": ideal / static_wall, "static_speedup": points * fast / static_wall,
        "fixed_s": fixed, "busiest_rank_s": busiest,
    }  # fmt: skip


def real_runs(work: Path, ranks_list: list[int], grid: str, samples: int) -> list[dict]:
    rows = []
    env = mpi_env()
    env.pop("OMP_NUM_THREADS")  # let the engine give each rank its share of the cores
    for ranks in ranks_list:
        out = work / f"real_{ranks}.h5"
        quiet = wait_for_quiet(label=f"scaling real N={ranks}")
        command = [
            "/usr/bin/time", "-f", "DSURF_PEAK_RSS_KB=%M", DSURF, "run",
            "--model", "benchmarks/models.py:resnet20", "--data", "benchmarks/models.py:cifar_like_data",
            "--max-samples", str(samples), "--x", f"-1:1:{grid}", "--y", f"-1:1:{grid}", "--device", "cpu",
            "--out", str(out), "--overwrite", "--no-plot", "--no-progress",
        ]  # fmt: skip
        result, elapsed = mpirun(ranks, command, env, timeout=300)
        untagged = re.sub(r"\[\d+,\d+\]<std(?:err|out)>:", "", result.stderr)  # --tag-output may split a line
        rss = [int(v) / 1024 for v in re.findall(r"DSURF_PEAK_RSS_KB=\s*(\d+)", untagged)]
        stats = file_stats(out)
        rows.append({"kind": "real", "ranks": ranks, "command_s": elapsed, "peak_rss_mib_per_rank": rss, **stats,
                     "load_before": quiet, "load_after": wait_for_quiet(max_wait=0, label="scaling")})  # fmt: skip
        print(f"real N={ranks}: wall {stats['wall_s']:.1f} s (command {elapsed:.1f} s)", file=sys.stderr, flush=True)
    base = rows[0]["wall_s"] if rows and rows[0]["ranks"] == 1 else None
    for row in rows:
        row.update(analyse(row, row["ranks"]))
        if base is not None:  # compute-bound: speedup against the measured one-rank run
            row["speedup"] = base / row["wall_s"]
            row["efficiency"] = row["speedup"] / row["ranks"]
    return rows


def simulated_runs(work: Path, ranks_list: list[int], grid: int, sleep: float, rank0: str, chunk: int | None) -> list[dict]:
    rows = []
    for ranks in ranks_list:
        out = work / f"sim_{ranks}.h5"
        probes = work / f"probe_{ranks}"
        shutil.rmtree(probes, ignore_errors=True)
        env = mpi_env()
        env.update(DSURF_BENCH_SLEEP=str(sleep), DSURF_BENCH_SLOW_RANK="1", DSURF_PROBE_DIR=str(probes))
        quiet = wait_for_quiet(label=f"scaling simulated N={ranks}")
        command = [
            PYTHON, "benchmarks/rank_probe.py", "run",
            "--model", "benchmarks/models.py:sleepy_model", "--data", "benchmarks/models.py:sleepy_data",
            "--max-samples", "4", "--batch-size", "4", "--vmap", "off", "--device", "cpu", "--rank0", rank0,
            "--x", f"-1:1:{grid}", "--y", f"-1:1:{grid}", "--out", str(out), "--overwrite", "--no-plot", "--no-progress",
        ] + (["--chunk-size", str(chunk)] if chunk else [])  # fmt: skip
        result, elapsed = mpirun(ranks, command, env, timeout=600)
        stats = file_stats(out)
        records = [json.loads(p.read_text()) for p in sorted(probes.glob("rank*.json"))]
        rss = [round(r["peak_rss_mib"], 1) for r in sorted(records, key=lambda r: r["rank"])]
        root = next((r for r in records if r["rank"] == 0), {})
        row = {
            "kind": "simulated", "ranks": ranks, "command_s": elapsed, **stats,
            "nominal_ideal_s": stats["points"] * sleep / (ranks - 0.5 if ranks > 1 else 1),
            "peak_rss_mib_per_rank": rss, "peak_rss_mib_max": max(rss) if rss else None,
            "peak_rss_mib_total": round(sum(rss), 1) if rss else None,
            "coordinator_cpu_s": root.get("coordinator_cpu_s"), "coordinator_wall_s": root.get("coordinator_wall_s"),
            "load_before": quiet, "load_after": wait_for_quiet(max_wait=0, label="scaling"),
        }  # fmt: skip
        fast = float(np.median([e["s_per_point"] for r, e in stats["per_rank"].items() if r != 1]))
        row.update(analyse(stats, ranks, fast_rank_s=fast))
        if row["coordinator_cpu_s"] is not None:
            row["coordinator_share"] = row["coordinator_cpu_s"] / stats["wall_s"]
        rows.append(row)
        print(f"simulated N={ranks}: wall {stats['wall_s']:.2f} s, ideal {row['ideal_s']:.2f} s, efficiency "
              f"{100 * row['efficiency']:.1f}% (chunk phase {100 * row['phase_efficiency']:.1f}%, static "
              f"{100 * row['static_efficiency']:.1f}%), coordinator "
              f"{100 * row.get('coordinator_share', float('nan')):.3f}% of wall, command {elapsed:.1f} s",
              file=sys.stderr, flush=True)  # fmt: skip
    return rows


def plot(real: list[dict], simulated: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(11, 4.3))
    if simulated:
        n = np.array([r["ranks"] for r in simulated])
        grid_n = np.array(sorted({1, *n.tolist()}))
        ax_s.plot(grid_n, grid_n, "k-", lw=1, label="ideal (N)")
        ax_s.plot(n, n - 0.5, "k:", lw=1, label="ideal with one half-speed rank (N − 0.5)")
        ax_s.plot(n, [r["speedup"] for r in simulated], "o-", label="simulated, dynamic chunks (the engine)")
        ax_s.plot(n, [r["static_speedup"] for r in simulated], "s--", label="simulated, static shares (emulated)")
        ax_e.axhline(1.0, color="k", lw=1, label="ideal")
        ax_e.plot(n, [r["efficiency"] for r in simulated], "o-", label="simulated, dynamic chunks (the engine)")
        ax_e.plot(n, [r["phase_efficiency"] for r in simulated], "o:", color="C0", alpha=0.6,
                  label="simulated, dynamic, chunk phase only (no start-up)")  # fmt: skip
        ax_e.plot(n, [r["static_efficiency"] for r in simulated], "s--", label="simulated, static shares (emulated)")
    if real:
        ax_s.plot([r["ranks"] for r in real], [r["speedup"] for r in real], "^-", label="real ResNet-20, 2 CPU cores")
        ax_e.plot([r["ranks"] for r in real], [r["efficiency"] for r in real], "^-", label="real ResNet-20, 2 CPU cores")
    for ax in (ax_s, ax_e):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("MPI ranks N")
        ax.grid(True, which="both", alpha=0.3)
    ax_s.set_yscale("log", base=2)
    ax_s.set_ylabel("speedup over one fast rank")
    ax_e.set_ylabel("efficiency (ideal time / wall time)")
    ax_e.set_ylim(0, 1.1)
    ax_s.legend(fontsize=7, loc="upper left")
    ax_e.legend(fontsize=7, loc="lower left")
    grid = simulated[0]["points"] if simulated else ""
    fig.suptitle(f"Strong scaling of one {grid}-point grid (simulated: 50 ms points, rank 1 at 100 ms; real: ResNet-20)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="2,4,8,16,32,64", help="simulated: rank counts")
    parser.add_argument("--grid", type=int, default=51, help="simulated: points per axis")
    parser.add_argument("--sleep", type=float, default=0.05, help="simulated: seconds per point (rank 1: twice)")
    parser.add_argument("--rank0", default="work", help="simulated: --rank0 work|coordinate")
    parser.add_argument("--chunk-size", type=int, default=None, help="simulated: --chunk-size (default: the engine's)")
    parser.add_argument("--real-ranks", default="1,2", help="real ResNet-20 runs: rank counts ('' for none)")
    parser.add_argument("--real-grid", type=int, default=4)
    parser.add_argument("--real-samples", type=int, default=500)
    parser.add_argument("--name", default="scaling_cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dsurf-scaling-") as tmp:
        work = Path(tmp)
        real = real_runs(work, [int(n) for n in args.real_ranks.split(",") if n], args.real_grid, args.real_samples)
        simulated = simulated_runs(work, [int(n) for n in args.ranks.split(",") if n], args.grid, args.sleep, args.rank0, args.chunk_size)
    figure = FIGURES / ("scaling.png" if args.name == "scaling_cpu" else f"{args.name}.png")
    plot(real, simulated, figure)
    md = [
        "# Strong scaling (CPU, 2 cores)",
        "",
        f"Command: `{command_line()}`",
        "",
        f"![scaling]({os.path.relpath(figure, ROOT / 'benchmarks' / 'results')})",
        "",
        f"## Real runs: ResNet-20, {args.real_samples} samples per point, "
        f"{args.real_grid}×{args.real_grid} grid",
        "",
        table(
            ["N", "wall s (file)", "command s", "speedup", "efficiency", "points per rank", "s/point per rank", "peak RSS MiB per rank", "mode"],
            [[r["ranks"], r["wall_s"], r["command_s"], r["speedup"], f"{100 * r['efficiency']:.1f}%",
              ", ".join(f"{k}: {v['points']}" for k, v in sorted(r["per_rank"].items())),
              ", ".join(f"{k}: {v['s_per_point']:.3f}" for k, v in sorted(r["per_rank"].items())),
              ", ".join(f"{v:.0f}" for v in r["peak_rss_mib_per_rank"]), r["mode"]] for r in real],
        ),  # fmt: skip
        "",
        f"## Simulated evaluator: {args.grid}×{args.grid} grid, {1000 * args.sleep:.0f} ms per point, rank 1 at "
        f"{2000 * args.sleep:.0f} ms, --rank0 {args.rank0}, --chunk-size {args.chunk_size or 'default (guided)'}",
        "",
        table(
            ["N", "wall s", "ideal s", "efficiency (dynamic)", "chunk phase s", "efficiency in the chunk phase",
             "static shares: wall s", "efficiency (static)", "speedup", "coordinator CPU % of wall", "fixed s",
             "peak RSS MiB max / total", "command s"],
            [[r["ranks"], r["wall_s"], r["ideal_s"], f"{100 * r['efficiency']:.1f}%", r["phase_s"],
              f"{100 * r['phase_efficiency']:.1f}%", r["static_wall_s"],
              f"{100 * r['static_efficiency']:.1f}%", r["speedup"],
              f"{100 * r['coordinator_share']:.3f}%" if r.get("coordinator_share") is not None else "n/a",
              r["fixed_s"], f"{r['peak_rss_mib_max']:.0f} / {r['peak_rss_mib_total']:.0f}", r["command_s"]] for r in simulated],
        ),  # fmt: skip
        "",
        "wall: the run's start to end in the surface file (rank 0 has prepared the file; the other ranks' loading,"
        " the hand-out and the writes are inside). chunk phase: the first chunk's start to the last chunk's end"
        " (from the file's timing records): the engine at work, without the ranks' start-up."
        " fixed: wall time not spent evaluating on the busiest rank."
        " command: the whole mpirun, process start-up and torch import included.",
        "",
        "Load before each run (other work's busy cores; 1-min load average): "
        + "; ".join(f"{r['kind']} N={r['ranks']}: {r['load_before']}" for r in real + simulated),
        "",
        f"Machine: {machine()}",
    ]
    write_results(args.name, {"command": command_line(), "machine": machine(), "real": real, "simulated": simulated}, "\n".join(md))


if __name__ == "__main__":
    main()
