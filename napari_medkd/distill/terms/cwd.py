"""Channel-wise distillation (Shu et al., ICCV 2021), methods.md §4.

For each channel ``c``, ``phi(y_c) = softmax over positions of y_c / tau``;
``L = tau^2 / (B C) sum_{b,c} KL(phi(y^T_bc) || phi(y^S_bc))``, summed over ``taps``. This follows
methods.md (TorchDistiller's ``CriterionCWD``): the per-channel spatial softmax, ``tau^2`` scaling,
the mean over batch and channels, and on features a student-side 1x1 conv (+BN) adapter to the
teacher's channels.

Two settings, both from the paper:

- ``taps=("logits",)`` (the default, and the ``cwd`` preset: tau 4, weight 3). Logits need the same
  class count. **What logit-CWD cannot learn:** each channel's softmax runs over positions, so it is
  invariant to adding any constant to a channel (and says nothing about how channels compare at a
  pixel). A student whose background logit is everywhere 100 above the foreground's -- it predicts
  all background -- has zero loss against a teacher with the same per-channel spatial shapes. It
  transfers *where* each class is relatively strong, never the per-pixel foreground/background
  decision; that must come from the segmentation loss (or from logit KD, whose softmax runs over
  classes). ``tests/test_terms_departures.py`` pins this invariance.
- a feature tap (``tap="dec_low"``, or ``taps=("dec_low",)``, or with the logits
  ``taps=("logits", "dec_low")``): the spatial distributions of the teacher's feature channels, which
  carry the decoder's structure rather than the class scores. The student's tap gets a 1x1 conv
  (+BN) adapter to the teacher's channels (``adapter="auto"``: only when the counts differ;
  ``"always"``; or ``"none"``, which needs equal counts). An ``"always"`` adapter between equal
  counts starts as the identity conv. Adapters are this term's parameters: they train with the
  student and are never exported. The student is resized to the teacher's size after the adapter.

``tap`` is shorthand for a single-tap ``taps``; give one or the other.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_taps, conv_cls, pair, register_term, resize
from ._common import tap as tap_of
from .base import DistillTerm, KDContext

LOGIT_TAPS = ("logits",)


def channel_kl(s: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    """``tau^2 * mean_{b,c} KL(softmax_pos(t/tau) || softmax_pos(s/tau))`` for equal shapes."""
    log_t = F.log_softmax(t.flatten(2) / tau, dim=-1)
    log_s = F.log_softmax(s.flatten(2) / tau, dim=-1)
    return tau ** 2 * (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def make_adapter(cs: int, ct: int, spatial_dims: int, bn: bool) -> nn.Module:
    """1x1 conv ``cs -> ct`` (+BN); the identity conv when the counts are equal."""
    conv = conv_cls(spatial_dims)(cs, ct, 1, bias=not bn)
    if cs == ct:
        with torch.no_grad():
            conv.weight.copy_(torch.eye(ct).view(ct, ct, *([1] * spatial_dims)))
            if conv.bias is not None:
                conv.bias.zero_()
    norm = (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(ct) if bn else nn.Identity()
    return nn.Sequential(conv, norm)


def _resolve_taps(tap_name: Optional[str], taps) -> tuple:
    if isinstance(taps, str):
        taps = (taps,)
    if tap_name is not None:
        if tuple(taps) != LOGIT_TAPS:
            raise ValueError(f"cwd: give tap or taps, not both (tap={tap_name!r}, taps={tuple(taps)!r})")
        taps = (tap_name,)
    if not taps:
        raise ValueError("cwd: taps must name at least one tap")
    return tuple(taps)


@register_term("cwd", paper="Shu et al., ICCV 2021 (Channel-wise KD)", section="§4")
class ChannelWiseDistillation(DistillTerm):
    """Channel-wise spatial-distribution KL on logits and/or feature taps (see module doc)."""

    TAPS = LOGIT_TAPS

    def __init__(self, teacher_info, student_info, num_classes, tau: float = 4.0, taps: Sequence[str] = LOGIT_TAPS,
                 adapter: str = "auto", adapter_bn: bool = True, spatial_dims: int = 2, tap: Optional[str] = None):
        super().__init__(teacher_info, student_info, num_classes)
        if tau <= 0:
            raise ValueError(f"cwd: tau must be > 0, got {tau}")
        if adapter not in ("auto", "always", "none"):
            raise ValueError(f"cwd: adapter must be 'auto', 'always' or 'none', got {adapter!r}")
        taps = _resolve_taps(tap, taps)
        check_taps("cwd", taps, teacher_info, student_info)
        self.TAPS, self.tau = taps, float(tau)
        self.adapters = nn.ModuleDict()
        for name in self.TAPS:
            if name == "logits":
                continue
            cs, ct = student_info[name].channels, teacher_info[name].channels
            if adapter == "none" and cs != ct:
                raise ValueError(f"cwd: tap '{name}' has {cs} student and {ct} teacher channels; use an adapter")
            if adapter == "always" or cs != ct:
                self.adapters[name] = make_adapter(cs, ct, spatial_dims, adapter_bn)

    def forward(self, ctx: KDContext) -> torch.Tensor:
        total = 0.0
        for name in self.TAPS:
            if name in self.adapters:
                t = pair(ctx, name, "cwd")[1]
                s = resize(self.adapters[name](tap_of(ctx.s, name, "student", "cwd").float()), t.shape[2:])
            else:
                s, t = pair(ctx, name, "cwd", same_channels=True)
            total = total + channel_kl(s, t, self.tau)
        return total
