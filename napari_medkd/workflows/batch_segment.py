"""Segment a folder with a run's model, write each mask with its image's geometry, and a CSV of what
was found: per case and class the volume (ml, or mm² for 2D images) and, when a labels folder is
given, Dice and HD95 (mm) against the label of the same file name ("nan" where the class is in
neither: not defined). napari's batch panel calls it;
``inference.batch.run_batch`` does the planning, locking and per-file failures."""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

METRICS_CSV = "metrics.csv"
COLUMNS = ("case", "class", "class_name", "volume", "volume_unit", "dice", "hd95_mm", "seconds", "mask")


@dataclass
class BatchResult:
    report: Any                        # inference.batch.BatchReport
    csv_path: Path
    rows: List[Dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.report.summary()}; metrics in {self.csv_path}"


def _truth_for(src: Path, labels_dir: Optional[Path]) -> Optional[Path]:
    if labels_dir is None:
        return None
    for cand in (labels_dir / src.name, *sorted(labels_dir.glob(src.name.split(".")[0] + "*"))):
        if cand.is_file():
            return cand
    return None


def case_rows(pred, names: Dict[int, str], truth_path: Optional[Path]) -> List[Dict[str, Any]]:
    """One row per foreground class of one written prediction."""
    from ..analysis.compare import pair_metrics
    from ..data.datasets import load_label

    img, labels = pred.reference, np.asarray(pred.labels)
    spacing = tuple(reversed(img.spacing))[: labels.ndim]
    voxel = float(np.prod(spacing))
    classes = [c for c in sorted(names) if c != 0]
    metrics = {}
    if truth_path is not None:
        truth = load_label(truth_path)
        metrics = pair_metrics(labels, truth, classes, spacing) if truth.shape == labels.shape else {}
    unit = "ml" if labels.ndim == 3 else "mm2"
    rows = []
    for c in classes:
        vol = float((labels == c).sum()) * voxel / (1000.0 if unit == "ml" else 1.0)
        m = metrics.get(c, {})
        rows.append({"case": pred.source.name, "class": c, "class_name": names.get(c, str(c)),
                     "volume": round(vol, 4), "volume_unit": unit,
                     "dice": m.get("dice", math.nan), "hd95_mm": m.get("hd95", math.nan),
                     "seconds": round(pred.seconds, 3), "mask": str(pred.output or "")})
    return rows


def segment_folder(run_dir, src, output, labels_dir=None, overwrite: bool = False,
                   on_result: Optional[Callable[[Any], None]] = None) -> BatchResult:
    """Every image of ``src`` segmented by the run's model into ``output`` (geometry kept), after the
    guard (``inference.fit``: a file the model does not fit fails with the reason, the batch goes on);
    ``output/metrics.csv`` holds the rows."""
    from ..inference.batch import BatchError, run_batch
    from ..inference.fit import check_fits
    from ..inference.predict_files import Prediction, predict_image
    from ..io.image_io import read_image, write_mask
    from ..train.run_model import load_run_model

    lm = load_run_model(run_dir)
    output, labels_dir = Path(output), (Path(labels_dir) if labels_dir else None)
    rows: List[Dict[str, Any]] = []

    def one(f: Path, target: Path):
        img = read_image(f)
        check_fits(lm.card, img, f"the model of {Path(run_dir).name}")
        t0 = time.perf_counter()
        labels = predict_image(lm, img)
        pred = Prediction(f, labels, img, time.perf_counter() - t0, target)
        write_mask(labels, target, reference=img, overwrite=overwrite)
        rows.extend(case_rows(pred, lm.class_names, _truth_for(f, labels_dir)))
        if on_result is not None:
            on_result(pred)
        return pred

    try:
        report = run_batch(Path(src), output, one, overwrite=overwrite)
    except BatchError as exc:
        report = exc.report
    output.mkdir(parents=True, exist_ok=True)
    csv_path = output / METRICS_CSV
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return BatchResult(report, csv_path, rows)
