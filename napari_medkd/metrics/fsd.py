"""Fréchet Semantic Distance (GKD, methods.md §2.4): an FID-style distance on MSAN semantic vectors.

    FSD(A, B) = |mu_A - mu_B|^2 + Tr(S_A + S_B - 2 (S_A^{1/2} S_B S_A^{1/2})^{1/2})

computed in float64 with ``eps * I`` added to both covariances and symmetric eigendecompositions
(no ``scipy.linalg.sqrtm``): ``S_A^{1/2}`` from ``eigh(S_A)`` and the trace term as the sum of the
square roots of the eigenvalues of the symmetric ``S_A^{1/2} S_B S_A^{1/2}``.
The estimate is biased upwards for small N; keep N fixed (and >> d) across comparisons.
The vectors come from a probe network: see ``analysis/fsd_probe.py``.
"""
from __future__ import annotations


import numpy as np


def _as_matrix(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"frechet_semantic_distance: {name} must be an (N, d) array, got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"frechet_semantic_distance: {name} needs at least 2 vectors, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"frechet_semantic_distance: {name} contains NaN or infinite values")
    return arr


def _sqrt_psd(mat: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((mat + mat.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_semantic_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """FSD between two sets of semantic vectors ``a`` (N_a, d) and ``b`` (N_b, d)."""
    a, b = _as_matrix(a, "a"), _as_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_semantic_distance: dimensions differ ({a.shape[1]} vs {b.shape[1]})")
    d = a.shape[1]
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = np.cov(a, rowvar=False).reshape(d, d) + eps * np.eye(d)
    cov_b = np.cov(b, rowvar=False).reshape(d, d) + eps * np.eye(d)
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_cross)
    return max(value, 0.0)
