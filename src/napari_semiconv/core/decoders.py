"""Decoders of a pixel embedding Ψ into instances (sec. 3.4 and 4.1 of the paper).

The paper decodes Ψ "starting from simple K-means clustering" (sec. 3.4, used with known K in the
synthetic experiment of sec. 4.1) or through the affinities of the Laplacian kernel
K_σ(u,v) = exp(−‖Ψ_u − Ψ_v‖/σ) (eq. 10). This module holds:

- :func:`kmeans` — Lloyd's algorithm with k-means++ seeding and several restarts, on (P,D) points;
  :func:`kmeans_labels` applies it to the foreground of a (D,H,W) embedding.
- :func:`kernel_threshold_labels` — a K-free decoder: greedily take the densest unassigned
  embedding as a seed and give its instance every unassigned pixel with K_σ(seed, u) > t.
- :func:`mean_shift_labels` — a K-free decoder: mean-shift with the Laplacian kernel, modes
  closer than σ merged.

All label images are int32 (H,W), 0 = background, instances numbered from 1.
Own implementations in numpy; scikit-learn is deliberately not a dependency.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = [
    "KMeansResult",
    "kmeans",
    "kmeans_labels",
    "kernel_threshold_labels",
    "mean_shift_labels",
]

# rows per block when forming distance matrices, to bound memory (block × M × 8 bytes)
_BLOCK = 2048


class KMeansResult(NamedTuple):
    labels: np.ndarray  # (P,) int64 in [0, k)
    centres: np.ndarray  # (k, D) float64
    inertia: float  # Σ squared distance of each point to its centre


def _to_numpy(x: object, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; no torch import needed here
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{what} must be a numpy array or torch tensor, got {type(x).__name__}")
    return x


def _points(embeddings: object, what: str = "embeddings") -> np.ndarray:
    pts = _to_numpy(embeddings, what)
    if pts.ndim != 2:
        raise ValueError(f"{what} must be (P,D) points, got shape {pts.shape}")
    if not np.issubdtype(pts.dtype, np.number) or np.iscomplexobj(pts):
        raise TypeError(f"{what} must be real-valued, got dtype {pts.dtype}")
    pts = pts.astype(np.float64, copy=False)
    bad = int((~np.isfinite(pts)).sum())
    if bad:
        raise ValueError(f"{what} contain {bad} NaN/inf value(s)")
    return pts


def _foreground_points(psi: object, foreground: object) -> tuple[np.ndarray, np.ndarray]:
    """(D,H,W) embedding + (H,W) mask -> ((P,D) foreground points, (H,W) bool mask)."""
    emb = _to_numpy(psi, "psi")
    if emb.ndim != 3:
        raise ValueError(f"psi must be a (D,H,W) embedding, got shape {emb.shape}")
    fg = _to_numpy(foreground, "foreground")
    if fg.shape != emb.shape[1:]:
        raise ValueError(
            f"foreground shape {fg.shape} does not match the embedding's spatial shape "
            f"{emb.shape[1:]}"
        )
    fg = fg != 0
    return _points(emb[:, fg].T, "foreground embeddings"), fg


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (len(a), len(b)), clipped at 0 against round-off."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _assign(points: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.empty(len(points), dtype=np.int64)
    best = np.empty(len(points), dtype=np.float64)
    for s in range(0, len(points), _BLOCK):
        d = _sq_dists(points[s : s + _BLOCK], centres)
        labels[s : s + _BLOCK] = d.argmin(1)
        best[s : s + _BLOCK] = d[np.arange(len(d)), labels[s : s + _BLOCK]]
    return labels, best


def _kmeanspp(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each new centre drawn with probability ∝ squared distance to the
    nearest centre chosen so far (Arthur & Vassilvitskii, 2007)."""
    centres = np.empty((k, points.shape[1]))
    centres[0] = points[rng.integers(len(points))]
    closest = _sq_dists(points, centres[:1])[:, 0]
    for i in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: any point will do
            idx = rng.integers(len(points))
        else:
            idx = min(
                int(np.searchsorted(np.cumsum(closest), rng.random() * total)), len(points) - 1
            )
        centres[i] = points[idx]
        closest = np.minimum(closest, _sq_dists(points, centres[i : i + 1])[:, 0])
    return centres


def kmeans(
    embeddings: object,
    k: int,
    seed: int = 0,
    n_init: int = 10,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> KMeansResult:
    """Cluster (P,D) points into ``k`` clusters: k-means++ seeding, Lloyd iterations, ``n_init``
    restarts, the lowest inertia wins. Deterministic for a given ``seed``.

    An emptied cluster is re-seeded at the point farthest from its centre, so all ``k`` labels
    are used whenever there are at least ``k`` distinct points.
    """
    pts = _points(embeddings)
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if k > len(pts):
        raise ValueError(f"k={k} clusters requested but only {len(pts)} points given")
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"n_init and max_iter must be >= 1, got {n_init}, {max_iter}")
    rng = np.random.default_rng(seed)
    best: KMeansResult | None = None
    for _ in range(n_init):
        centres = _kmeanspp(pts, k, rng)
        for _ in range(max_iter):
            labels, d2 = _assign(pts, centres)
            sums = np.zeros_like(centres)
            np.add.at(sums, labels, pts)
            counts = np.bincount(labels, minlength=k)
            new = centres.copy()
            nonempty = counts > 0
            new[nonempty] = sums[nonempty] / counts[nonempty, None]
            for j in np.flatnonzero(~nonempty):  # re-seed an emptied cluster
                far = int(d2.argmax())
                new[j], d2[far] = pts[far], 0.0
            shift = float(((new - centres) ** 2).sum())
            centres = new
            if shift <= tol:
                break
        labels, d2 = _assign(pts, centres)
        result = KMeansResult(labels, centres, float(d2.sum()))
        if best is None or result.inertia < best.inertia:
            best = result
    assert best is not None
    return best


def kmeans_labels(
    psi: object, foreground: object, k: int, seed: int = 0, n_init: int = 10
) -> np.ndarray:
    """k-means (known K, as in sec. 4.1) on the foreground pixels of a (D,H,W) embedding.
    Returns an int32 (H,W) label image, 0 = background, clusters 1..k."""
    pts, fg = _foreground_points(psi, foreground)
    out = np.zeros(fg.shape, dtype=np.int32)
    if len(pts) == 0:
        return out
    out[fg] = kmeans(pts, k, seed=seed, n_init=n_init).labels + 1
    return out


def _check_sigma(sigma: float) -> float:
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite positive number, got {sigma!r}")
    return float(sigma)


def kernel_threshold_labels(
    psi: object,
    foreground: object,
    sigma: float,
    threshold: float = 0.5,
    min_size: int = 1,
    max_reference: int = 4096,
    seed: int = 0,
) -> np.ndarray:
    """K-free decoding with seeds and the Laplacian kernel K_σ of eq. 10.

    Each foreground pixel gets a density Σ_v K_σ(u,v) over a reference set (all foreground
    pixels, or ``max_reference`` of them drawn with ``seed`` to bound the cost). Then, greedily:
    the densest unassigned pixel becomes a seed, and every unassigned pixel u with
    K_σ(seed, u) > ``threshold`` (i.e. ‖Ψ_u − Ψ_seed‖ < −σ log t) joins its instance; repeat until
    no pixel is left. Instances smaller than ``min_size`` pixels are returned as background.
    Returns an int32 (H,W) label image, 0 = background.
    """
    sigma = _check_sigma(sigma)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1) (a kernel value), got {threshold}")
    pts, fg = _foreground_points(psi, foreground)
    out = np.zeros(fg.shape, dtype=np.int32)
    if len(pts) == 0:
        return out
    rng = np.random.default_rng(seed)
    ref = pts if len(pts) <= max_reference else pts[rng.choice(len(pts), max_reference, False)]
    density = np.concatenate(
        [
            np.exp(-np.sqrt(_sq_dists(pts[s : s + _BLOCK], ref)) / sigma).sum(1)
            for s in range(0, len(pts), _BLOCK)
        ]
    )
    radius2 = (-sigma * math.log(threshold)) ** 2  # K_σ > t  ⇔  ‖Ψ_u − Ψ_seed‖² < radius²
    labels = np.zeros(len(pts), dtype=np.int32)
    order = np.argsort(-density, kind="stable")
    next_label = 1
    for seed_idx in order:
        if labels[seed_idx] != 0:
            continue
        free = np.flatnonzero(labels == 0)
        near = free[_sq_dists(pts[free], pts[seed_idx : seed_idx + 1])[:, 0] < radius2]
        near = near if len(near) else np.array([seed_idx])
        # label small groups with -1 so they are not picked again, then drop them at the end
        if len(near) >= min_size:
            labels[near] = next_label
            next_label += 1
        else:
            labels[near] = -1
    out[fg] = np.maximum(labels, 0)
    return out


def mean_shift_labels(
    psi: object,
    foreground: object,
    sigma: float,
    max_iter: int = 50,
    max_seeds: int = 1024,
    min_size: int = 1,
    seed: int = 0,
    tol: float = 1e-4,
) -> np.ndarray:
    """K-free decoding by mean-shift with the Laplacian kernel K_σ of eq. 10.

    Up to ``max_seeds`` foreground embeddings (drawn with ``seed``) are moved iteratively to the
    K_σ-weighted mean of all foreground embeddings; converged modes closer than σ are merged
    (the denser first) and each pixel takes the label of its nearest mode. Instances smaller than
    ``min_size`` pixels become background. Returns an int32 (H,W) label image.
    """
    sigma = _check_sigma(sigma)
    pts, fg = _foreground_points(psi, foreground)
    out = np.zeros(fg.shape, dtype=np.int32)
    if len(pts) == 0:
        return out
    rng = np.random.default_rng(seed)
    start = pts if len(pts) <= max_seeds else pts[rng.choice(len(pts), max_seeds, False)]
    modes = start.copy()
    for _ in range(max_iter):
        new = np.empty_like(modes)
        for s in range(0, len(modes), _BLOCK // 8):  # (block, P) weights at a time
            d = np.sqrt(_sq_dists(modes[s : s + _BLOCK // 8], pts))
            # shift by the row minimum: the scale cancels in the mean and nothing underflows
            w = np.exp(-(d - d.min(1, keepdims=True)) / sigma)
            new[s : s + _BLOCK // 8] = (w @ pts) / w.sum(1, keepdims=True)
        moved = float(np.abs(new - modes).max())
        modes = new
        if moved < tol * sigma:
            break
    strength = np.concatenate(
        [
            np.exp(-np.sqrt(_sq_dists(modes[s : s + _BLOCK // 8], pts)) / sigma).sum(1)
            for s in range(0, len(modes), _BLOCK // 8)
        ]
    )
    kept: list[np.ndarray] = []
    for i in np.argsort(-strength, kind="stable"):
        if all(float(((modes[i] - m) ** 2).sum()) >= sigma**2 for m in kept):
            kept.append(modes[i])
    labels, _ = _assign(pts, np.stack(kept))
    sizes = np.bincount(labels, minlength=len(kept))
    keep = sizes >= min_size
    new_ids = np.zeros(len(kept), dtype=np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1)
    out[fg] = new_ids[labels]
    return out
