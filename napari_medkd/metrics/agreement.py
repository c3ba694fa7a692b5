"""Agreement of two label maps (a student's and its teacher's), for evaluation without ground truth:
Dice per class between the two masks, the share of voxels with the same label, and the volume where
they differ."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .overlap import dice_per_class


def agreement(pred: np.ndarray, ref: np.ndarray, num_classes: int, spacing: Optional[Sequence[float]] = None,
              fov: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """``pred`` against ``ref`` (the teacher's mask): ``dice`` per class 1..K-1 (1.0 where both lack a class),
    ``dice_mean``, ``voxel_agreement`` (share of equal labels), ``disagreement_voxels`` and, with the
    voxel ``spacing`` in mm, ``disagreement_ml``; inside ``fov`` when given."""
    if pred.shape != ref.shape:
        raise ValueError(f"label maps of shapes {pred.shape} and {ref.shape} cannot be compared")
    dice = dice_per_class(pred, ref, num_classes, fov=fov)
    inside = np.ones(pred.shape, bool) if fov is None else fov.astype(bool)
    differ = int(np.count_nonzero((pred != ref) & inside))
    total = int(np.count_nonzero(inside))
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0 if spacing is not None else None
    return {"dice": {str(c + 1): float(d) for c, d in enumerate(dice)},
            "dice_mean": float(np.mean(dice)) if len(dice) else math.nan,
            "voxel_agreement": 1.0 - differ / total if total else math.nan,
            "disagreement_voxels": differ,
            "disagreement_ml": differ * voxel_ml if voxel_ml is not None else None}


def mean_agreement(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The mean of :func:`agreement` rows (per class, and of every number); ``cases`` counts them."""
    if not rows:
        return {"cases": 0}
    keys = sorted({k for r in rows for k in r["dice"]}, key=int)
    out: Dict[str, Any] = {"cases": len(rows),
                           "dice": {k: float(np.nanmean([r["dice"].get(k, math.nan) for r in rows])) for k in keys}}
    for key in ("dice_mean", "voxel_agreement", "disagreement_voxels", "disagreement_ml"):
        vals = [r[key] for r in rows if r.get(key) is not None]
        out[key] = float(np.nanmean(vals)) if vals else None
    return out
