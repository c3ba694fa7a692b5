"""Validation of a distilled student where the held-back scans have no labels: its agreement with the
teacher (``metrics.agreement``), so a label-free run still chooses its best checkpoint by something and
says what it measured. The teacher's masks of the validation scans are computed once per run."""
from __future__ import annotations

from typing import Any, Dict, Optional

from ..metrics.agreement import agreement, mean_agreement


def teacher_agreement(task, model, cases, device, slice_axis: int) -> Optional[Dict[str, Any]]:
    """Mean agreement of ``model`` with ``task.teacher`` over ``cases`` (None without cases)."""
    from ..models.predict import predict_labels

    if not cases:
        return None
    memo = task.__dict__.setdefault("_teacher_val_labels", {})
    rows = []
    for c in cases:
        if c.id not in memo:
            memo[c.id] = predict_labels(task.teacher, c.image, fov=c.fov, device=device, slice_axis=slice_axis)
        pred = predict_labels(model, c.image, fov=c.fov, device=device, slice_axis=slice_axis)
        rows.append(agreement(pred, memo[c.id], task.num_classes, spacing=c.reference.spacing, fov=c.fov))
    return mean_agreement(rows)
