"""The Hessian of the loss, through Hessian-vector products: extreme eigenvalues, trace and spectral
density.

H is the Hessian of the mean loss over a split's counted targets (the measurement the evaluator
reports), with respect to the chosen parameters (by default those with more than one dimension, the
paper's choice), at a point θ, in eval mode. A product H v is the derivative of (the gradient of the
loss summed over each batch) · v, the batches' products summed in float64 and divided by the count
once; ``reduce`` sums them over the ranks that each hold a part of the data (MPI), so every rank sees
the same H v.

- :func:`extreme_eigenpairs`: scipy's ``eigsh`` (ARPACK's implicitly restarted Lanczos) on H as a
  ``LinearOperator``: the top k (``which="LA"``) or the bottom (``"SA"``) eigenpairs, warm-started
  from a given vector where one is at hand (a neighbouring point's eigenvector).
- :func:`hutchinson_trace`: E[zᵀHz] over Rademacher vectors z, with its standard error.
- :func:`spectral_density`: stochastic Lanczos quadrature (Ghorbani et al. 2019; PyHessian): the
  Ritz values and weights of Lanczos runs from random unit vectors, smoothed by a Gaussian.

Note: the paper's own ``hess_vec_prod`` sums the products of each batch's *mean* loss, so its
eigenvalues are the number of batches times those of this H.

torch, numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .losses import Loss, logits_of
from .options import HESSIAN_PARAMS
from .precision import at_least_fp32
from .samples import Inputs


class HessianOperator:
    """H v at the point given to :meth:`at`, for the tensors ``names`` of ``model``.

    ``batches``: the split's batches ``(inputs, targets)`` on the model's device (this rank's part of
    them); ``count``: the targets the loss is averaged over (over all ranks); ``reduce``: sums a float64
    vector over the ranks (None: one rank). Vectors are flat float64 numpy arrays, the tensors' numbers
    one after the other in ``names`` order. ``products`` counts the products computed."""

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        batches: Sequence[tuple[Inputs, torch.Tensor]],
        loss: Loss,
        count: int,
        reduce: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        self.model = model.eval()
        self.names = list(names)
        tensors = dict(model.named_parameters())
        tensors.update(dict(model.named_buffers()))
        missing = [name for name in self.names if name not in tensors]
        if missing:
            raise ValueError(f"the model has no parameter {missing[0]!r}")
        self._own = {name: t.detach() for name, t in tensors.items()}
        self.at({})
        self.shapes = [tuple(tensors[name].shape) for name in self.names]
        self.sizes = [int(np.prod(shape, dtype=np.int64)) for shape in self.shapes]
        self.size = int(sum(self.sizes))
        self.dtype = tensors[self.names[0]].dtype
        self.device = tensors[self.names[0]].device
        self.batches = list(batches)
        self.loss = loss
        self.count = count
        self.reduce = reduce
        self.products = 0

    def at(self, point: Mapping[str, torch.Tensor]) -> "HessianOperator":
        """Products at these values of the model's tensors (parameters and buffers; the others keep the
        model's own)."""
        values = {**self._own, **{name: t.detach() for name, t in point.items()}}
        self._point = {name: values[name] for name in self.names}
        self._fixed = {name: t for name, t in values.items() if name not in self._point}
        return self

    def split(self, vector: np.ndarray) -> dict[str, torch.Tensor]:
        """A flat vector as one tensor per name, on the device in the model's dtype."""
        flat = torch.as_tensor(np.asarray(vector), device=self.device).to(self.dtype)
        pieces = torch.split(flat, self.sizes)
        return {name: piece.reshape(shape) for name, piece, shape in zip(self.names, pieces, self.shapes)}

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
        return torch.cat([tensors[name].detach().reshape(-1).double() for name in self.names]).cpu().numpy()

    def matvec(self, vector: np.ndarray) -> np.ndarray:
        """H v: for each batch, the gradient of (the gradient of the batch's loss sum) · v, by reverse
        mode twice (faster on a CPU than forward-over-reverse, ``torch.func.jvp`` of
        ``torch.func.grad``: benchmarks/results/hessian_cpu.md)."""
        direction = [t for t in self.split(vector).values()]
        total = torch.zeros(self.size, dtype=torch.float64, device=self.device)
        with torch.enable_grad():
            for x, y in self.batches:
                leaves, loss_sum = self._loss_sum(x, y)
                gradient = torch.autograd.grad(loss_sum, leaves, create_graph=True)
                dot = sum((g * v).sum() for g, v in zip(gradient, direction))
                product = torch.autograd.grad(dot, leaves)
                total += torch.cat([p.reshape(-1).double() for p in product])
        result = (total / self.count).cpu().numpy()
        self.products += 1
        return self.reduce(result) if self.reduce is not None else result

    def _loss_sum(self, x: Inputs, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The batch's loss sum at the point, and the point's tensors (leaves that require grad)."""
        point = {name: t.detach().requires_grad_(True) for name, t in self._point.items()}
        values = {**self._fixed, **point}
        if isinstance(x, dict):
            out = torch.func.functional_call(self.model, values, (), x, strict=False)
        else:
            out = torch.func.functional_call(self.model, values, (x,), strict=False)
        loss_sum, _ = self.loss.sums(at_least_fp32(logits_of(out)).unsqueeze(0), y, False)
        return list(point.values()), loss_sum[0]

    def second_derivative_cut(self) -> str | None:
        """What cuts the second derivative on the first batch, in words; None where nothing does.

        A function marked ``@once_differentiable`` (a custom autograd Function without a double backward,
        as many fused kernels are) or an op whose second derivative torch does not implement leaves an
        error node in the graph of the first gradient; the product through it raises nothing and
        silently drops its term (a wrong Hessian). Found by walking that graph, before any product."""
        if not self.batches:
            return None
        x, y = self.batches[0]
        with torch.enable_grad():
            leaves, loss_sum = self._loss_sum(x, y)
            if loss_sum.grad_fn is None:
                return None
            gradient = torch.autograd.grad(loss_sum, leaves, create_graph=True, allow_unused=True)
        cuts = [node for node in _graph(g.grad_fn for g in gradient if g is not None) if node.name() in _CUTTING_NODES]
        if not cuts:
            return None
        marked = sorted({node._forward_cls.__name__ for node in _graph([loss_sum.grad_fn])
                         if isinstance(node, torch.autograd.function.BackwardCFunction) and _once_differentiable(node._forward_cls)})  # fmt: skip
        if marked:
            return f"{', '.join(marked)} (a custom autograd Function marked @once_differentiable: it has no second derivative)"
        return "an operation whose second derivative torch does not implement"

    def linear_operator(self):
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator((self.size, self.size), matvec=self.matvec, dtype=np.float64)


# The nodes autograd puts where a second derivative is cut: once_differentiable's delayed error, and an op
# whose derivative is not implemented.
_CUTTING_NODES = ("torch::autograd::Error", "torch::autograd::NotImplemented")


def _graph(roots) -> list:
    """Every node of the autograd graphs below ``roots``."""
    seen, stack, nodes = set(), [root for root in roots if root is not None], []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        nodes.append(node)
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return nodes


def _once_differentiable(function: type) -> bool:
    """Whether a custom autograd Function's backward is wrapped by ``torch.autograd.function.once_differentiable``."""
    backward = getattr(function, "backward", None)
    code = getattr(backward, "__code__", None)
    return hasattr(backward, "__wrapped__") and code is not None and code.co_filename == torch.autograd.function.__file__


@dataclass
class Eigenpairs:
    """Eigenvalues (descending) with unit eigenvectors (rows), and the products it took."""

    values: np.ndarray
    vectors: np.ndarray
    products: int


def extreme_eigenpairs(
    operator: HessianOperator, k: int = 1, which: str = "LA", tol: float = 1e-6, start: np.ndarray | None = None,
    seed: int = 0, max_products: int | None = None,
) -> Eigenpairs:
    """The ``k`` largest (``which="LA"``) or smallest (``"SA"``) eigenpairs of H, by ARPACK's Lanczos,
    from ``start`` (default: a seeded random vector). ``tol``: ARPACK's relative accuracy."""
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    if not 1 <= k < operator.size:
        raise ValueError(f"k must be between 1 and {operator.size - 1} (the parameters less one), got {k}")
    v0 = start if start is not None else np.random.default_rng(seed).standard_normal(operator.size)
    before = operator.products
    ncv = min(operator.size, max(2 * k + 1, 20))
    try:
        values, vectors = eigsh(operator.linear_operator(), k=k, which=which, tol=tol, v0=v0, ncv=ncv,
                                maxiter=None if max_products is None else max(1, max_products // ncv))  # fmt: skip
    except ArpackNoConvergence as exc:  # what it has, within the limit
        values, vectors = exc.eigenvalues, exc.eigenvectors
        if not len(values):
            raise
    order = np.argsort(values)[::-1]
    return Eigenpairs(values[order], vectors[:, order].T, operator.products - before)


def hutchinson_trace(operator: HessianOperator, probes: int = 64, seed: int = 0) -> tuple[float, float]:
    """tr(H) ≈ the mean of zᵀHz over ``probes`` Rademacher vectors z, and its standard error."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(probes):
        z = rng.choice([-1.0, 1.0], size=operator.size)
        samples.append(float(z @ operator.matvec(z)))
    samples = np.asarray(samples)
    return float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(probes)) if probes > 1 else float("nan")


def lanczos(operator: HessianOperator, start: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The tridiagonal T (its diagonal α and off-diagonal β) of ``steps`` Lanczos steps from ``start``,
    with full reorthogonalisation (the basis is kept: steps × parameters float64)."""
    basis = np.zeros((steps, operator.size))
    alphas, betas = [], []
    v = start / np.linalg.norm(start)
    previous, beta = np.zeros_like(v), 0.0
    for j in range(steps):
        basis[j] = v
        w = operator.matvec(v) - beta * previous
        alpha = float(w @ v)
        w -= alpha * v
        w -= basis[: j + 1].T @ (basis[: j + 1] @ w)  # against every earlier vector
        alphas.append(alpha)
        beta = float(np.linalg.norm(w))
        if j == steps - 1 or beta < 1e-10 * max(1.0, abs(alpha)):
            break
        betas.append(beta)
        previous, v = v, w / beta
    return np.asarray(alphas), np.asarray(betas)


@dataclass
class Density:
    """The spectral density ``density`` on ``grid`` (it integrates to 1), and the quadrature's nodes
    and weights of each probe."""

    grid: np.ndarray
    density: np.ndarray
    nodes: list[np.ndarray]
    weights: list[np.ndarray]


def spectral_density(
    operator: HessianOperator, probes: int = 4, steps: int = 60, points: int = 1000, sigma: float | None = None, seed: int = 0
) -> Density:
    """Stochastic Lanczos quadrature: for each random unit vector v, the eigenvalues θ_j of the Lanczos
    matrix T and weights τ_j = (first component of T's eigenvector)² estimate vᵀ f(H) v; their average
    over the probes, each node smoothed by a Gaussian of width ``sigma`` (default: 1% of the span),
    is the density."""
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    for _ in range(probes):
        alphas, betas = lanczos(operator, rng.standard_normal(operator.size), min(steps, operator.size))
        theta, vectors = np.linalg.eigh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
        nodes.append(theta)
        weights.append(vectors[0] ** 2)
    low = min(n.min() for n in nodes)
    high = max(n.max() for n in nodes)
    span = high - low if high > low else max(abs(high), 1.0)
    width = sigma if sigma is not None else 0.01 * span
    grid = np.linspace(low - 0.05 * span - 3 * width, high + 0.05 * span + 3 * width, points)
    density = np.zeros_like(grid)
    for theta, tau in zip(nodes, weights):
        density += (tau[None, :] * np.exp(-((grid[:, None] - theta[None, :]) ** 2) / (2 * width**2))).sum(axis=1)
    density /= probes * width * np.sqrt(2 * np.pi)
    return Density(grid, density, nodes, weights)


def hessian_parameters(model: nn.Module, which: str = "weights") -> list[str]:
    """The parameters the Hessian is taken over: those with more than one dimension (``"weights"``,
    the paper's choice: no biases or norm layers), or every floating parameter (``"all"``)."""
    if which not in HESSIAN_PARAMS:
        raise ValueError(f"unknown Hessian parameters {which!r}; expected one of {', '.join(HESSIAN_PARAMS)}")
    names = [n for n, p in model.named_parameters() if p.is_floating_point() and (which == "all" or p.dim() > 1)]
    if not names:
        raise ValueError("the model has no parameter with more than one dimension to take the Hessian over"
                         if which == "weights" else "the model has no parameters")  # fmt: skip
    return names


@dataclass
class ExtremePair:
    """H's largest and smallest eigenvalues, their unit eigenvectors, and the products they took."""

    largest: float
    smallest: float
    top_vector: np.ndarray
    bottom_vector: np.ndarray
    products: int


# Lanczos steps a run takes at least: a residual is small for some eigenpair of the Krylov space, and
# the space must be large enough for that to be the extreme one (the warm start's neighbour has rotated).
MIN_STEPS = 8


def extreme_pair(
    operator: HessianOperator, start: np.ndarray | None = None, tol: float = 1e-3, max_steps: int = 200, seed: int = 0
) -> ExtremePair:
    """λmax and λmin of H from one Lanczos run (full reorthogonalisation), both ends at once: stopped
    where each end's Ritz residual β·|s_last| is below ``tol`` × the spectrum's scale (max |θ|), after
    at least ``MIN_STEPS`` steps: each eigenvalue is then within ``tol`` × scale of an eigenvalue of H
    (and usually within ``tol``² × scale² / gap). From ``start`` (a neighbouring
    point's two eigenvectors, summed) where given: the Krylov space then holds both ends from the
    start, and few steps are needed."""
    v = start if start is not None else np.random.default_rng(seed).standard_normal(operator.size)
    steps = min(max_steps, operator.size)
    basis = np.zeros((steps, operator.size))
    alphas, betas = [], []
    v = v / np.linalg.norm(v)
    previous, beta = np.zeros_like(v), 0.0
    before = operator.products
    for j in range(steps):
        basis[j] = v
        w = operator.matvec(v) - beta * previous
        alpha = float(w @ v)
        w -= alpha * v
        w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        alphas.append(alpha)
        beta = float(np.linalg.norm(w))
        theta, vectors = np.linalg.eigh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
        scale = max(abs(theta[0]), abs(theta[-1]), 1e-30)
        converged = beta * abs(vectors[-1, -1]) <= tol * scale and beta * abs(vectors[-1, 0]) <= tol * scale
        if (j + 1 >= min(MIN_STEPS, steps) and converged) or j == steps - 1 or beta < 1e-12 * scale:
            break
        betas.append(beta)
        previous, v = v, w / beta
    used = basis[: len(alphas)]
    top, bottom = used.T @ vectors[:, -1], used.T @ vectors[:, 0]
    return ExtremePair(float(theta[-1]), float(theta[0]), top / np.linalg.norm(top), bottom / np.linalg.norm(bottom),
                       operator.products - before)  # fmt: skip
