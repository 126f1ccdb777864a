"""The memory bank's coreset: greedy k-center selection on a seeded random projection (PatchCore, section 3.2).

Greedy k-center (Sener & Savarese 2018, the `KCenterGreedy` of the paper and of anomalib): start from one seeded
random patch, then repeatedly add the patch farthest from every patch chosen so far, so that the chosen k patches
cover all of them with the smallest radius the greedy rule finds (within twice the optimum). Distances are taken
on a Johnson-Lindenstrauss random projection of the features to `projection_dim` dimensions (a seeded Gaussian
matrix scaled by 1/sqrt(dim); the paper projects to 128; anomalib uses a sparse projection), which keeps the
selection cheap; the bank keeps the chosen patches' full features.

Arithmetic: the projection in float64, the selection on its float32 copy: each step is one float32
matrix-vector product (|x|^2 - 2 x.c + |c|^2) over all patches, memory-bound, so float32 halves its time (the
step dominates fitting: k steps over N patches). It is deterministic wherever the BLAS kernels are pinned
(docs/determinism.md); float32 rounding can only reorder near-ties of the greedy rule, which changes which of two
equally far patches joins the bank, not the bank's quality. A chosen patch is never chosen again, and ties go to
the lowest index (numpy's argmax).
"""
from __future__ import annotations

import numpy as np

from vapm.core.errors import VapmError


class CoresetError(VapmError, ValueError):
    """A coreset that cannot be selected as asked."""


def coreset_size(n_patches: int, fraction: float, max_size: int) -> int:
    """round(fraction x n), at least 1, at most `max_size` and n."""
    if not 0 < fraction <= 1:
        raise CoresetError(f"the coreset fraction must lie in (0, 1], got {fraction}")
    if n_patches < 1:
        raise CoresetError("no patches to select a coreset from")
    return int(max(1, min(round(fraction * n_patches), max_size, n_patches)))


def random_projection(features: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """float64 (N, dim) Gaussian random projection (seeded); the features themselves when they have <= dim columns."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise CoresetError(f"features must be (N, D), got {x.shape}")
    if x.shape[1] <= dim:
        return x
    matrix = np.random.default_rng(seed).standard_normal((x.shape[1], dim)) / np.sqrt(dim)
    return x @ matrix


def greedy_coreset(points: np.ndarray, k: int, seed: int | None = None, start: int | None = None) -> np.ndarray:
    """Indices of k points chosen by greedy k-center, in the order chosen (`start`, or a seeded random first)."""
    x = np.ascontiguousarray(points, dtype=np.float32)
    n = len(x)
    if x.ndim != 2 or n == 0:
        raise CoresetError(f"points must be a non-empty (N, D) array, got {x.shape}")
    if not 1 <= k <= n:
        raise CoresetError(f"the coreset size must lie in 1..{n}, got {k}")
    first = int(np.random.default_rng(seed).integers(n)) if start is None else int(start)
    if not 0 <= first < n:
        raise CoresetError(f"start {first} is not an index of the {n} points")
    squared = np.einsum("ij,ij->i", x, x)
    nearest = np.full(n, np.inf, dtype=np.float32)
    chosen = np.empty(k, dtype=np.int64)
    index = first
    for step in range(k):
        chosen[step] = index
        centre = x[index]
        np.minimum(nearest, squared - np.float32(2) * (x @ centre) + squared[index], out=nearest)
        nearest[index] = -np.inf  # chosen: never again (the minimum keeps it so; also against rounding below 0)
        if step + 1 < k:
            index = int(np.argmax(nearest))
    return chosen


def select_bank(features: np.ndarray, fraction: float, max_size: int, projection_dim: int, seed: int) -> np.ndarray:
    """Indices of the coreset of (N, D) patch features: greedy k-center on their seeded random projection."""
    k = coreset_size(len(features), fraction, max_size)
    return greedy_coreset(random_projection(features, projection_dim, seed), k, seed=seed)
