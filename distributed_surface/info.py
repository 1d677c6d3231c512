"""``dsurf info``: what a surface file holds, as text."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from . import hf
from .core.curves import loss_barriers
from .core.measurements import ordered, quantity_of
from .storage import Status, SurfaceData, read_surface
from .storage.lock import describe, holder


def effective_status(data: SurfaceData) -> str:
    """The file's status, where a file left "running" by a run that is gone (killed without warning:
    no live run holds its lock) is "interrupted", as a run that stopped on a signal leaves it."""
    if data.status == Status.RUNNING and holder(data.path) is None:
        return Status.INTERRUPTED
    return data.status


def describe_spectrum(path: str) -> str:
    """A Hessian spectrum file, as text."""
    from .storage import read_spectrum

    spectrum = read_spectrum(path)
    attrs = spectrum.attrs
    lines = [
        f"file:       {path}",
        f"Hessian of the mean loss over {attrs.get('targets')} targets, {attrs.get('parameters')} parameters "
        f"({attrs.get('hessian_params')}), {attrs.get('ranks')} rank(s), {attrs.get('products')} products, "
        f"{float(attrs.get('seconds', 0)):.1f} s",
        "top eigenvalues: " + ", ".join(f"{v:.6g}" for v in spectrum.eigenvalues),
        f"smallest:   {spectrum.min_eigenvalue:.6g}",
        f"trace:      {spectrum.trace:.6g} ± {spectrum.trace_stderr:.3g} (Hutchinson's standard error)",
        f"density:    {len(spectrum.density_grid)} points from {spectrum.density_grid[0]:.4g} to {spectrum.density_grid[-1]:.4g}",
        f"created:    {attrs.get('created')}",
        "config:",
    ]
    lines += [f"  {key} = {value!r}" for key, value in sorted(spectrum.config.items())]
    return "\n".join(lines)


def describe_surface(path: str) -> str:
    """A human-readable summary: status, progress, grid, config, runs and timings per rank."""
    from .storage import is_spectrum

    if is_spectrum(path):
        return describe_spectrum(path)
    data = read_surface(path)
    done, total = data.progress
    owner = holder(path) if data.status == Status.RUNNING else None
    if data.status != Status.RUNNING:
        status = data.status
    elif owner is not None:
        status = f"{Status.RUNNING} ({describe(owner)})"
    else:
        status = f"{Status.INTERRUPTED} (its last run was killed without warning: --resume continues it)"
    lines = [
        f"file:      {path}",
        f"status:    {status}",
        f"progress:  {done}/{total} points done ({100.0 * done / total:.1f}%)",
        f"grid:      {_grid(data)}",
        f"samples:   {data.attrs.get('num_samples')} per point",
        f"created:   {data.attrs.get('created')}   updated: {data.attrs.get('updated')}",
        f"versions:  distributed_surface {data.attrs.get('distributed_surface_version')}, "
        f"torch {data.attrs.get('torch_version')}, h5py {data.attrs.get('h5py_version')}",
    ]
    lines += _measurements(data)
    lines += _directions(data)
    lines.append("config:")
    lines += [f"  {key} = {value!r}" for key, value in sorted(data.config.items())]
    lines += _runs(data, alive=owner is not None) + _timings(data)
    return "\n".join(lines)


def _directions(data: SurfaceData) -> list[str]:
    """What the directions are and where they came from, as their kind recorded it."""
    frame = data.frame
    text = str(frame.get("kind", "?"))
    if frame.get("description"):
        text += f" ({frame['description']})"
    sources = frame.get("sources", [])
    if sources:
        shown = [f"{s['path']} ({s['role']}, sha256 {s['sha256'][:12]})" for s in sources[:3]]
        text += ": " + "; ".join(shown) + (f"; and {len(sources) - 3} more" if len(sources) > 3 else "")
    lines = [f"directions: {text}" + (f", dir-type {frame['dir_type']}" if frame.get("dir_type") else "")]
    if frame.get("params"):
        lines.append(f"  only parameters matching {frame['params']!r} move")
    ratios = frame.get("explained_variance_ratio")
    if ratios is not None:
        lines.append("  explained variance: " + ", ".join(f"PC{k + 1} {100 * r:.1f}%" for k, r in enumerate(np.ravel(ratios))))
    for label, value in loss_barriers(data.x, data.curve, data.metrics, data.frame.get("curves")).items():
        lines.append(f"  barrier along the {label}: {value:.6g} (the highest loss minus the mean of its ends)")
    if data.points is not None:
        lines.append(f"  evaluated at {len(data.points)} listed points")
    return lines


def _measurements(data: SurfaceData) -> list[str]:
    """Every stored measurement with the range of its computed values; a language model's token loss
    also with its perplexity, at the minimum and at θ0 (:func:`has_perplexity`)."""
    lines = ["measurements:"]
    done = data.done.astype(bool)
    width = max((len(name) for name in data.metrics), default=0)
    perplexity = has_perplexity(data.config)
    for name in ordered(data.metrics):
        values = np.asarray(data.metrics[name])[done]
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        if finite.size:
            extra = f" ({values.size - finite.size} not finite)" if finite.size < values.size else ""
            if perplexity and quantity_of(name) == "loss":
                lines.append(f"  {name:<{width}}  min {finite.min():.6g} (perplexity {_exp(finite.min())}), "
                             f"max {finite.max():.6g}{extra}{_at_theta0(data, name)}")  # fmt: skip
            else:
                lines.append(f"  {name:<{width}}  min {finite.min():.6g}, max {finite.max():.6g}{extra}")
        else:
            lines.append(f"  {name:<{width}}  nothing computed yet" if not values.size else f"  {name:<{width}}  no finite value")
    return lines


def has_perplexity(config: dict) -> bool:
    """Whether the file's loss is a language model's mean cross-entropy per token, whose exp is the
    model's perplexity: ``causal_lm`` (the next token's), or ``cross_entropy`` for a masked LM (the
    masked tokens'). Not for other losses, nor for a classifier's cross-entropy (its targets are not
    tokens)."""
    loss, task = config.get("loss"), config.get("hf_task")
    return loss == "causal_lm" or (loss == "cross_entropy" and task == hf.MASKED_LM)


def _exp(loss: float) -> str:
    with np.errstate(over="ignore"):
        return f"{float(np.exp(np.float64(loss))):.6g}"


def _at_theta0(data: SurfaceData, name: str) -> str:
    """``; at θ0 L (perplexity P)`` where the points include θ0 (every offset 0) and it is computed."""
    if data.points is not None:
        hits = np.flatnonzero(np.all(np.asarray(data.points) == 0, axis=1))
        index = (int(hits[0]),) if hits.size else None
    else:
        axes = [data.x] if data.y is None else [data.x, data.y]
        where = [np.flatnonzero(np.asarray(axis) == 0) for axis in axes]
        index = tuple(int(w[0]) for w in where) if all(w.size for w in where) else None
    if index is None or not data.done[index]:
        return ""
    value = float(np.asarray(data.metrics[name])[index])
    return f"; at θ0 {value:.6g} (perplexity {_exp(value)})" if np.isfinite(value) else ""


def _grid(data: SurfaceData) -> str:
    x = f"x {data.x[0]:g}..{data.x[-1]:g} ({len(data.x)})"
    return x if data.y is None else f"{x} × y {data.y[0]:g}..{data.y[-1]:g} ({len(data.y)})"


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


def _runs(data: SurfaceData, alive: bool) -> list[str]:
    lines = [f"runs:      {len(data.runs)}"]
    for k, run in enumerate(data.runs):
        status = run["status"].decode()
        if status == Status.RUNNING and (k < len(data.runs) - 1 or not alive):
            status = "killed"  # a later run started, or no run holds the file: this one never closed it
        lines.append(
            f"  run {int(run['index']) if 'index' in (run.dtype.names or ()) else k}: {_stamp(run['start'])} -> {_stamp(run['end'])}  {status}, "
            f"{run['ranks']} rank(s), {run['mode'].decode()} on {run['host'].decode()}"
        )
    return lines


PLACEMENT_WORDS = {"device": "data on the device", "host": "data in host memory", "stream": "data streamed"}


def _timings(data: SurfaceData) -> list[str]:
    t = data.timings
    if not t.size:
        return ["timings:   none yet"]
    points, seconds = int(t["points"].sum()), float(t["seconds"].sum())
    lines = [
        f"timings:   {len(t)} chunks, {points} points, {seconds:.2f} s of evaluation "
        f"({points / seconds if seconds else float('nan'):.2f} points/s)"
    ]
    per_rank = defaultdict(lambda: [0, 0, 0.0, set()])
    names = t.dtype.names or ()
    for record in t:
        entry = per_rank[int(record["rank"])]
        entry[0] += 1
        entry[1] += int(record["points"])
        entry[2] += float(record["seconds"])
        how = [f"{int(record['threads'])} thread(s)"] if "threads" in names and record["threads"] and record["device"] == b"cpu" else []
        placement = record["placement"].decode() if "placement" in names else ""
        how += [PLACEMENT_WORDS.get(placement, placement)] if placement else []
        entry[3].add(f"{record['host'].decode()}/{record['device'].decode()}" + (f" ({', '.join(how)})" if how else ""))
    for rank in sorted(per_rank):
        chunks, pts, secs, where = per_rank[rank]
        lines.append(f"  rank {rank}: {chunks} chunks, {pts} points, {secs:.2f} s on {', '.join(sorted(where))}")
    return lines
