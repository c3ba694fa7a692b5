"""Alignment maps: where on the image the student's features agree with the teacher's.

Per tap, a map on the image grid with values in [-1, 1]:

- GKD runs (an MSAN in ``RUN/stages/msan.pt`` or in the checkpoint's task state), bottleneck tap:
  per-position cosine between ``D^T(E^T(F_T))`` and ``D^T(E^S(F_S))``, i.e. teacher and student
  features carried through their own MSAN encoders into the shared semantic space and decoded by
  the same (teacher) MSAN decoder;
- otherwise: per-position cosine of the mean-centred 3x3 neighbourhoods (a local correlation) of
  the channel-collapsed FMM maps (``fmm``) of teacher and student (the student resized to the
  teacher's grid); a plain cosine of two non-negative one-channel maps would be ~1 everywhere.

For GKD runs it also reports the Fréchet Semantic Distance (``frechet_semantic_distance``) between
teacher and student semantic vectors (MSAN encodings of the bottleneck) over the slices of the
volume. No Qt here; torch is imported inside functions.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np

from .features import assemble_volume, input_batches, model_input, taps_on, to_image_grid
from .fsd_probe import load_run_msan

TAPS = ("bottleneck", "enc_high", "enc_mid", "enc_low", "dec_mid", "dec_low")


def local_cosine(a, b, k: int = 3, eps: float = 1e-8):
    """Per-position cosine of the mean-centred ``k``-neighbourhoods of two one-channel maps (a local
    Pearson correlation in [-1, 1]; 0 where either map is flat)."""
    import torch.nn.functional as F

    pool = F.avg_pool2d if a.dim() == 4 else F.avg_pool3d
    kw = {"kernel_size": k, "stride": 1, "padding": k // 2, "count_include_pad": False}
    ma, mb = pool(a, **kw), pool(b, **kw)
    cov = pool(a * b, **kw) - ma * mb
    va = (pool(a * a, **kw) - ma * ma).clamp_min(0)
    vb = (pool(b * b, **kw) - mb * mb).clamp_min(0)
    scale = float(max(va.max(), vb.max(), eps))
    return cov / (va * vb).sqrt().clamp_min(1e-3 * scale)


def tap_alignment(t_feat, s_feat, msan=None):
    """(B, 1, *teacher grid) alignment of one tap: MSAN cosine if ``msan``, else FMM local cosine."""
    import torch.nn.functional as F

    from ..distill.terms._common import fmm, resize

    t = t_feat.float()
    if msan is not None:
        t_msan, s_msan = msan
        size = t.shape[2:]
        a = t_msan.decode(t_msan.encode(t), size)
        b = t_msan.decode(s_msan.encode(s_feat.float()), size)
        return F.cosine_similarity(a, b, dim=1, eps=1e-8).unsqueeze(1)
    s = resize(s_feat.float(), t.shape[2:])
    return local_cosine(fmm(t), fmm(s))


def _fsd_result(msan, taps: Sequence[str], sem_t: list, sem_s: list):
    """(FSD or None, the sentence that reports it)."""
    from ..metrics.fsd import frechet_semantic_distance

    if msan is None:
        return None, "n/a: not a GKD run (no MSAN)"
    if "bottleneck" not in taps:
        return None, "n/a: choose the bottleneck tap for the FSD"
    n = sum(len(v) for v in sem_t)
    if n < 2:
        return None, "n/a: the FSD needs at least 2 slices (a volume, whole-volume mode)"
    fsd = frechet_semantic_distance(np.concatenate(sem_t), np.concatenate(sem_s))
    return fsd, (f"FSD (teacher vs student, {n} slices) = {fsd:.4f}. Scale: 0 = the student's semantic "
                 f"features are distributed exactly like the teacher's; larger = further apart, no upper bound. "
                 f"Compare FSDs only over the same slices (few slices bias it upwards).")


def alignment_maps(t_lm, s_lm, img, taps: Sequence[str], msan=None, position: Optional[Sequence[int]] = None,
                   batch: int = 8) -> Dict[str, Any]:
    """Maps (image-shaped, NaN where not computed) per tap, and the FSD for GKD runs.

    ``t_lm``/``s_lm``: ``LoadedModel``s; ``img``: a ``MedicalImage``; ``msan``: (teacher MSAN,
    student MSAN) of a GKD run or None. ``position`` (data indices) limits a volume to the slice
    through it; None = every slice. Returns ``maps``, ``fsd``, ``fsd_note`` and ``gkd``.
    """
    import torch

    mi_t, mi_s = model_input(t_lm, img), model_input(s_lm, img)
    if mi_t.axis != mi_s.axis:
        raise ValueError("teacher and student cut the volume differently (2D vs 3D model or slice axis)")
    indices = None
    if position is not None and mi_t.axis >= 0:
        indices = [mi_t.work_index(int(position[mi_t.axis]))]
    parts: Dict[str, list] = {tap: [] for tap in taps}
    sem_t, sem_s = [], []
    with torch.no_grad():
        for (idx, xt), (_, xs) in zip(input_batches(mi_t, indices, batch), input_batches(mi_s, indices, batch)):
            ft, fs = taps_on(t_lm.model, xt, taps), taps_on(s_lm.model, xs, taps)
            for tap in taps:
                use = msan if tap == "bottleneck" else None
                parts[tap].append((idx, to_image_grid(tap_alignment(ft[tap], fs[tap], use), mi_t)))
            if msan is not None and "bottleneck" in ft:
                sem_t.append(msan[0].encode(ft["bottleneck"].float()).double().numpy())
                sem_s.append(msan[1].encode(fs["bottleneck"].float()).double().numpy())
    maps = {tap: assemble_volume(p, mi_t) for tap, p in parts.items()}
    fsd, note = _fsd_result(msan, taps, sem_t, sem_s)
    return {"maps": maps, "fsd": fsd, "fsd_note": note, "gkd": msan is not None}


def alignment_maps_of_runs(teacher_run, student_run, img, taps: Sequence[str],
                           position: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """``alignment_maps`` of the models in two run folders, with the student run's MSAN pair if it
    has one (what the alignment widget computes)."""
    from ..train.run_model import load_run_model

    t_lm, s_lm = load_run_model(teacher_run), load_run_model(student_run)
    msan = load_run_msan(student_run, int(s_lm.card.model_dims or 2))
    return alignment_maps(t_lm, s_lm, img, taps, msan=msan[:2] if msan else None, position=position)
