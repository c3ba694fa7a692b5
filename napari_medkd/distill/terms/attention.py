"""Attention transfer (Zagoruyko & Komodakis 2017) for segmentation taps (methods.md §4).

``a(F) = normalize(vec(mean_c |F|^p))`` per image; ``L = sum_taps mean_b ||a^S_b - a^T_b||^2``
(EMKD's IMD form, an O(1) value per image). ``reduction="pixel"`` divides by the number of
positions instead (CIRKD's ``at.py``, used there with weight 1e4). Channel-agnostic; the student
tap is resized to the teacher's size first.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ._common import check_taps, pair, register_term
from .base import DistillTerm, KDContext


def attention_map(feat: torch.Tensor, p: float) -> torch.Tensor:
    """(B, C, *sp) -> (B, P): L2-normalised ``mean_c |F|^p``."""
    return F.normalize(feat.abs().pow(p).mean(1).flatten(1), dim=1)


@register_term("attention_transfer", paper="Zagoruyko & Komodakis, ICLR 2017", section="§4")
class AttentionTransfer(DistillTerm):
    """Squared distance of normalised spatial attention maps, summed over ``taps``."""

    TAPS = ("enc_low", "enc_high")
    CONTRACT = {"channel_agnostic": True}

    def __init__(self, teacher_info, student_info, num_classes, p: float = 2.0,
                 taps: Sequence[str] = ("enc_low", "enc_high"), reduction: str = "image"):
        super().__init__(teacher_info, student_info, num_classes)
        name = type(self).__name__
        if reduction not in ("image", "pixel"):
            raise ValueError(f"{name}: reduction must be 'image' or 'pixel', got {reduction!r}")
        if isinstance(taps, str):
            taps = (taps,)
        if not taps:
            raise ValueError(f"{name}: taps must name at least one tap")
        check_taps(name, taps, teacher_info, student_info)
        self.TAPS = tuple(taps)
        self.p, self.reduction = float(p), reduction

    def forward(self, ctx: KDContext) -> torch.Tensor:
        total = 0.0
        for name in self.TAPS:
            s, t = pair(ctx, name, type(self).__name__)
            sq = (attention_map(s, self.p) - attention_map(t, self.p)).pow(2)
            total = total + (sq.sum(1).mean() if self.reduction == "image" else sq.mean())
        return total
