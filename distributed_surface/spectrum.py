"""``dsurf hessian``: the Hessian spectrum at θ0.

The Hessian is that of the mean loss over the train split's counted targets (the first
``--hessian-samples``, or ``--max-samples``), with respect to the parameters with more than one
dimension (``--hessian-params all``: every parameter), in eval mode (:mod:`.core.hessian`). At θ0:
the top ``--top-k`` eigenpairs and the smallest eigenvalue (ARPACK's Lanczos on Hessian-vector
products), the trace (Hutchinson, ``--trace-probes`` vectors, with its standard error) and the spectral
density (stochastic Lanczos quadrature, ``--density-probes`` runs of ``--lanczos-steps``). Under
``mpirun`` every rank holds a contiguous part of the data and every product is summed over the ranks
(an ``Allreduce`` of one parameter vector), so all ranks run the same iterations in step; rank 0 writes
the file.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from .config import RunConfig
from .core.hessian import extreme_eigenpairs, hutchinson_trace, spectral_density
from .errors import UserError
from .hessian_operator import check_twice_differentiable, operator_for
from .problem import check_problem, load_problem, resolve_device


def compute_spectrum(config: RunConfig, world, *, overwrite: bool = False, progress: bool = True) -> str | None:
    """Compute and (rank 0) write the spectrum of ``config``'s problem; return the file written."""
    from .lock import WriterLock
    from .output import check_spectrum_output
    from .runtime import use_threads
    from .storage import write_spectrum

    error, lock = None, None
    if world.rank == 0:
        try:
            check_spectrum_output(config, overwrite=overwrite)
            lock = WriterLock(config.output.out).acquire()
        except UserError as exc:
            error = str(exc)
    error = world.verdict(error)
    if error:
        if lock is not None:
            lock.release()
        raise UserError(error) if world.rank == 0 else SystemExit(2)
    try:
        operator, error = None, None
        threads = use_threads(world.local_size)
        try:
            device = resolve_device(config.evaluation.device, world.local_rank)
            problem = load_problem(config)
            if world.rank == 0:
                check_problem(problem, device, config.data_flags)
            operator = operator_for(config, problem, device, world)
            if not 1 <= config.hessian.top_k < operator.size:
                raise UserError(f"--top-k must be between 1 and {operator.size - 1} (the Hessian's parameters less one), got {config.hessian.top_k}")
        except UserError as exc:
            error = str(exc) if world.rank == 0 else f"rank {world.rank}: {exc}"
        error = world.verdict(error)
        if error:
            raise UserError(error) if world.rank == 0 else SystemExit(2)
        check_twice_differentiable(operator)
        say = (lambda text: print(f"dsurf: {text}", file=sys.stderr, flush=True)) if world.rank == 0 and progress else (lambda text: None)
        say(f"Hessian of the mean loss over {operator.count} targets, {operator.size:,} parameters "
            f"({config.evaluation.hessian_params}), {world.size} rank(s)" + (f"; {threads}" if device.type == "cpu" else ""))  # fmt: skip
        started = time.time()
        top = extreme_eigenpairs(operator, k=config.hessian.top_k, which="LA", tol=config.evaluation.hessian_tol, seed=config.evaluation.seed)
        say(f"top {config.hessian.top_k} eigenvalues: {', '.join(f'{v:.6g}' for v in top.values)} ({top.products} products)")
        bottom = extreme_eigenpairs(operator, k=1, which="SA", tol=config.evaluation.hessian_tol, seed=config.evaluation.seed + 1)
        say(f"smallest eigenvalue: {bottom.values[0]:.6g} ({bottom.products} products)")
        trace, stderr = hutchinson_trace(operator, config.hessian.trace_probes, seed=config.evaluation.seed)
        say(f"trace: {trace:.6g} ± {stderr:.3g} ({config.hessian.trace_probes} probes)")
        density = spectral_density(operator, config.hessian.density_probes, config.hessian.lanczos_steps, seed=config.evaluation.seed)
        say(f"density: {config.hessian.density_probes} Lanczos runs of {config.hessian.lanczos_steps} steps ({time.time() - started:.1f} s in all)")
        if world.rank != 0:
            return None
        vectors = {name: np.stack([operator.split(v)[name].cpu().numpy() for v in top.vectors]) for name in operator.names}
        write_spectrum(
            config.output.out, config_json=config.to_json(), eigenvalues=top.values, eigenvectors=vectors,
            min_eigenvalue=bottom.values[0], trace=trace, trace_stderr=stderr, density_grid=density.grid,
            density=density.density,
            attrs={"parameters": operator.size, "targets": operator.count, "ranks": world.size,
                   "products": operator.products, "seconds": time.time() - started,
                   "torch_version": str(torch.__version__), "hessian_params": config.evaluation.hessian_params},
        )  # fmt: skip
        return config.output.out
    finally:
        if lock is not None:
            lock.release()

