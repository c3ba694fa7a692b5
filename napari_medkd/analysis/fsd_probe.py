"""The probe behind the Fréchet Semantic Distance: MSAN semantic vectors of a student's encoder on
image tiles of two domains, and the FSD between them (``metrics/fsd.py`` holds the distance itself)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..metrics.fsd import frechet_semantic_distance


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
    from ..train.run_model import checkpoint_path
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
    from ..data.prepare import PreprocessConfig
    from ..train.run_model import load_run_model
    from ..io.image_io import read_image
    from ..data.prepare import prepare_image

    lm = load_run_model(run, device="cpu")
    pcfg = PreprocessConfig.from_dict(lm.card.preprocess)
    sets = []
    for paths in (source_images, target_images):
        arr = np.concatenate([tiles(prepare_image(read_image(p), pcfg)[0], tile) for p in paths])
        sets.append(semantic_vectors(lm.model, header, arr, batch_size=32))
    k = min(len(sets[0]), len(sets[1]), n or 10 ** 9)
    rng = np.random.default_rng(seed)
    a, b = (s[rng.choice(len(s), k, replace=False)] for s in sets)
    return {"fsd": frechet_semantic_distance(a, b), "n": int(k), "dim": int(a.shape[1])}
