"""Evaluation without labels: how far a student agrees with its teacher on scans, beside ground truth where
masks exist, in a report that says which of the two was measured (issue 13, item 3).

    medkd agreement --student runs/from_onnx --teacher model.onnx --data scans/ [--labels masks/] --out eval/

Student and teacher are opened alike (``teachers.open_teacher``: a run folder, an ONNX or TorchScript file,
a bundle), fed the student's preprocessing (refused, naming the differences, when the teacher's differs)
and compared per scan with ``metrics.agreement``: Dice per class between their masks, the share of voxels
with the same label, the volume where they differ; scans with a mask also get each model's Dice against it.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..metrics.agreement import agreement, mean_agreement
from ..metrics.overlap import dice_per_class


@dataclass
class AgreementReport:
    student: str
    teacher: str
    rows: List[Dict[str, Any]] = field(default_factory=list)
    summary: Dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        s = self.summary
        agr = s["agreement"]
        lines = [f"{self.student} against the teacher {self.teacher}: {s['measured']}",
                 f"agreement with the teacher ({agr['cases']} scans): Dice per class {_fmt(agr.get('dice'))}, "
                 f"mean {agr.get('dice_mean', math.nan):.4f}; voxels {agr.get('voxel_agreement', math.nan):.4f}; "
                 f"disagreement {agr.get('disagreement_ml') or 0:.2f} ml per scan"]
        gt = s.get("ground_truth")
        if gt:
            lines.append(f"ground truth ({gt['cases']} scans with masks): Dice student {gt['student']:.4f}, "
                         f"teacher {gt['teacher']:.4f}")
        return "\n".join(lines)

    def write(self, folder) -> None:
        from ..io.atomic import write_text_atomic
        from ..io.jsonsafe import dumps

        folder = Path(folder)
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(keys)
        writer.writerows([[_cell(r.get(k)) for k in keys] for r in self.rows])
        write_text_atomic(folder / "agreement_per_case.csv", buf.getvalue())
        write_text_atomic(folder / "agreement.json", dumps({"student": self.student, "teacher": self.teacher,
                                                            **self.summary}, indent=1))


def _fmt(d: Optional[Dict[str, float]]) -> str:
    return "{" + ", ".join(f"{k}: {v:.4f}" for k, v in (d or {}).items()) + "}"


def _cell(v: Any) -> str:
    return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))


def _row(case_id: str, s_lab: np.ndarray, t_lab: np.ndarray, prep, k: int) -> Dict[str, Any]:
    a = agreement(s_lab, t_lab, k, spacing=prep.reference.spacing, fov=prep.fov)
    row = {"case": case_id, **{f"agree_dice_{c}": v for c, v in a["dice"].items()},
           **{key: a[key] for key in ("dice_mean", "voxel_agreement", "disagreement_voxels", "disagreement_ml")}}
    row["agree_dice_mean"] = row.pop("dice_mean")
    if prep.label is not None:
        row["gt_dice_student"] = float(np.mean(dice_per_class(s_lab, prep.label, k, fov=prep.fov)))
        row["gt_dice_teacher"] = float(np.mean(dice_per_class(t_lab, prep.label, k, fov=prep.fov)))
    return row


def compare_with_teacher(student, teacher, data, *, labels=None, split: Optional[str] = None,
                         teacher_preprocess: Optional[Dict[str, Any]] = None, device: Any = "cpu") -> AgreementReport:
    """Agreement of ``student`` with ``teacher`` on the scans of ``data`` (``split`` of a data set, or all),
    and Dice against the masks there are (``labels``: masks for a plain folder of scans)."""
    from ..data.datasets import load_dataset
    from ..data.label_folder import attach_labels
    from ..data.prepare import PreprocessConfig, prepare_case
    from ..distill.task import check_compatible
    from ..models.predict import predict_labels
    from ..teachers import open_teacher

    s, t = open_teacher(student, device=device), open_teacher(teacher, preprocess=teacher_preprocess, device=device)
    k = int(s.card.num_classes)
    check_compatible(t.card, k, int(s.card.in_channels), s.card.preprocess)
    spec = attach_labels(load_dataset(data), labels)
    cases = spec.split(split) if split else spec.cases
    if not cases:
        raise ValueError(f"{data}: no scans{f' in the {split!r} split' if split else ''} to compare on")
    pcfg = PreprocessConfig.from_dict(s.card.preprocess)
    report = AgreementReport(str(student), str(teacher))
    for case in cases:
        prep = prepare_case(case, pcfg)
        labs = [predict_labels(m.module, prep.image, fov=prep.fov, device=device, slice_axis=pcfg.slice_axis)
                for m in (s, t)]
        report.rows.append(_row(case.id, labs[0], labs[1], prep, k))
    report.summary = _summary(report.rows, cases)
    return report


def _summary(rows: List[Dict[str, Any]], cases) -> Dict[str, Any]:
    agr = mean_agreement([{"dice": {c[len("agree_dice_"):]: r[c] for c in r if c.startswith("agree_dice_")
                                    and c != "agree_dice_mean"},
                           "dice_mean": r["agree_dice_mean"], "voxel_agreement": r["voxel_agreement"],
                           "disagreement_voxels": r["disagreement_voxels"],
                           "disagreement_ml": r["disagreement_ml"]} for r in rows])
    with_gt = [r for r in rows if "gt_dice_student" in r]
    gt = {"cases": len(with_gt), "student": float(np.mean([r["gt_dice_student"] for r in with_gt])),
          "teacher": float(np.mean([r["gt_dice_teacher"] for r in with_gt]))} if with_gt else None
    measured = (f"agreement with the teacher on {len(rows)} scans; Dice against ground truth on the "
                f"{len(with_gt)} with masks") if with_gt else \
        f"agreement with the teacher on {len(rows)} scans only: none has a mask, no ground-truth metric was measured"
    return {"measured": measured, "agreement": agr, "ground_truth": gt,
            "cases": [str(c.id) for c in cases]}

