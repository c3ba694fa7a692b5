"""Logit KD (Hinton et al. 2015) applied per pixel (methods.md §4).

``L = tau^2 * mean_pixels KL(softmax(z^T / tau) || softmax(z^S / tau))``. Teachers that emit
log-softmax (EMKD's RAUNet) give the same loss, because ``log_softmax(z)`` differs from ``z`` by a
per-pixel constant (§6.6). Do not feed probabilities.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import register_term, resize, tap, teacher
from .base import DistillTerm, KDContext


def pixel_kl(s_logits: torch.Tensor, t_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Mean over batch and pixels of ``KL(softmax(t / tau) || softmax(s / tau))`` (no tau^2)."""
    log_t = F.log_softmax(t_logits / tau, dim=1)
    log_s = F.log_softmax(s_logits / tau, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(1).mean()


def logit_pair(ctx: KDContext, term: str):
    """(student, teacher) logits in fp32, the student resized to the teacher's size; K must match."""
    s = tap(ctx.s, "logits", "student", term).float()
    t = teacher(tap(ctx.t, "logits", "teacher", term))
    if s.shape[1] != t.shape[1]:
        raise ValueError(f"{term}: the student predicts {s.shape[1]} classes but the teacher {t.shape[1]}")
    return resize(s, t.shape[2:]), t


@register_term("logit_kd", paper="Hinton et al. 2015 (per-pixel, CIRKD/EMKD convention)", section="§4")
class LogitKD(DistillTerm):
    """Per-pixel KL between softened teacher and student outputs, scaled by ``tau^2``."""

    TAPS = ("logits",)

    def __init__(self, teacher_info, student_info, num_classes, tau: float = 1.0):
        super().__init__(teacher_info, student_info, num_classes)
        if tau <= 0:
            raise ValueError(f"{type(self).__name__}: tau must be > 0, got {tau}")
        self.tau = float(tau)

    def forward(self, ctx: KDContext) -> torch.Tensor:
        s, t = logit_pair(ctx, type(self).__name__)
        return self.tau ** 2 * pixel_kl(s, t, self.tau)
