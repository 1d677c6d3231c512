"""The principal directions of a training trajectory, as the paper's ``setup_PCA_directions`` finds
them (scikit-learn's ``PCA(n_components=2)`` on the checkpoints' offsets θ_i − θ0), computed without
ever forming a parameters × parameters matrix, or even the n × parameters matrix of offsets.

With X the n × P matrix of offsets (rows θ_i − θ0, the tensors that do not move left out) and C = X
centred by its mean row, PCA's components are the top eigenvectors of CᵀC. They follow from the
n × n Gram matrix: if C Cᵀ u = λ u, then v = Cᵀ u / √λ is a unit eigenvector of CᵀC with the same λ,
and Cᵀ u = Xᵀ u because u is orthogonal to the all-ones vector. So two streaming passes over the
tensors suffice: one to accumulate G = X Xᵀ (centred afterwards), one to form v = Xᵀ u / √λ. Each
pass reads every tensor of every checkpoint once, a block of at most ``block`` numbers at a time, so
the memory is n × block, whatever the model's size. Explained variance ratios are λ_k / trace(C Cᵀ),
scikit-learn's; signs follow scikit-learn's ``svd_flip`` (the largest-magnitude entry of each component
positive); each checkpoint's projection is ⟨θ_i − θ0, v_k⟩ (the paper's ``project_2D``, which is its
least-squares solution for orthonormal directions), read off the Gram matrix: X v = G u / √λ.

torch and numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .directions import Direction

# Numbers of one tensor read at a time per checkpoint: n × BLOCK float64 numbers in memory (200
# checkpoints: 400 MB).
BLOCK = 2**18


@dataclass
class TrajectoryPCA:
    """The first ``k`` principal directions (unit vectors, one tensor per name of θ0, zero where nothing
    moves), their explained variance ratios, and every checkpoint's coordinates (n, k) along them."""

    directions: list[Direction]
    explained_variance_ratio: np.ndarray
    projections: np.ndarray


def trajectory_pca(
    base: Mapping[str, torch.Tensor],
    checkpoints: Sequence[Mapping[str, torch.Tensor]],
    moving: Callable[[str, torch.Tensor], bool],
    k: int = 2,
    block: int = BLOCK,
) -> TrajectoryPCA:
    """PCA of the offsets ``checkpoints[i] − base`` over the tensors ``moving(name, tensor)`` accepts.
    The checkpoints' tensors are read block by block (memory-mapped ones stay on disk until read)."""
    n = len(checkpoints)
    if n < 2:
        raise ValueError(f"PCA of a trajectory needs at least 2 checkpoints, got {n}")
    names = [name for name, tensor in base.items() if moving(name, tensor)]
    if not names:
        raise ValueError("no tensor moves: nothing to find directions in")

    buffer = torch.empty(n, min(block, max(base[name].numel() for name in names)), dtype=torch.float64)

    def blocks():
        """(name, start, stop, offsets (n, stop − start)): every moving tensor, a block at a time, in one
        reused buffer (each checkpoint's numbers copied straight into it)."""
        for name in names:
            flat = base[name].detach().reshape(-1)
            for start in range(0, flat.numel(), block):
                stop = min(start + block, flat.numel())
                x = buffer[:, : stop - start]
                for row, checkpoint in zip(x, checkpoints):
                    row.copy_(checkpoint[name].detach().reshape(-1)[start:stop])
                x -= flat[start:stop].double()
                yield name, start, stop, x

    gram = torch.zeros(n, n, dtype=torch.float64)
    for _, _, _, x in blocks():
        gram += x @ x.T
    centre = torch.eye(n, dtype=torch.float64) - 1.0 / n
    centred = centre @ gram @ centre
    values, vectors = torch.linalg.eigh(centred)
    order = torch.argsort(values, descending=True)
    values, vectors = values[order], vectors[:, order]
    total = float(values.clamp(min=0).sum())
    rank = int((values > total * 1e-12).sum()) if total > 0 else 0
    if rank < k:
        raise ValueError(f"the checkpoints' offsets span {rank} dimension(s): {k} principal directions need more")
    values, vectors = values[:k], vectors[:, :k]
    scale = values.sqrt()

    components = {name: torch.zeros(k, base[name].numel(), dtype=torch.float64) for name in names}
    for name, start, stop, x in blocks():
        components[name][:, start:stop] = (vectors.T @ x) / scale[:, None]
    # scikit-learn's svd_flip: the entry of largest magnitude in each component is positive
    largest = torch.stack([torch.stack([c[j].abs().max() for c in components.values()]).max() for j in range(k)])
    signs = torch.ones(k, dtype=torch.float64)
    for j in range(k):
        for c in components.values():
            position = int(c[j].abs().argmax())
            if c[j, position].abs() == largest[j]:
                signs[j] = torch.sign(c[j, position])
                break
    directions = []
    for j in range(k):
        direction = {}
        for name, tensor in base.items():
            if name in components:
                direction[name] = (signs[j] * components[name][j]).reshape(tensor.shape).to(tensor.dtype)
            else:
                direction[name] = torch.zeros(tuple(tensor.shape), dtype=tensor.dtype)
        directions.append(direction)
    projections = (gram @ vectors) / scale * signs
    return TrajectoryPCA(directions, (values / total).numpy(), projections.numpy())
