"""Curvature as a measurement of every point: the extreme eigenvalues of the loss's Hessian, next to
the loss and accuracy (the paper's Fig. 7 maps of λmax, λmin and |λmin/λmax|).

:class:`CurvatureEvaluator` wraps a :class:`~.evaluate.SurfaceEvaluator`: it declares the same
measurements and ``train_hess_max``, ``train_hess_min`` and ``train_hess_products`` (the Hessian-vector
products the two eigenvalues took), and evaluates a chunk of points with the wrapped evaluator, then
each point's two eigenvalues at the point's weights, both from one Lanczos run
(:func:`~.hessian.extreme_pair`). Each point's run starts from the two eigenvectors of the point before
it in the chunk: chunks are runs of neighbouring points, so the warm start saves products.

torch, numpy and scipy only.
"""

from __future__ import annotations

import numpy as np
import torch

from .evaluate import SurfaceEvaluator
from .hessian import HessianOperator, extreme_pair, hessian_parameters
from .measurements import TRAIN, Measurement, measurement_name

QUANTITIES = ("hess_max", "hess_min", "hess_products")


class CurvatureEvaluator:
    """The wrapped evaluator's measurements, and the Hessian's largest and smallest eigenvalues of the
    train split's mean loss over its first ``samples`` samples (None: all), with respect to the
    parameters ``params`` selects (see :func:`~.hessian.hessian_parameters`), to ARPACK's relative
    accuracy ``tol``."""

    def __init__(self, evaluator: SurfaceEvaluator, *, samples: int | None = None, params: str = "weights",
                 tol: float = 1e-3, seed: int = 0):  # fmt: skip
        self.evaluator = evaluator
        self.device = evaluator.device
        names = hessian_parameters(evaluator.model, params)
        batches = evaluator.train_batches(samples)
        count = evaluator.loss.loss_count(torch.cat([y for _, y in batches]).cpu())
        self.operator = HessianOperator(evaluator.model, names, [(x, y) for x, y in batches], evaluator.loss, count)
        self.tol = tol
        self.seed = seed
        self.measurements = list(evaluator.measurements) + [
            Measurement(measurement_name(TRAIN, "hess_max")),
            Measurement(measurement_name(TRAIN, "hess_min")),
            Measurement(measurement_name(TRAIN, "hess_products"), "i8"),
        ]

    @property
    def plan(self):
        return self.evaluator.plan

    @property
    def splits(self):
        return self.evaluator.splits

    @property
    def placement(self) -> str:
        return self.evaluator.placement

    def evaluate(self, offsets: np.ndarray) -> dict[str, np.ndarray]:
        offsets = np.atleast_2d(np.asarray(offsets, dtype=np.float64))
        values = self.evaluator.evaluate(offsets)
        top, bottom, products = np.empty(len(offsets)), np.empty(len(offsets)), np.empty(len(offsets), dtype=np.int64)
        start = None
        for k, offset in enumerate(offsets):
            self.operator.at(self.evaluator.point(offset))
            pair = extreme_pair(self.operator, start, self.tol, seed=self.seed)
            top[k], bottom[k], products[k] = pair.largest, pair.smallest, pair.products
            start = pair.top_vector + pair.bottom_vector  # the next point starts from both ends
        values[measurement_name(TRAIN, "hess_max")] = top
        values[measurement_name(TRAIN, "hess_min")] = bottom
        values[measurement_name(TRAIN, "hess_products")] = products
        return values
