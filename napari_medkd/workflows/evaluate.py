"""Evaluate a trained model on a data set split: Dice, IoU, HD95 and ASD per class and case.

The data set is validated first (the header rules of ``medkd validate-data``) and must have the
model's classes; each truth mask is checked (label values among the model's classes, empty masks)
before its case is predicted."""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..io import jsonsafe
from ..io.atomic import write_text_atomic
from ..data.datasets import DatasetSpec, load_dataset, load_label
from ..data.validate import (EMPTY_MASK, DataError, Problem, keep_warnings, label_counts, require_valid,
                              unknown_labels)
from ..inference.predict_files import predict_image
from ..train.run_model import LoadedModel, load_run_model
from ..io.image_io import read_image
from ..metrics.segmentation import segmentation_metrics, summarize


@dataclass
class EvalResult:
    model: str
    data: str
    split: str
    class_names: Dict[int, str]
    rows: List[Dict[str, Any]] = field(default_factory=list)      # one per case and class
    summary: Dict[str, Dict[str, float]] = field(default_factory=dict)
    seconds_per_case: float = math.nan
    data_warnings: List[Problem] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"{self.model} on {self.data} [{self.split}], {len(self.rows) // max(1, len(self.class_names) - 1)} cases",
                 f"{'class':<16}{'Dice':>19}{'IoU':>19}{'HD95':>19}{'ASD':>19}"]
        for c, name in sorted(self.class_names.items()):
            if c == 0:
                continue
            cells = []
            for m in ("dice", "iou", "hd95", "asd"):
                s = self.summary.get(f"{m}_{c}", {})
                cells.append(f"{s.get('mean', math.nan):.4f} ± {s.get('std', math.nan):.4f}")
            lines.append(f"{name:<16}" + "".join(f"{x:>19}" for x in cells))
        return "\n".join(lines)

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "per_case.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(self.rows[0].keys()))
            w.writeheader()
            w.writerows(self.rows)
        write_text_atomic(folder / "summary.json", jsonsafe.dumps({
            "model": self.model, "data": self.data, "split": self.split,
            "class_names": {str(k): v for k, v in self.class_names.items()},
            "seconds_per_case": self.seconds_per_case, "summary": self.summary,
            "data_warnings": [str(w) for w in self.data_warnings]}, indent=1))
        keep_warnings(self.data_warnings, folder, echo=False)


def _classes(names) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(names.items())) + "}"


def _checked_spec(lm: LoadedModel, data_root: str | Path) -> DatasetSpec:
    """The data set, validated (headers), whose declared classes (dataset.json labels) are the model's."""
    spec = load_dataset(data_root)
    if spec.meta.get("labels") and set(spec.class_names) != set(lm.class_names):
        raise DataError(f"{data_root}: the data set's classes {_classes(spec.class_names)} are not the model's "
                        f"{_classes(lm.class_names)}; evaluate the model on data labelled with its classes")
    spec.class_names = dict(lm.class_names)
    return spec


def _truth(case, lm: LoadedModel, warnings: List[Problem]):
    """The case's truth mask, refused (naming the file) if it holds a label the model does not know."""
    truth = load_label(case.label)
    counts = label_counts(truth)
    bad = unknown_labels(counts, lm.class_names)
    if bad:
        raise DataError(f"{case.label}: {bad} of the model")
    if counts[1:].sum() == 0:
        warnings.append(Problem(str(case.label), EMPTY_MASK))
    return truth


def evaluate_model(lm: LoadedModel, data_root: str | Path, split: str = "test",
                   surface: bool = True, limit: Optional[int] = None, name: str = "") -> EvalResult:
    spec = _checked_spec(lm, data_root)
    warnings = require_valid(spec)
    cases = [c for c in spec.cases if c.split == split and c.label is not None]
    if not cases:
        raise ValueError(f"{data_root}: no labelled cases in split '{split}' "
                         f"(splits present: {sorted({c.split for c in spec.cases})})")
    if limit:
        cases = cases[:limit]
    classes = [c for c in sorted(lm.class_names) if c != 0]
    res = EvalResult(name or str(lm.checkpoint.parent), str(data_root), split, lm.class_names,
                     data_warnings=warnings)
    per_case, times = [], []
    for case in cases:
        truth = _truth(case, lm, res.data_warnings)
        img = read_image(case.image)
        t0 = time.perf_counter()
        pred = predict_image(lm, img)
        times.append(time.perf_counter() - t0)
        fov = load_label(case.fov) > 0 if case.fov is not None else None
        spacing = tuple(reversed(img.spacing))[: truth.ndim]
        m = segmentation_metrics(pred, truth, classes, spacing=spacing, fov=fov, surface=surface)
        per_case.append(m)
        for c, vals in m.items():
            res.rows.append({"case": case.id, "class": c, "class_name": lm.class_names.get(c, str(c)), **vals})
    res.summary = summarize(per_case)
    res.seconds_per_case = float(np.mean(times))
    keep_warnings(res.data_warnings)
    return res


def evaluate_run(run: str | Path, data_root: str | Path, split: str = "test", which: str = "best",
                 device: str = "cpu", **kw) -> EvalResult:
    lm = load_run_model(run, which=which, device=device)
    return evaluate_model(lm, data_root, split, name=str(run), **kw)
