"""The numbers of the Quick start's result card, and its report: Dice per class of the teacher, the student
alone and the distilled student on the held-back cases; how often the distilled student agrees with the
teacher; milliseconds per slice and the speed-up; and a plain verdict.

Every model is opened as a teacher is (``teachers.open_teacher``: run folders, ready-made checkpoints,
ONNX / TorchScript files and bundles alike) and predicts on each scan in the scan's own grid with its own
preprocessing (``inference.predict_files.predict_image``), so a teacher from a file is measured as a
trained one is.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..io import jsonsafe
from ..io.atomic import write_text_atomic

ROLES = ("teacher", "student", "distilled")
LABELS = {"teacher": "teacher", "student": "student alone", "distilled": "distilled student"}
#: validation Dice below this (or none at all) gives the "undertrained" verdict
LOW_DICE = 0.6


def _loaded(source: str):
    from ..teachers.resolve import open_as_model

    return open_as_model(source)


def fg_agreement(pred: np.ndarray, ref: np.ndarray) -> float:
    """Share of the voxels either mask labels as a structure on which both give the same label."""
    union = (pred > 0) | (ref > 0)
    n = int(union.sum())
    return float((pred[union] == ref[union]).mean()) if n else math.nan


def evaluate_held_back(runs: Dict[str, str], data: str, names: Dict[int, str]) -> Dict[str, Any]:
    """Dice per class (mean over the held-back cases, against their masks) of every role in ``runs``, and
    the distilled student's agreement with the teacher there."""
    from ..data.datasets import load_dataset, load_label
    from ..inference.predict_files import predict_image
    from ..io.image_io import read_image
    from ..metrics.overlap import dice_per_class

    spec = load_dataset(data)
    cases = [c for c in spec.cases if c.split == "test"]
    models = {r: _loaded(runs[r]) for r in ROLES if r in runs}
    k = max(names) + 1
    dice: Dict[str, List[np.ndarray]] = {r: [] for r in models}
    agree = []
    for case in cases:
        img = read_image(case.image)
        preds = {r: predict_image(lm, img) for r, lm in models.items()}
        if "teacher" in preds and "distilled" in preds:
            agree.append(fg_agreement(preds["distilled"], preds["teacher"]))
        if case.label is not None:
            truth = load_label(case.label)
            absent = [c for c in range(1, k) if not (truth == c).any()]  # no Dice for a class not there
            for r, p in preds.items():
                d = dice_per_class(p, truth, k)
                d[[c - 1 for c in absent]] = np.nan
                dice[r].append(d)
    per_class = {r: {names.get(c + 1, str(c + 1)): _mean([d[c] for d in v]) for c in range(k - 1)}
                 for r, v in dice.items() if v}
    return {"held_back_cases": len(cases), "labelled_cases": sum(c.label is not None for c in cases),
            "dice": per_class, "classes": {str(c): n for c, n in names.items()},
            "agreement": float(np.nanmean(agree)) if agree and not np.all(np.isnan(agree)) else None}


def _mean(values) -> Optional[float]:
    """The mean of the values that are numbers; None when there are none (a class absent everywhere)."""
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def predict_for_viewer(runs: Dict[str, str], ds, folder: Path) -> Dict[str, Any]:
    """The teacher's and the distilled student's masks of the first scan (the one open in napari), on its
    grid, in ``folder``; with the milliseconds per slice each took in torch."""
    from ..data.holdout import crop_along
    from ..inference.predict_files import predict_image
    from ..io.image_io import read_image, write_mask

    img = read_image(ds.cases[0].image)
    n = int(np.shape(img.array)[0]) if img.ndim_spatial == 3 else 1
    out: Dict[str, Any] = {"predictions": {}, "ms_per_slice": {}, "scan": str(ds.cases[0].image)}
    for role in ("teacher", "distilled"):
        lm = _loaded(runs[role])
        predict_image(lm, crop_along(img, 0, 0, 2) if n > 2 else img)  # warm-up
        t0 = time.perf_counter()
        labels = predict_image(lm, img)
        runtime = "ONNX Runtime" if str(runs[role]).lower().endswith(".onnx") else "torch"
        out["ms_per_slice"][f"{role} ({runtime})"] = 1000.0 * (time.perf_counter() - t0) / n
        out["predictions"][role] = str(write_mask(labels, folder / f"{role}.nii.gz", reference=img, overwrite=True))
    return out


def export_student(run: Path, onnx_path: Path, teacher: str, ds) -> Dict[str, Any]:
    """The distilled student as a parity-checked ONNX file, timed on the first scan in onnxruntime."""
    from ..export.onnx_export import export_onnx
    from ..inference.ort_infer import OrtSegmenter
    from ..io.image_io import read_image

    rep = export_onnx(run, onnx_path)
    seg = OrtSegmenter(onnx_path)
    img = read_image(ds.cases[0].image)
    seg.segment(img)  # warm-up
    times = [seg.segment(img).ms_per_slice for _ in range(3)]
    return {"onnx": str(onnx_path), "onnx_mb": rep.size_mb, "onnx_max_abs_diff": rep.max_abs_diff,
            "ms_per_slice_onnx": float(np.median(times))}


def speedup(res: Dict[str, Any]) -> Optional[float]:
    t = next((v for k, v in res.get("ms_per_slice", {}).items() if k.startswith("teacher")), None)
    s = res.get("ms_per_slice_onnx") or res.get("ms_per_slice", {}).get("distilled (torch)")
    return t / s if t and s else None


def verdict(res: Dict[str, Any]) -> str:
    """One plain sentence: undertrained (no or low validation Dice), else how far it agrees and how fast."""
    val = (res.get("validation_dice") or {}).get("distilled")
    if val is None:
        return "undertrained: train longer (the distilled student was never validated, so nothing shows it works)"
    if val < LOW_DICE:
        return f"undertrained: train longer (validation Dice of the distilled student {val:.2f}, below {LOW_DICE})"
    agree, fast = res.get("agreement"), speedup(res)
    parts = []
    if agree is not None and not math.isnan(agree):
        parts.append(f"the fast model agrees with the big one on {100 * agree:.0f} % of the voxels either of "
                     "them labels")
    if fast:
        parts.append(f"it is {fast:.1f}x faster per slice")
    return "; ".join(parts) or f"validation Dice of the distilled student {val:.2f}"


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.3f}"


def card_lines(res: Dict[str, Any]) -> List[str]:
    """The result card as lines of text (the report and the napari panel show the same)."""
    lines = [res.get("holdout", "")]
    classes = [n for c, n in sorted(res.get("classes", {}).items(), key=lambda kv: int(kv[0])) if c != "0"]
    if res.get("dice"):
        where = "the held-back slices" if res.get("holdout", "").startswith("one case") else \
            f"{res['labelled_cases']} held-back case(s)"
        lines.append(f"Dice on {where}: " + "; ".join(
            f"{LABELS[r]} " + ", ".join(f"{c} {_fmt(res['dice'][r].get(c))}" for c in classes)
            for r in ROLES if r in res["dice"]))
    if not res.get("dice"):
        lines.append("no masks in the held-back data: Dice against ground truth was not measured")
    if res.get("agreement") is not None and not math.isnan(res["agreement"]):
        lines.append(f"the distilled student gives the teacher's label on {100 * res['agreement']:.1f} % of the "
                     "held-back voxels either of them labels")
    ms = dict(res.get("ms_per_slice", {}))
    if res.get("ms_per_slice_onnx"):
        ms["distilled (ONNX Runtime)"] = res["ms_per_slice_onnx"]
    if ms:
        lines.append("ms per slice: " + ", ".join(f"{k} {v:.1f}" for k, v in ms.items())
                     + (f"; speed-up {speedup(res):.1f}x" if speedup(res) else ""))
    lines.append(f"Verdict: {res['verdict']}")
    return [ln for ln in lines if ln]


def write_report(res: Dict[str, Any], out: Path) -> Dict[str, Any]:
    res = dict(res, verdict=verdict(res), speedup=speedup(res))
    res["card"] = card_lines(res)
    text = "# napari-medkd Quick start\n\n" + "\n\n".join(res["card"]) + \
        f"\n\nONNX student: `{res.get('onnx', 'not exported')}`. Total time: {res['elapsed_s']:.0f} s\n"
    write_text_atomic(out / "report.md", text)
    write_text_atomic(out / "result.json", jsonsafe.dumps(res, indent=1))
    return res
