"""Memory and time of the trajectory PCA (``--trajectory``) on large models: n checkpoints of a model
of P parameters, saved with torch.save, read memory-mapped and streamed block by block
(``distributed_surface.core.pca``), exactly as ``dsurf run --trajectory`` reads them.

Peak memory is the process's anonymous memory (RssAnon, sampled every 10 ms): the checkpoints' pages
that the memory map brings in are file-backed and the kernel reclaims them as it needs (they are in
VmRSS, not RssAnon). A matrix of the offsets would take n × P × 8 bytes; the Gram matrix approach takes
n × BLOCK × 8 bytes and two passes over the files.

    .venv/bin/python benchmarks/pca.py            # the cases below; writes benchmarks/results/pca_cpu.md
    .venv/bin/python benchmarks/pca.py --quick    # a smoke test (small sizes, nothing written)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distributed_surface.core.directions import base_tensors, is_movable  # noqa: E402
from distributed_surface.core.pca import BLOCK, trajectory_pca  # noqa: E402
from distributed_surface.problem import read_state  # noqa: E402

CASES = [(200, 5_000_000), (50, 25_000_000)]
QUICK = [(20, 200_000)]


def model_of(parameters: int) -> nn.Module:
    """Linear layers of 2,000 × 2,500 (5 M weights each) up to ``parameters``, with biases."""
    width, height = 2500, 2000
    layers = max(1, round(parameters / (width * height)))
    return nn.Sequential(*[nn.Linear(width, height) if k % 2 == 0 else nn.Linear(height, width) for k in range(layers)])


def anon_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


class Peak:
    """The peak of RssAnon while the block runs, sampled every 10 ms."""

    def __enter__(self):
        self.start, self.peak, self._stop = anon_kib(), anon_kib(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, anon_kib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_case(n: int, parameters: int, folder: Path) -> dict:
    torch.manual_seed(0)
    model = model_of(parameters)
    theta0 = model.state_dict()
    started = time.perf_counter()
    for k in range(n):  # a random walk towards θ0, as training goes
        torch.save({name: t + (n - k) * 1e-3 * torch.randn_like(t) for name, t in theta0.items()}, folder / f"epoch_{k}.pt")
    written = time.perf_counter() - started
    size = sum(p.stat().st_size for p in folder.iterdir())
    base = base_tensors(model, "weights")
    with Peak() as peak:
        started = time.perf_counter()
        states = [read_state(str(folder / f"epoch_{k}.pt"), model, "--trajectory", mmap=True) for k in range(n)]
        found = trajectory_pca(base, states, lambda name, t: is_movable(t) and t.dim() > 1)
        seconds = time.perf_counter() - started
    moving = sum(t.numel() for t in base.values() if t.dim() > 1)
    return {
        "checkpoints": n, "parameters": sum(t.numel() for t in base.values()), "moving": moving,
        "files_gb": size / 1e9, "seconds": seconds, "write_seconds": written,
        "peak_anon_mb": (peak.peak - peak.start) / 1024, "matrix_mb": n * moving * 8 / 2**20,
        "block_mb": n * BLOCK * 8 / 2**20, "ratio": [float(r) for r in found.explained_variance_ratio],
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tmp", default=None, help="where to write the checkpoints (default: the system's)")
    args = parser.parse_args()
    rows = []
    for n, parameters in QUICK if args.quick else CASES:
        folder = Path(tempfile.mkdtemp(prefix="dsurf_pca_", dir=args.tmp))
        try:
            rows.append(run_case(n, parameters, folder))
        finally:
            shutil.rmtree(folder)
        r = rows[-1]
        print(f"{r['checkpoints']} checkpoints × {r['parameters'] / 1e6:.3g} M parameters ({r['files_gb']:.2f} GB): "
              f"{r['seconds']:.1f} s, peak anonymous memory {r['peak_anon_mb']:.0f} MB "
              f"(a matrix of the offsets: {r['matrix_mb']:.0f} MB)", flush=True)  # fmt: skip
    if args.quick:
        return 0
    lines = [
        "# Trajectory PCA: memory and time (cpu)",
        "",
        "Command: `.venv/bin/python benchmarks/pca.py` (2 CPU cores; checkpoints on the local disk, read memory-mapped, "
        "the page cache warm from writing them). Peak: the process's anonymous memory (RssAnon) during the PCA.",
        "",
        "| checkpoints | parameters | files | PCA time | peak memory | offsets as a matrix | n × BLOCK × 8 B |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['checkpoints']} | {r['parameters'] / 1e6:.3g} M | {r['files_gb']:.2f} GB | {r['seconds']:.1f} s | "
            f"{r['peak_anon_mb']:.0f} MB | {r['matrix_mb']:.0f} MB | {r['block_mb']:.0f} MB |"
        )
    out = Path(__file__).resolve().parent / "results" / "pca_cpu.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
