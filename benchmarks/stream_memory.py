"""Streamed data: peak host memory of a run whose data set is 4× what it is allowed to hold.

``dsurf run --data-placement stream --workers 2`` evaluates a data set of ``--gib`` GiB
(``benchmarks/models.py:large_images``: 3×224×224 float32 images made from their index on every read)
with a cheap model, and is held to ``--allow`` MiB: the run's peak memory, summed over its process tree
(the run and its loader processes; proportional set sizes, so shared pages count once), is sampled every
50 ms from /proc. The same run with ``--data-placement host`` (the data read into memory) is the
contrast.

    .venv/bin/python benchmarks/stream_memory.py              # 4 GiB of data, 1 GiB allowed
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ROOT, command_line, machine, table, wait_for_quiet, write_results  # noqa: E402

DSURF = str(ROOT / ".venv" / "bin" / "dsurf")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def measured_run(placement: str, gib: float, work: Path) -> dict:
    env = {**os.environ, "DSURF_BENCH_STREAM_GIB": str(gib), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    command = [DSURF, "run", "--model", "benchmarks/models.py:patch_model", "--data", "benchmarks/models.py:large_images",
               "--x", "-1:1:3", "--vmap", "on", "--points-per-pass", "3", "--device", "cpu", "--batch-size", "64",
               "--data-placement", placement, "--workers", "2", "--out", str(work / f"{placement}.h5"), "--overwrite",
               "--no-plot", "--no-progress"]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_total = peak_main = 0
    while process.poll() is None:
        pids = tree(process.pid)
        sizes = [pss_kib(p) for p in pids]
        peak_total = max(peak_total, sum(sizes))
        peak_main = max(peak_main, sizes[0] if sizes else 0)
        time.sleep(0.05)
    _, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{placement}: failed ({process.returncode}): {err[-2000:]}")
    return {"placement": placement, "seconds": time.perf_counter() - started, "peak_total_mib": peak_total / 1024,
            "peak_main_mib": peak_main / 1024}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=4.0, help="GiB of data")
    parser.add_argument("--allow", type=float, default=1024.0, help="MiB the streamed run may hold")
    parser.add_argument("--name", default="stream_memory_cpu")
    args = parser.parse_args()
    quiet = wait_for_quiet(label="stream memory")
    with tempfile.TemporaryDirectory(prefix="dsurf_stream_") as work:
        rows = [measured_run(placement, args.gib, Path(work)) for placement in ("stream", "host")]
    for row in rows:
        print(f"{row['placement']}: peak {row['peak_total_mib']:.0f} MiB over the process tree, {row['seconds']:.1f} s",
              file=sys.stderr)  # fmt: skip
    stream = rows[0]
    held = stream["peak_total_mib"] <= args.allow
    md = [
        "# Streamed data: peak host memory of a run on data 4× what it may hold (cpu)",
        "",
        f"Command: `{command_line()}`; {args.gib:g} GiB of 3×224×224 float32 images, 3 points in one pass, "
        "batches of 64, 2 loader processes.",
        "",
        f"Streamed, the run held **{stream['peak_total_mib']:.0f} MiB** at its peak (the run and its loader processes "
        f"together) against {args.allow:.0f} MiB allowed and {args.gib * 1024:.0f} MiB of data: "
        + ("within the allowance." if held else "**over the allowance**."),
        "",
        table(["--data-placement", "peak MiB (process tree, PSS)", "peak MiB (the run's own process)", "seconds"],
              [[r["placement"], r["peak_total_mib"], r["peak_main_mib"], r["seconds"]] for r in rows]),  # fmt: skip
        "",
        f"Load before: {quiet}. Machine: {machine()}",
    ]
    write_results(args.name, {"command": command_line(), "machine": machine(), "gib": args.gib, "allow_mib": args.allow,
                              "rows": rows}, "\n".join(md))  # fmt: skip


if __name__ == "__main__":
    main()
