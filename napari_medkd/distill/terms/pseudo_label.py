"""Offline pseudo-labels (Lee 2013): the student trained with Dice + CE on the teacher's hard predictions.

The label-scarce baseline any KD method must beat: the frozen teacher labels every unlabelled image
(``argmax`` of its logits; with ``distill.cache_teacher`` once per image, i.e. truly offline), and those
masks are used as if a person had drawn them. Samples with a real mask keep their own loss (the
segmentation loss) and get none here; with no ``labelled`` flags every sample is pseudo-labelled.
Unlike soft-target KD it is not zero where the soft outputs agree (a hard-label loss never is), so the
tap-only contract does not apply; ``tests/test_kd_plumbing.py`` covers it.
"""
from __future__ import annotations

import torch

from ._common import register_term, tap, teacher
from .base import DistillTerm, KDContext
from .logit_kd import logit_pair


@register_term("pseudo_label", paper="Lee 2013 (offline pseudo-labels from the teacher)", section="§4 (label-scarce baseline)")
class PseudoLabel(DistillTerm):
    """Dice + CE (MONAI ``DiceCELoss``) of the student against the teacher's argmax on unlabelled samples."""

    TAPS = ("logits",)
    BALANCE_RATIO = 1.0
    CONTRACT = {"skip": "a hard-label loss: not zero where teacher and student outputs agree softly"}

    def __init__(self, teacher_info, student_info, num_classes):
        super().__init__(teacher_info, student_info, num_classes)
        from monai.losses import DiceCELoss

        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward(self, ctx: KDContext) -> torch.Tensor:
        s, t = logit_pair(ctx, type(self).__name__)
        keep = ctx.labelled
        if keep is not None:
            keep = ~keep.bool()
            if not bool(keep.any()):
                return tap(ctx.s, "logits", "student", "PseudoLabel").sum() * 0.0
            s, t = s[keep], t[keep]
        return self.loss(s, teacher(t).argmax(1, keepdim=True))
