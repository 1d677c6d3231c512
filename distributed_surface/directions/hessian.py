"""``--directions hessian``: the Hessian's top two eigenvectors at θ0 (ARPACK's Lanczos on
Hessian-vector products, :mod:`...hessian_operator`), as directions over θ0's tensors (zero where the
Hessian is not taken), normalised by ``--norm`` as random directions are. Every rank that makes them
computes the same ones (the whole train split's part, the same seed)."""

from __future__ import annotations

import sys

from .base import DirectionKind, Made


class HessianEigenvectors(DirectionKind):
    name = "hessian"

    def make(self, config, problem, base, ndim, device) -> Made:
        import torch

        from ..core.directions import normalize_direction
        from ..core.hessian import extreme_eigenpairs
        from ..hessian_operator import check_twice_differentiable, operator_for

        operator = operator_for(config, problem, device)
        check_twice_differentiable(operator)
        top = extreme_eigenpairs(operator, k=2, which="LA", tol=config.evaluation.hessian_tol, seed=config.evaluation.seed)
        print(f"dsurf: directions: the Hessian's top eigenvectors at θ0 (eigenvalues {top.values[0]:.6g}, "
              f"{top.values[1]:.6g}; {top.products} products)", file=sys.stderr)  # fmt: skip
        base = {name: t.detach().cpu() for name, t in base.items()}
        directions = []
        for vector in top.vectors:
            pieces = {name: t.cpu() for name, t in operator.split(vector).items()}
            direction = {name: pieces.get(name, torch.zeros_like(t)).to(t.dtype) for name, t in base.items()}
            directions.append(normalize_direction(direction, base, config.directions.norm, config.directions.ignore))
        values = [float(v) for v in top.values[:2]]
        return Made(
            directions=directions,
            description=f"the Hessian's top eigenvectors at θ0, eigenvalues {values[0]:.4g} and {values[1]:.4g}, "
            f"{config.directions.norm}-normalised",
            axis_labels=[f"x: along the top eigenvector (λ1 = {values[0]:.4g})", f"y: along the second (λ2 = {values[1]:.4g})"],
            short_labels=["x (along v1)", "y (along v2)"],
            record={"norm": config.directions.norm, "ignore": config.directions.ignore, "seed": config.evaluation.seed,
                    "hessian_params": config.evaluation.hessian_params, "hessian_samples": config.evaluation.hessian_samples or 0,
                    "eigenvalues": values},  # fmt: skip
        )
