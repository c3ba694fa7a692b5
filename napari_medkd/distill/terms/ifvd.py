"""Intra-class feature variation distillation (Wang et al., ECCV 2020), methods.md §4.

Per image and model: class prototypes are masked means of the tap over the nearest-downsampled
ground truth (teacher argmax for unlabelled samples, ``region_source``); each pixel's map value is
the cosine between its feature and its own class prototype; ``L = MSE(m^S, m^T)`` over pixels
with a valid class. Channel-agnostic; the student tap is resized to the teacher's size first.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import (check_region_source, check_taps, class_masks, matmul32, pair, region_labels,
                      region_prototypes, register_term)
from .base import DistillTerm, KDContext


def variation_map(feat: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B, C, *sp), (B, K, *sp) -> (B, P): cosine of each pixel to its class prototype."""
    protos = region_prototypes(feat, masks)                       # (B, K, C)
    own = matmul32(protos.transpose(1, 2), masks.flatten(2))      # (B, C, P)
    return F.cosine_similarity(feat.flatten(2), own, dim=1, eps=1e-8)


@register_term("ifvd", paper="Wang et al., ECCV 2020 (IFVD)", section="§4")
class IFVD(DistillTerm):
    """MSE between student and teacher pixel-to-prototype cosine maps."""

    TAPS = ("dec_low",)
    CONTRACT = {"channel_agnostic": True}
    NEEDS_LABELS = False  # falls back to the teacher's argmax

    def __init__(self, teacher_info, student_info, num_classes, tap: str = "dec_low", region_source: str = "gt"):
        super().__init__(teacher_info, student_info, num_classes)
        check_taps("ifvd", [tap], teacher_info, student_info)
        self.TAPS, self.region_source = (tap,), check_region_source("ifvd", region_source)

    def forward(self, ctx: KDContext) -> torch.Tensor:
        s, t = pair(ctx, self.TAPS[0], "ifvd")
        labels = region_labels(ctx, t.shape[2:], self.num_classes, self.region_source)
        masks = class_masks(labels, self.num_classes)
        valid = (labels >= 0).flatten(1).float()
        sq = (variation_map(s, masks) - variation_map(t, masks)).pow(2)
        return (sq * valid).sum() / valid.sum().clamp_min(1.0)
