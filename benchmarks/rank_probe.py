"""``dsurf`` with a probe: runs ``distributed_surface.cli.main`` exactly as the ``dsurf`` console script
does, and at exit writes this rank's measurements to ``$DSURF_PROBE_DIR/rank<R>.json``:

- ``peak_rss_mib``: the process's peak resident memory; ``cpu_s``: its CPU time; ``wall_s``;
- ``coordinator_cpu_s`` / ``coordinator_wall_s`` (rank 0): CPU and wall time of the engine's coordinator
  (its ``_coordinate`` function is wrapped, nothing else changes): the coordinator's cost.

    mpirun -np 8 .venv/bin/python benchmarks/rank_probe.py run --model ... --out s.h5
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path


def main() -> int:
    started, record = time.time(), {}
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMIX_RANK", "0")))
    record["rank"] = rank
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        _wrap_coordinator(record)
    from distributed_surface import cli

    code = 1
    try:
        code = cli.main(sys.argv[1:])
    finally:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        record.update({
            "peak_rss_mib": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
            "wall_s": time.time() - started, "exit_code": code,
        })  # fmt: skip
        directory = os.environ.get("DSURF_PROBE_DIR")
        if directory:
            Path(directory).mkdir(parents=True, exist_ok=True)
            (Path(directory) / f"rank{rank}.json").write_text(json.dumps(record))
    return code


def _wrap_coordinator(record: dict) -> None:
    from distributed_surface.engine import mpi as engine

    real = getattr(engine, "_coordinate", None)
    if real is None:
        record["coordinator"] = "engine has no _coordinate: not measured"
        return

    def timed(*args, **kwargs):
        wall, cpu = time.time(), time.thread_time()
        try:
            return real(*args, **kwargs)
        finally:
            record["coordinator_cpu_s"] = time.thread_time() - cpu
            record["coordinator_wall_s"] = time.time() - wall

    engine._coordinate = timed


if __name__ == "__main__":
    sys.exit(main())
