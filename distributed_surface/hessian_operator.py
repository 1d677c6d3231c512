"""The Hessian of a run's problem as an operator (:class:`~.core.hessian.HessianOperator`): over the train
split's first ``--hessian-samples`` (or all), with respect to ``--hessian-params``, at the model's own
weights; under MPI each rank holds a contiguous part of the samples and every product is summed over the
ranks. Used by ``dsurf hessian`` (:mod:`.spectrum`) and by the directions of ``--directions hessian``
(:mod:`.directions.hessian`)."""

from __future__ import annotations

import numpy as np
import torch

from .config import HessianConfig, RunConfig
from .core.hessian import HessianOperator, hessian_parameters
from .core.measurements import TRAIN
from .core.samples import to_device
from .core.errors import UserError, first_line
from .problem import Problem

HESSIAN_BATCH = 256  # samples a batch of Hessian-vector products, where --batch-size does not say


def operator_for(config: RunConfig | HessianConfig, problem: Problem, device: torch.device, world=None) -> HessianOperator:
    """H at the model's own weights over this rank's part of the train split's first samples."""
    samples = problem.splits[TRAIN]
    if config.evaluation.hessian_samples is not None:
        samples = samples.slice(0, min(config.evaluation.hessian_samples, len(samples)))
    count = problem.loss.loss_count(samples.targets)
    rank, size = (world.rank, world.size) if world is not None else (0, 1)
    share = -(-len(samples) // size)
    mine = samples.slice(rank * share, min(len(samples), (rank + 1) * share))
    batch = config.evaluation.batch_size or HESSIAN_BATCH
    batches = []
    for start in range(0, len(mine), batch):
        part = mine.slice(start, min(start + batch, len(mine)))
        batches.append((to_device(part.inputs, device), part.targets.to(device)))
    model = problem.model.to(device).eval()
    try:
        names = hessian_parameters(model, config.evaluation.hessian_params)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    reduce = world.sum if world is not None and world.size > 1 else None
    return HessianOperator(model, names, batches, problem.loss, count, reduce)


def check_twice_differentiable(operator: HessianOperator) -> None:
    """One Hessian-vector product now, so that a loss or model that cannot be differentiated twice
    fails with one line naming the op; before it, the walk of the first gradient's graph for what cuts
    the second derivative without an error (``HessianOperator.second_derivative_cut``)."""
    try:
        cut = operator.second_derivative_cut()
    except Exception as exc:  # noqa: BLE001 - whatever autograd rejects
        raise UserError(f"the loss or the model cannot be differentiated (a gradient at θ0): {first_line(exc)}") from None
    if cut is not None:
        raise UserError(f"the Hessian cannot be computed: the gradient goes through {cut}, so its products would be wrong")
    try:
        product = operator.matvec(np.ones(operator.size) / np.sqrt(operator.size))
    except Exception as exc:  # noqa: BLE001 - whatever torch.func rejects
        raise UserError(
            f"the loss or the model cannot be differentiated twice (Hessian-vector products): {first_line(exc)}"
        ) from None
    if not np.all(np.isfinite(product)):
        raise UserError("a Hessian-vector product at θ0 is not finite: the loss is not twice differentiable there")
