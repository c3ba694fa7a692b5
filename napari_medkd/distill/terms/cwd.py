"""Channel-wise distillation (Shu et al., ICCV 2021), methods.md §4.

For each channel ``c``, ``phi(y_c) = softmax over positions of y_c / tau``;
``L = tau^2 / (B C) sum_{b,c} KL(phi(y^T_bc) || phi(y^S_bc))``, summed over ``taps``.
Logits need the same class count. A feature tap gets a student-side 1x1 conv (+BN) adapter to
the teacher's channels (``adapter="auto"``: only when the counts differ; ``"always"``; or
``"none"``, which needs equal counts). Adapters are this term's parameters: they train with the
student and are never exported. The student is resized to the teacher's size after the adapter.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_taps, conv_cls, pair, register_term, resize, tap
from .base import DistillTerm, KDContext


def channel_kl(s: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    """``tau^2 * mean_{b,c} KL(softmax_pos(t/tau) || softmax_pos(s/tau))`` for equal shapes."""
    log_t = F.log_softmax(t.flatten(2) / tau, dim=-1)
    log_s = F.log_softmax(s.flatten(2) / tau, dim=-1)
    return tau ** 2 * (log_t.exp() * (log_t - log_s)).sum(-1).mean()


@register_term("cwd", paper="Shu et al., ICCV 2021 (Channel-wise KD)", section="§4")
class ChannelWiseDistillation(DistillTerm):
    """Channel-wise spatial-distribution KL on logits and/or feature taps (see module doc)."""

    TAPS = ("logits",)

    def __init__(self, teacher_info, student_info, num_classes, tau: float = 4.0, taps: Sequence[str] = ("logits",),
                 adapter: str = "auto", adapter_bn: bool = True, spatial_dims: int = 2):
        super().__init__(teacher_info, student_info, num_classes)
        if tau <= 0:
            raise ValueError(f"cwd: tau must be > 0, got {tau}")
        if adapter not in ("auto", "always", "none"):
            raise ValueError(f"cwd: adapter must be 'auto', 'always' or 'none', got {adapter!r}")
        if isinstance(taps, str):
            taps = (taps,)
        if not taps:
            raise ValueError("cwd: taps must name at least one tap")
        check_taps("cwd", taps, teacher_info, student_info)
        self.TAPS, self.tau = tuple(taps), float(tau)
        self.adapters = nn.ModuleDict()
        for name in self.TAPS:
            if name == "logits":
                continue
            cs, ct = student_info[name].channels, teacher_info[name].channels
            if adapter == "none" and cs != ct:
                raise ValueError(f"cwd: tap '{name}' has {cs} student and {ct} teacher channels; use an adapter")
            if adapter == "always" or cs != ct:
                conv = conv_cls(spatial_dims)
                bn = (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(ct) if adapter_bn else nn.Identity()
                self.adapters[name] = nn.Sequential(conv(cs, ct, 1, bias=not adapter_bn), bn)

    def forward(self, ctx: KDContext) -> torch.Tensor:
        total = 0.0
        for name in self.TAPS:
            if name in self.adapters:
                t = pair(ctx, name, "cwd")[1]
                s = resize(self.adapters[name](tap(ctx.s, name, "student", "cwd").float()), t.shape[2:])
            else:
                s, t = pair(ctx, name, "cwd", same_channels=True)
            total = total + channel_kl(s, t, self.tau)
        return total
