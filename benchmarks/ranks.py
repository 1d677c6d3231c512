"""Ranks × threads: one surface computed by R MPI ranks of T CPU threads each, or by R ranks sharing one GPU.

Every combination computes the same grid with the real ``dsurf run`` under
``timeout mpirun --oversubscribe --bind-to none -np R`` with ``OMP_NUM_THREADS=T`` (which the run takes as each rank's
threads). Rates come from the surface file: points over the evaluation phase (the first chunk's start to
the last chunk's end: model loading and planning left out) and over the run's wall time. Efficiency
against one rank is rate(R) / (R × rate(1)) at the same threads per rank: on a GPU that several ranks
share, it says whether the ranks fill what one rank leaves idle.

    .venv/bin/python benchmarks/ranks.py                                  # CPU: ranks 1,2 × threads 1,2
    .venv/bin/python benchmarks/ranks.py --device cuda --ranks 1,2,4 --threads 1 --samples 500 --grid 16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import command_line, machine, table, wait_for_quiet, write_results  # noqa: E402
from scaling import DSURF, file_stats, mpi_env, mpirun  # noqa: E402

from distributed_surface.storage import read_surface  # noqa: E402


def one_run(work: Path, ranks: int, threads: int, args) -> dict:
    out = work / f"r{ranks}_t{threads}.h5"
    env = mpi_env()
    env["OMP_NUM_THREADS"] = str(threads)
    command = [
        DSURF, "run", "--model", "benchmarks/models.py:resnet20", "--data", "benchmarks/models.py:cifar_like_data",
        "--max-samples", str(args.samples), "--x", f"-1:1:{args.grid}", "--y", f"-1:1:{args.grid_y}",
        "--device", args.device, "--out", str(out), "--overwrite", "--no-plot", "--no-progress",
    ]  # fmt: skip
    quiet = wait_for_quiet(label=f"ranks {ranks} x threads {threads}")
    # (Open MPI binds each of 1 or 2 ranks to one core by default: T threads would share it)
    _, command_s = mpirun(ranks, command, env, timeout=args.timeout, options=("--bind-to", "none"))
    stats = file_stats(out)
    recorded = sorted({int(t) for t in read_surface(str(out)).timings["threads"]})
    points = stats["points"]
    row = {
        "ranks": ranks, "threads": threads, "cores_used": ranks * threads, "points": points,
        "phase_s": stats["phase_s"], "wall_s": stats["wall_s"], "command_s": command_s,
        "points_per_s": points / stats["phase_s"], "points_per_s_wall": points / stats["wall_s"],
        "recorded_threads": recorded, "per_rank": stats["per_rank"], "load_before": quiet,
    }  # fmt: skip
    print(f"{ranks} rank(s) x {threads} thread(s): {row['points_per_s']:.3g} points/s "
          f"({row['points_per_s_wall']:.3g} over the whole run)", file=sys.stderr, flush=True)  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--samples", type=int, default=1000, help="ResNet-20 on this many CIFAR-sized samples")
    parser.add_argument("--grid", type=int, default=6, help="points along x")
    parser.add_argument("--grid-y", dest="grid_y", type=int, default=4, help="points along y")
    parser.add_argument("--timeout", type=int, default=600, help="seconds for each mpirun")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="dsurf_ranks_") as work:
        for threads in [int(t) for t in args.threads.split(",")]:
            for ranks in [int(r) for r in args.ranks.split(",")]:
                rows.append(one_run(Path(work), ranks, threads, args))
    for row in rows:
        one = next((r for r in rows if r["ranks"] == 1 and r["threads"] == row["threads"]), None)
        row["efficiency_vs_1_rank"] = row["points_per_s"] / (row["ranks"] * one["points_per_s"]) if one else None
    best = max(rows, key=lambda r: r["points_per_s"])
    name = args.name or ("ranks_threads_cpu" if args.device == "cpu" else "ranks_gpu_cuda")
    what = "ranks × threads on this machine's CPU" if args.device == "cpu" else f"ranks sharing one GPU ({machine()['gpu']})"
    md = [
        f"# Ranks × threads: {what}",
        "",
        f"Command: `{command_line()}`; ResNet-20, {args.samples} CIFAR-sized samples, a {args.grid}×{args.grid_y} grid.",
        "",
        table(
            ["ranks", "threads/rank", "cores used", "points/s (evaluation)", "points/s (whole run)", "efficiency vs 1 rank",
             "threads recorded", "load before"],
            [[r["ranks"], r["threads"], r["cores_used"], r["points_per_s"], r["points_per_s_wall"],
              None if r["efficiency_vs_1_rank"] is None else round(r["efficiency_vs_1_rank"], 2), r["recorded_threads"],
              r["load_before"]] for r in rows],
        ),  # fmt: skip
        "",
        f"Fastest: {best['ranks']} rank(s) × {best['threads']} thread(s), {best['points_per_s']:.3g} points/s.",
        "",
        f"Machine: {machine()}",
    ]
    write_results(name, {"command": command_line(), "machine": machine(), "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
