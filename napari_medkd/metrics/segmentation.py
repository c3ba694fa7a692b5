"""Per-class segmentation metrics in physical units (MONAI underneath).

Dice and IoU are overlap ratios; HD95 and ASD are in the units of ``spacing`` (mm for medical
images, pixels where no spacing is known). Where a field-of-view mask is given, voxels outside it
are ignored (the convention for retinal vessels).
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Iterable, Optional, Sequence

import numpy as np


def _one_hot(arr: np.ndarray, classes: Sequence[int]):
    import torch

    t = torch.as_tensor(np.ascontiguousarray(arr))
    return torch.stack([(t == c) for c in classes]).unsqueeze(0).float()


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, classes: Iterable[int],
                         spacing: Optional[Sequence[float]] = None, fov: Optional[np.ndarray] = None,
                         surface: bool = True) -> Dict[int, Dict[str, float]]:
    """Metrics per foreground class for one case.

    ``pred`` and ``truth`` are label maps of the same shape (numpy axis order); ``spacing`` is in
    numpy axis order too (e.g. (z, y, x)). Returns ``{class: {dice, iou, hd95, asd}}``; a class
    absent from both maps gets Dice 1 and distance 0, absent from one of them NaN distances.
    """
    from monai.metrics import (compute_average_surface_distance, compute_dice,
                               compute_hausdorff_distance, compute_iou)

    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {truth.shape}")
    classes = [int(c) for c in classes]
    if fov is not None:
        fov = np.asarray(fov).astype(bool)
        if fov.shape != truth.shape:
            raise ValueError(f"FOV shape {fov.shape} differs from ground truth {truth.shape}")
        pred = np.where(fov, pred, 0)
        truth = np.where(fov, truth, 0)
    p = _one_hot(pred, classes)
    t = _one_hot(truth, classes)
    dice = compute_dice(p, t, include_background=True, ignore_empty=False)[0]
    iou = compute_iou(p, t, include_background=True, ignore_empty=False)[0]
    out: Dict[int, Dict[str, float]] = {}
    sp = list(spacing) if spacing is not None else None
    for i, c in enumerate(classes):
        res = {"dice": float(dice[i]), "iou": float(iou[i])}
        if surface:
            pc, tc = bool(p[0, i].any()), bool(t[0, i].any())
            if not pc and not tc:
                res["hd95"], res["asd"] = 0.0, 0.0
            elif pc != tc:
                res["hd95"], res["asd"] = math.nan, math.nan
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res["hd95"] = float(compute_hausdorff_distance(p[:, i:i + 1], t[:, i:i + 1], percentile=95,
                                                                   include_background=True, spacing=sp)[0, 0])
                    res["asd"] = float(compute_average_surface_distance(p[:, i:i + 1], t[:, i:i + 1],
                                                                        include_background=True, symmetric=True,
                                                                        spacing=sp)[0, 0])
        out[c] = res
    return out


def summarize(per_case: Sequence[Dict[int, Dict[str, float]]]) -> Dict[str, Dict[str, float]]:
    """Mean and standard deviation over cases of every metric and class (NaNs ignored)."""
    summary: Dict[str, Dict[str, float]] = {}
    if not per_case:
        return summary
    for c in per_case[0]:
        for metric in per_case[0][c]:
            vals = np.array([case[c][metric] for case in per_case], dtype=np.float64)
            finite = vals[np.isfinite(vals)]
            summary[f"{metric}_{c}"] = {
                "mean": float(finite.mean()) if finite.size else math.nan,
                "std": float(finite.std()) if finite.size else math.nan,
                "n": int(finite.size),
            }
    fg = [c for c in per_case[0]]
    for metric in ("dice", "iou", "hd95", "asd"):
        keys = [f"{metric}_{c}" for c in fg if f"{metric}_{c}" in summary]
        if keys:
            means = [summary[k]["mean"] for k in keys if math.isfinite(summary[k]["mean"])]
            summary[f"{metric}_mean"] = {"mean": float(np.mean(means)) if means else math.nan, "std": math.nan,
                                         "n": len(means)}
    return summary
