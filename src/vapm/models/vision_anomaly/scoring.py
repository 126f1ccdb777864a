"""Scoring against the memory bank: each patch's distance to its nearest bank patch, the image score, the map.

Nearest distances are exact float64 values, found fast. A float32 matrix product ranks the bank for a chunk of
patches (|b|^2 - 2 q.b: |q - b|^2 less the row's constant |q|^2); its rounding error is below E = 2 (D + 4) u (|q| + max|b|)^2 (u = 2^-24; the
standard bound on a length-D dot product, doubled), so every bank patch whose float32 value lies within 2E of the
row's float32 minimum is a candidate, the true nearest always among them. The candidates' distances are then
computed exactly in float64 and the smallest taken (ties: the lowest bank index). The answer is thus the exact
nearest distance whatever the BLAS kernel did with the float32 product, and is bit-identical from run to run;
the float32 product is what makes a 784-patch image against a 10,000-patch bank take milliseconds.

Image score (section 3.3 of the paper): the largest patch score s* = |m_test* - m*|; with n_neighbors > 1 it is
reweighted by w = 1 - exp|m_test* - m*| / sum over the n_neighbors bank patches nearest to m* (m* included) of
exp|m_test* - m|, which lowers the score of a patch whose nearest bank patch sits in a dense, well-covered region.

Anomaly map: the patch scores on their grid, resized bilinearly (half-pixel centres) to the image's side, then
smoothed by a Gaussian of sigma 4 pixels (scipy.ndimage.gaussian_filter, reflecting the border; truncated at
4 sigma as the paper's reference implementation's 2 * int(4 sigma + 0.5) + 1 kernel).
"""
from __future__ import annotations

import numpy as np

UNIT_ROUNDOFF_32 = 2.0 ** -24
CHUNK_ELEMENTS = 1 << 22  # float32 distance entries per chunk (16 MiB)


class Bank:
    """A memory bank prepared once for many searches: its float32 rows, their float64 copy and squared norms."""

    def __init__(self, rows: np.ndarray):
        self.rows = np.ascontiguousarray(rows, dtype=np.float32)
        if self.rows.ndim != 2 or len(self.rows) == 0:
            raise ValueError(f"need a non-empty (M, D) bank, got {self.rows.shape}")
        self.rows64 = self.rows.astype(np.float64)
        self.squared64 = np.einsum("ij,ij->i", self.rows64, self.rows64)
        self.squared = self.squared64.astype(np.float32)
        self.norm_max = float(np.sqrt(self.squared64.max()))

    def __len__(self) -> int:
        return len(self.rows)


def as_bank(bank: "np.ndarray | Bank") -> Bank:
    return bank if isinstance(bank, Bank) else Bank(bank)


def nearest_in_bank(queries: np.ndarray, bank: "np.ndarray | Bank") -> tuple[np.ndarray, np.ndarray]:
    """(distance float64 (N,), bank index int64 (N,)) of each query's nearest bank row (Euclidean, exact)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    prepared = as_bank(bank)
    b, b64, b_squared, b_norm_max = prepared.rows, prepared.rows64, prepared.squared, prepared.norm_max
    if q.ndim != 2 or q.shape[1] != b.shape[1]:
        raise ValueError(f"need (N, D) queries and a non-empty (M, D) bank, got {q.shape} and {b.shape}")
    bound_factor = 4.0 * (q.shape[1] + 4) * UNIT_ROUNDOFF_32
    distances, locations = np.empty(len(q)), np.empty(len(q), dtype=np.int64)
    step = max(1, CHUNK_ELEMENTS // len(b))
    ranking = np.empty((min(step, len(q)), len(b)), dtype=np.float32)
    for start in range(0, len(q), step):
        chunk = q[start:start + step]
        chunk64 = chunk.astype(np.float64)
        q_squared64 = np.einsum("ij,ij->i", chunk64, chunk64)
        # |b|^2 - 2 q.b ranks the bank as |q - b|^2 does (|q|^2 is the row's constant); scaling q by -2 is exact,
        # and both terms are computed in place in one buffer: the product is the only pass over q and b.
        approx = ranking[:len(chunk)]
        np.matmul(chunk * np.float32(-2.0), b.T, out=approx)
        approx += b_squared
        margin = bound_factor * (np.sqrt(q_squared64) + b_norm_max) ** 2
        lowest = approx.argmin(axis=1)
        within = approx <= (approx[np.arange(len(chunk)), lowest].astype(np.float64) + margin)[:, None]
        # Almost every row has one candidate, its float32 minimum: only rows with more are searched for the others.
        crowded = np.flatnonzero(np.count_nonzero(within, axis=1) > 1)
        rows, cols = np.arange(len(chunk)), lowest
        if len(crowded):
            extra_rows, extra_cols = np.nonzero(within[crowded])
            rows, cols = np.r_[rows, crowded[extra_rows]], np.r_[cols, extra_cols]
        exact = np.sum((chunk64[rows] - b64[cols]) ** 2, axis=1)
        order = np.lexsort((cols, exact, rows))  # by row, then exact distance, then bank index
        rows, cols, exact = rows[order], cols[order], exact[order]
        first = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        distances[start + rows[first]] = np.sqrt(exact[first])
        locations[start + rows[first]] = cols[first]
    return distances, locations


def exact_distances(point: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """float64 Euclidean distances from one point to each of `rows`."""
    return np.sqrt(np.sum((np.asarray(rows, np.float64) - np.asarray(point, np.float64)) ** 2, axis=1))


def image_scores(patch_scores: np.ndarray, locations: np.ndarray, patches: np.ndarray, bank: "np.ndarray | Bank",
                 n_neighbors: int) -> np.ndarray:
    """float64 (N,) image scores from per-image patch scores (N, P), their bank indices (N, P) and the patch
    features (N, P, D): the largest patch score, reweighted when n_neighbors > 1 (module docstring)."""
    patch_scores = np.asarray(patch_scores, dtype=np.float64)
    worst = np.argmax(patch_scores, axis=1)  # ties: the first patch
    rows = np.arange(len(patch_scores))
    score = patch_scores[rows, worst]
    bank = as_bank(bank).rows64
    k = min(int(n_neighbors), len(bank))
    if k <= 1:
        return score
    weights = np.empty(len(score))
    for i, (patch, nearest) in enumerate(zip(patches[rows, worst], locations[rows, worst])):
        to_nearest = exact_distances(bank[nearest], bank)
        to_nearest[nearest] = -1.0  # m* itself first, whatever its rounding
        support = np.lexsort((np.arange(len(bank)), to_nearest))[:k]
        distances = exact_distances(patch, bank[support])
        distances[0] = score[i]
        shifted = np.exp(distances - distances.max())
        weights[i] = 1.0 - shifted[0] / shifted.sum()
    return weights * score


def anomaly_map(patch_grid: np.ndarray, image_size: int, sigma: float = 4.0) -> np.ndarray:
    """float64 (S, S) map of one image's (h, w) patch scores: bilinear resize (half-pixel centres), then Gaussian."""
    from scipy import ndimage

    grid = np.asarray(patch_grid, dtype=np.float64)
    h, w = grid.shape
    # Half-pixel centres: output pixel i samples the grid at (i + 0.5) h / S - 0.5, clamped to the edge.
    ys = np.clip((np.arange(image_size) + 0.5) * h / image_size - 0.5, 0, h - 1)
    xs = np.clip((np.arange(image_size) + 0.5) * w / image_size - 0.5, 0, w - 1)
    resized = ndimage.map_coordinates(grid, np.meshgrid(ys, xs, indexing="ij"), order=1, mode="nearest")
    return ndimage.gaussian_filter(resized, sigma=sigma, mode="reflect", truncate=4.0) if sigma > 0 else resized
