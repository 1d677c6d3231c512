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

from .config import HessianConfig
from .core.hessian import HessianOperator, extreme_eigenpairs, hutchinson_trace, spectral_density
from .core.errors import UserError
from .hessian_operator import check_twice_differentiable, operator_for
from .problem import check_problem, load_problem, resolve_device


class SpectrumTask:
    """``dsurf hessian`` as the engine runs it (:mod:`.engine.task`): rank 0 checks the output and takes
    its lock; every rank loads the problem and its part of the data; every rank computes in step; rank
    0 writes the file."""

    def __init__(self, config: HessianConfig, *, overwrite: bool = False):
        self.config = config
        self.overwrite = overwrite
        self._lock = None

    def prepare(self) -> None:
        from .output import check_spectrum_output
        from .storage import take_lock

        check_spectrum_output(self.config, overwrite=self.overwrite)
        self._lock = take_lock(self.config.output.out)

    def load(self, world) -> tuple[HessianOperator, torch.device]:
        config = self.config
        device = resolve_device(config.evaluation.device, world.local_rank)
        problem = load_problem(config)
        if world.rank == 0:
            check_problem(problem, device, config.data_flags)
        operator = operator_for(config, problem, device, world)
        if not 1 <= config.hessian.top_k < operator.size:
            raise UserError(f"--top-k must be between 1 and {operator.size - 1} (the Hessian's parameters less one), got {config.hessian.top_k}")
        return operator, device

    def compute(self, loaded: tuple[HessianOperator, torch.device], world, say) -> dict[str, object]:
        config = self.config
        operator, device = loaded
        check_twice_differentiable(operator)
        say(f"Hessian of the mean loss over {operator.count} targets, {operator.size:,} parameters "
            f"({config.evaluation.hessian_params}), {world.size} rank(s)" + (f"; {world.threads}" if device.type == "cpu" else ""))  # fmt: skip
        started = time.time()
        top = extreme_eigenpairs(operator, k=config.hessian.top_k, which="LA", tol=config.evaluation.hessian_tol, seed=config.evaluation.seed)
        say(f"top {config.hessian.top_k} eigenvalues: {', '.join(f'{v:.6g}' for v in top.values)} ({top.products} products)")
        bottom = extreme_eigenpairs(operator, k=1, which="SA", tol=config.evaluation.hessian_tol, seed=config.evaluation.seed + 1)
        say(f"smallest eigenvalue: {bottom.values[0]:.6g} ({bottom.products} products)")
        trace, stderr = hutchinson_trace(operator, config.hessian.trace_probes, seed=config.evaluation.seed)
        say(f"trace: {trace:.6g} ± {stderr:.3g} ({config.hessian.trace_probes} probes)")
        density = spectral_density(operator, config.hessian.density_probes, config.hessian.lanczos_steps, seed=config.evaluation.seed)
        say(f"density: {config.hessian.density_probes} Lanczos runs of {config.hessian.lanczos_steps} steps ({time.time() - started:.1f} s in all)")
        return {"operator": operator, "top": top, "bottom": bottom, "trace": trace, "stderr": stderr, "density": density,
                "ranks": world.size, "seconds": time.time() - started}  # fmt: skip

    def write(self, result: dict[str, object]) -> str:
        from .storage import write_spectrum

        config, operator, top = self.config, result["operator"], result["top"]
        vectors = {name: np.stack([operator.split(v)[name].cpu().numpy() for v in top.vectors]) for name in operator.names}
        write_spectrum(
            config.output.out, config_json=config.to_json(), eigenvalues=top.values, eigenvectors=vectors,
            min_eigenvalue=result["bottom"].values[0], trace=result["trace"], trace_stderr=result["stderr"],
            density_grid=result["density"].grid, density=result["density"].density,
            attrs={"parameters": operator.size, "targets": operator.count, "ranks": result["ranks"],
                   "products": operator.products, "seconds": result["seconds"],
                   "torch_version": str(torch.__version__), "hessian_params": config.evaluation.hessian_params},
        )  # fmt: skip
        return config.output.out

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def compute_spectrum(config: HessianConfig, *, overwrite: bool = False, progress: bool = True) -> str | None:
    """Compute the spectrum of ``config``'s problem, in this process or on every MPI rank, and write it
    (rank 0); return the file written (rank 0), None on the other ranks."""
    from .engine.task import run_task

    return run_task(SpectrumTask(config, overwrite=overwrite), progress=progress)
