"""EMKD (Qin et al., TMI 2021; ``EagleMIT/EMKD`` ``utils/loss_functions.py``), methods.md §2.1.

- ``emkd_pmd``: prediction-map distillation = per-pixel logit KD at ``tau = 4``.
- ``emkd_imd``: importance-map distillation = attention transfer at ``p = 4`` over the low and
  high encoder taps, ``mean_b ||a^S - a^T||^2`` summed over the taps.
- ``emkd_rad``: region affinity distillation. Ground-truth masks (teacher argmax for unlabelled
  samples) nearest-resized to each tap; region prototypes ``r_k = sum F M_k / (sum M_k + s_k)``
  with ``s = 0`` for background and ``fg_smooth`` (1) for the other classes; the K x K cosine
  matrix of the prototypes; ``(A^S - A^T)^2`` averaged over the off-diagonal class pairs present
  in the image (0 when fewer than two classes are), then over the batch; summed over the taps.
  For K = 2 this is the release's ``mean_b (cos^S - cos^T)^2`` (where the release would divide
  by an empty background this gives 0 instead of NaN).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ._common import (check_region_source, check_taps, class_masks, cosine_affinity, masked_mean, pair,
                      pair_mask, region_labels, region_prototypes, register_term)
from .attention import AttentionTransfer
from .base import DistillTerm, KDContext
from .logit_kd import LogitKD

EMKD_PAPER = "Qin et al., TMI 2021 (EMKD)"


@register_term("emkd_pmd", paper=EMKD_PAPER + ": prediction-map distillation", section="§2.1")
class EMKDPredictionMap(LogitKD):
    """Logit KD with EMKD's temperature."""

    def __init__(self, teacher_info, student_info, num_classes, tau: float = 4.0):
        super().__init__(teacher_info, student_info, num_classes, tau=tau)


@register_term("emkd_imd", paper=EMKD_PAPER + ": importance-map distillation", section="§2.1")
class EMKDImportanceMap(AttentionTransfer):
    """Attention transfer with EMKD's exponent and taps."""

    def __init__(self, teacher_info, student_info, num_classes, p: float = 4.0,
                 taps: Sequence[str] = ("enc_low", "enc_high")):
        super().__init__(teacher_info, student_info, num_classes, p=p, taps=taps, reduction="image")


def region_affinity_loss(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, num_classes: int,
                         fg_smooth: float = 1.0) -> torch.Tensor:
    """RAD on one tap pair of equal spatial size; ``labels`` (B, *sp) at that size."""
    masks = class_masks(labels, num_classes)
    smooth = [0.0] + [float(fg_smooth)] * (num_classes - 1)
    a_s = cosine_affinity(region_prototypes(s, masks, smooth))
    a_t = cosine_affinity(region_prototypes(t, masks, smooth))
    present = masks.flatten(2).sum(-1) > 0
    return masked_mean((a_s - a_t).pow(2), pair_mask(present))


@register_term("emkd_rad", paper=EMKD_PAPER + ": region affinity distillation", section="§2.1")
class EMKDRegionAffinity(DistillTerm):
    """Squared difference of class-prototype cosine affinities (see module doc)."""

    TAPS = ("enc_low", "enc_high")
    CONTRACT = {"channel_agnostic": True}

    def __init__(self, teacher_info, student_info, num_classes, taps: Sequence[str] = ("enc_low", "enc_high"),
                 region_source: str = "gt", fg_smooth: float = 1.0):
        super().__init__(teacher_info, student_info, num_classes)
        if isinstance(taps, str):
            taps = (taps,)
        if not taps:
            raise ValueError("emkd_rad: taps must name at least one tap")
        if self.num_classes < 2:
            raise ValueError(f"emkd_rad needs at least 2 classes, got {num_classes}")
        check_taps("emkd_rad", taps, teacher_info, student_info)
        self.TAPS = tuple(taps)
        self.region_source = check_region_source("emkd_rad", region_source)
        self.fg_smooth = float(fg_smooth)

    def forward(self, ctx: KDContext) -> torch.Tensor:
        total = 0.0
        for name in self.TAPS:
            s, t = pair(ctx, name, "emkd_rad")
            labels = region_labels(ctx, t.shape[2:], self.num_classes, self.region_source)
            total = total + region_affinity_loss(s, t, labels, self.num_classes, self.fg_smooth)
        return total
