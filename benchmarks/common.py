"""Shared by the benchmarks: a quiet-machine check, peak memory, the machine's description, results."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# DSURF_BENCH_RESULTS: write results elsewhere (gpu_check.sh --dry-run: a scratch folder, so that toy
# numbers never replace measured ones).
RESULTS = Path(os.environ.get("DSURF_BENCH_RESULTS") or HERE / "results")
FIGURES = ROOT / "docs" / "figures"  # where the documentation shows them
# DSURF_BENCH_NO_WAIT=1: do not wait for a quiet machine (a lent GPU's minutes are too few to wait).
NO_WAIT = bool(os.environ.get("DSURF_BENCH_NO_WAIT"))


def busy_cores(seconds: float = 2.0) -> float:
    """How many cores the machine kept busy over the next ``seconds`` (from /proc/stat): with this
    process idle meanwhile, that is other work."""
    def sample():
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return float("nan")
    elapsed = total1 - total0
    return (os.cpu_count() or 1) * (1.0 - (idle1 - idle0) / elapsed) if elapsed else 0.0


def wait_for_quiet(max_wait: float = 180.0, threshold: float = 0.5, label: str = "") -> dict:
    """Before a timed run: wait (30 s at a time, at most ``max_wait``) while other work keeps more than
    ``threshold`` cores busy. Returns what was seen, for the results file.

    The 1-minute load average is recorded too, but not waited on: it still counts the benchmark step
    that has just finished (a 2-thread run leaves it near 2 for a minute), so waiting for it to fall
    below 1 would cost a minute per step; the busy-core sample sees only what runs now."""
    if NO_WAIT:
        return {"load_1min": round(os.getloadavg()[0], 2), "other_busy_cores": None, "waited_s": 0.0}
    waited = 0.0
    busy = busy_cores()
    while busy > threshold and waited < max_wait:
        print(f"[{label}] {busy:.2f} cores busy with other work (load {os.getloadavg()[0]:.2f}); waiting 30 s",
              file=sys.stderr, flush=True)  # fmt: skip
        time.sleep(30)
        waited += 30
        busy = busy_cores()
    return {"load_1min": round(os.getloadavg()[0], 2), "other_busy_cores": round(busy, 2), "waited_s": waited}


def reset_peak_rss() -> None:
    """Reset this process's peak resident set (Linux: ``5`` to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    """Peak resident memory of this process since the last reset (VmHWM), in MiB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """``with PeakMemory(device) as peak: ...``; then ``peak.host_mib``, ``peak.device_mib``."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.host_mib = self.device_mib = None

    def __enter__(self):
        reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        self.host_mib = round(peak_rss_mib(), 1)
        if self.device.type == "cuda":
            self.device_mib = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return False


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    description = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        description["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return description


def samples_of(data: tuple, samples: int | None) -> tuple:
    """The first ``samples`` of an ``(inputs, targets)`` pair (all where None)."""
    return data if samples is None else (data[0][:samples], data[1][:samples])


def command_line() -> str:
    return " ".join([".venv/bin/python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def write_results(name: str, data: dict, markdown: str) -> tuple[Path, Path]:
    """``results/NAME.json`` and ``results/NAME.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def table(header: list[str], rows: list[list]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
