"""Fast per-class Dice for validation during training (numpy, no surface distances)."""
from __future__ import annotations

from typing import Optional

import numpy as np


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int,
                   fov: Optional[np.ndarray] = None) -> np.ndarray:
    """Dice of classes 1..K-1; 1.0 where a class is absent from both, restricted to ``fov``."""
    if fov is not None:
        m = fov.astype(bool)
        pred, truth = pred[m], truth[m]
    out = np.empty(num_classes - 1, dtype=np.float64)
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        denom = p.sum() + t.sum()
        out[c - 1] = 1.0 if denom == 0 else 2.0 * np.logical_and(p, t).sum() / denom
    return out
