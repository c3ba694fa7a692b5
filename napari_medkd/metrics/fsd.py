"""Fréchet Semantic Distance (GKD, methods.md §2.4): an FID-style distance on MSAN semantic vectors.

    FSD(A, B) = |mu_A - mu_B|^2 + Tr(S_A + S_B - 2 (S_A^{1/2} S_B S_A^{1/2})^{1/2})

computed in float64 with ``eps * I`` added to both covariances and symmetric eigendecompositions
(no ``scipy.linalg.sqrtm``): ``S_A^{1/2}`` from ``eigh(S_A)`` and the trace term as the sum of the
square roots of the eigenvalues of the symmetric ``S_A^{1/2} S_B S_A^{1/2}``.
The estimate is biased upwards for small N; keep N fixed (and >> d) across comparisons.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

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


def semantic_vectors(model, msan_header, images: Union[np.ndarray, Iterable], batch_size: int = 8,
                     normalize: bool = False) -> np.ndarray:
    """Semantic vectors ``msan_header.encode(model.encode(x)[0])`` of ``images`` as an (N, d) array.

    ``images``: an array/tensor ``(N, C, *spatial)`` or an iterable of ``(B, C, *spatial)`` batches.
    Runs without gradients on the model's device with model and header in eval mode (their
    modes are restored). ``normalize`` L2-normalises each vector (the space DCGD compares in).
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"semantic_vectors: batch_size must be >= 1, got {batch_size}")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    if isinstance(images, (np.ndarray, torch.Tensor)):
        data = torch.as_tensor(images)
        if data.dim() < 4:
            raise ValueError(f"semantic_vectors: images must be (N, C, *spatial), got shape "
                             f"{tuple(data.shape)}")
        batches = (data[i:i + batch_size] for i in range(0, data.shape[0], batch_size))
    else:
        batches = iter(images)
    modes = [(m, m.training) for mod in (model, msan_header) for m in mod.modules()]
    model.eval()
    msan_header.eval()
    out = []
    try:
        with torch.no_grad():
            for x in batches:
                x = torch.as_tensor(x).to(device=device, dtype=torch.float32)
                vec = msan_header.encode(model.encode(x)[0]).double()
                if normalize:
                    vec = torch.nn.functional.normalize(vec, dim=1)
                out.append(vec.cpu().numpy())
    finally:
        for m, t in modes:
            m.training = t
    if not out:
        raise ValueError("semantic_vectors: no images were given")
    return np.concatenate(out, 0)


def _header_from_state(state: Dict[str, Any], prefix: str, spatial_dims: int):
    from ..distill.terms.gkd_msan import MSANHeader

    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        return None
    dim, channels = sub["to_vec.weight"].shape
    hidden, cells = sub["down.0.weight"].shape
    grid = int(round(cells ** (1.0 / spatial_dims)))
    header = MSANHeader(channels, dim, grid, hidden, spatial_dims)
    header.load_state_dict(sub)
    return header.eval()


def load_run_msan(student_run, spatial_dims: int) -> Optional[Tuple[Any, Any, str]]:
    """(teacher MSAN, student MSAN, source) of a GKD run, or None when the run has none.

    The student MSAN keeps training during distillation, so the checkpoint's task state is used
    when present; the ACT stage file ``stages/msan.pt`` otherwise.
    """
    from ..inference.run_model import checkpoint_path
    from ..train.checkpoint import load_checkpoint

    run = Path(student_run)
    candidates: List[Tuple[Dict[str, Any], str]] = []
    try:
        path = checkpoint_path(run)
        ckpt = load_checkpoint(path)
        for label, term_state in ((ckpt.get("task") or {}).get("terms") or {}).items():
            candidates.append((term_state, f"{path.name} ({label})"))
    except Exception:  # noqa: BLE001 - a run without a readable task state falls back to the stage
        pass
    stage = run / "stages" / "msan.pt"
    if stage.is_file():
        candidates.append(({f"alignment.{k}": v for k, v in load_checkpoint(stage)["model"].items()},
                           "stages/msan.pt"))
    for state, source in candidates:
        t = _header_from_state(state, "alignment.teacher_msan.", spatial_dims)
        s = _header_from_state(state, "alignment.student_msan.", spatial_dims)
        if t is not None and s is not None:
            return t, s, source
    return None


def tiles(image: np.ndarray, size: int) -> np.ndarray:
    """Non-overlapping ``size``-sided tiles (N, C, size, size) of a preprocessed (C, H, W) image."""
    c, h, w = image.shape
    out = [image[:, y:y + size, x:x + size] for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)]
    if not out:
        raise ValueError(f"image of {h}x{w} is smaller than one {size}x{size} tile")
    return np.stack(out)


def domain_fsd(run, header, source_images: Sequence, target_images: Sequence, tile: int = 96,
               n: Optional[int] = None, seed: int = 0) -> Dict[str, float]:
    """FSD between a 2D model's semantic vectors on two domains (GKD's domain-invariance pairing).

    The images (paths) are preprocessed as the run was trained, cut into ``tile``-sided tiles, and
    encoded as ``header.encode(bottleneck)``; both sets are subsampled to the same N (the smaller
    count, or ``n``) because the estimate's bias depends on N. ``header`` is an MSAN header that
    fits the model's bottleneck (for instance the student MSAN of a GKD run, used as a fixed probe).
    """
    from ..data.preprocess import PreprocessConfig
    from ..inference.run_model import load_run_model
    from ..io.image_io import read_image
    from ..train.data import prepare_image

    lm = load_run_model(run, device="cpu")
    pcfg = PreprocessConfig.from_dict(lm.meta["preprocess"])
    sets = []
    for paths in (source_images, target_images):
        arr = np.concatenate([tiles(prepare_image(read_image(p), pcfg)[0], tile) for p in paths])
        sets.append(semantic_vectors(lm.model, header, arr, batch_size=32))
    k = min(len(sets[0]), len(sets[1]), n or 10 ** 9)
    rng = np.random.default_rng(seed)
    a, b = (s[rng.choice(len(s), k, replace=False)] for s in sets)
    return {"fsd": frechet_semantic_distance(a, b), "n": int(k), "dim": int(a.shape[1])}
