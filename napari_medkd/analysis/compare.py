"""Teacher vs student on one image: both predictions, their disagreement, per-class metrics with units.

What the Compare widget shows, without Qt: :func:`compare_predictions` loads both runs, refuses a
model that does not fit the image (``inference.fit``: channels, dimensions, modality, with the
reason), predicts, and measures teacher/student vs truth and student vs teacher with
``segmentation_metrics`` in the image's physical spacing (HD95 in mm). A class absent from both maps
of a pair has no Dice (NaN, "not defined"), never 1.0.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np

PAIRS = (("teacher", "truth"), ("student", "truth"), ("student", "teacher"))
#: what the disagreement map's values mean (the widget's legend and colours use the same keys)
DISAGREEMENT = {1: "teacher only", 2: "student only", 3: "both, different class"}
UNITS = {"dice": "", "hd95": "mm"}


def disagreement_map(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """1 = foreground only in the teacher, 2 = only in the student, 3 = both, different classes."""
    t, s = teacher > 0, student > 0
    out = np.zeros(teacher.shape, np.uint8)
    out[t & ~s] = 1
    out[s & ~t] = 2
    out[t & s & (teacher != student)] = 3
    return out


def pair_metrics(a: np.ndarray, b: np.ndarray, classes: List[int], spacing, fov=None) -> Dict[int, Dict[str, Any]]:
    """``segmentation_metrics`` of one pair, with Dice and HD95 NaN (and ``absent`` True) for a class
    neither map holds (inside the field of view): there is nothing to overlap, so no score."""
    from ..metrics.segmentation import segmentation_metrics

    out = segmentation_metrics(a, b, classes, spacing=spacing, fov=fov)
    inside = np.ones(a.shape, bool) if fov is None else np.asarray(fov, bool)
    for c in classes:
        absent = not ((a == c) & inside).any() and not ((b == c) & inside).any()
        out[c]["absent"] = absent
        if absent:
            out[c]["dice"] = out[c]["hd95"] = math.nan
    return out


def format_value(metric: str, value: float, absent: bool = False) -> str:
    """A table cell: Dice with 3 decimals, HD95 in mm; 'not defined' for a class absent from both."""
    if absent:
        return "not defined (absent in both)"
    if value is None or not math.isfinite(value):
        return "n/a (missing in one)" if metric == "hd95" else "n/a"
    return f"{value:.3f}" if metric == "dice" else f"{value:.1f} mm"


def load_checked(run, img, what: str):
    """The model of a run (or, for the teacher, of any teacher source: an ONNX / TorchScript file, a MONAI
    bundle), after the guard: ``ModelDoesNotFit`` names what does not fit."""
    from ..inference.fit import check_fits
    from ..train.run_model import load_run_model

    if what == "teacher":
        from ..teachers.resolve import open_as_model

        lm = open_as_model(run)
    else:
        lm = load_run_model(run)
    check_fits(lm.card, img, f"the {what} ({lm.card.model_name}, {run})")
    return lm


def compare_predictions(teacher_run, student_run, img, truth: Optional[np.ndarray] = None,
                        fov: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """Run both models on ``img`` and measure teacher/student vs truth and student vs teacher."""
    from ..inference.predict_files import predict_image

    lm_t, lm_s = load_checked(teacher_run, img, "teacher"), load_checked(student_run, img, "student")
    preds = {"teacher": predict_image(lm_t, img), "student": predict_image(lm_s, img)}
    if preds["teacher"].shape != preds["student"].shape:
        raise ValueError(f"teacher and student predictions differ in shape: {preds['teacher'].shape} vs "
                         f"{preds['student'].shape}")
    names = lm_t.class_names
    classes = [c for c in sorted(names) if c != 0]
    spacing = tuple(reversed(img.spacing))[: preds["teacher"].ndim]
    maps = dict(preds)
    if truth is not None:
        truth = np.asarray(truth)
        if truth.shape != preds["teacher"].shape:
            raise ValueError(f"ground-truth layer shape {truth.shape} differs from the image {preds['teacher'].shape}")
        maps["truth"] = truth
    metrics = {f"{a} vs {b}": pair_metrics(maps[a], maps[b], classes, spacing, fov)
               for a, b in PAIRS if a in maps and b in maps}
    return {"teacher": preds["teacher"], "student": preds["student"], "metrics": metrics,
            "class_names": names, "disagreement": disagreement_map(preds["teacher"], preds["student"])}
