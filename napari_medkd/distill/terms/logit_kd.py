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


def class_balance_weights(t_logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel weights ``(B, *spatial)``: the inverse frequency, in this batch, of the class the teacher
    predicts at each pixel, normalised to mean 1, so each predicted class carries the same total weight.
    On vessels (13.5 % foreground) plain pixel-mean KL is mostly a background term that pulls the student
    towards all-background; weighted, foreground and background pixels count alike."""
    with torch.no_grad():
        pred = t_logits.argmax(1)
        counts = torch.bincount(pred.reshape(-1), minlength=t_logits.shape[1]).float()
        present = counts > 0
        inv = torch.where(present, 1.0 / counts.clamp(min=1.0), torch.zeros_like(counts))
        w = inv[pred] * (pred.numel() / float(present.sum()))
    return w


def pixel_kl(s_logits: torch.Tensor, t_logits: torch.Tensor, tau: float = 1.0,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over batch and pixels of ``KL(softmax(t / tau) || softmax(s / tau))`` (no tau^2), each pixel
    weighted by ``weights`` (mean 1) when given."""
    log_t = F.log_softmax(t_logits / tau, dim=1)
    log_s = F.log_softmax(s_logits / tau, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1)
    return (kl * weights).mean() if weights is not None else kl.mean()


def logit_pair(ctx: KDContext, term: str):
    """(student, teacher) logits in fp32, the student resized to the teacher's size; K must match."""
    s = tap(ctx.s, "logits", "student", term).float()
    t = teacher(tap(ctx.t, "logits", "teacher", term))
    if s.shape[1] != t.shape[1]:
        raise ValueError(f"{term}: the student predicts {s.shape[1]} classes but the teacher {t.shape[1]}")
    return resize(s, t.shape[2:]), t


@register_term("logit_kd", paper="Hinton et al. 2015 (per-pixel, CIRKD/EMKD convention)", section="§4")
class LogitKD(DistillTerm):
    """Per-pixel KL between softened teacher and student outputs, scaled by ``tau^2``.

    ``class_balanced=True`` weights each pixel by the inverse batch frequency of the teacher's predicted
    class (:func:`class_balance_weights`), the foreground-weighted KL of issue 12 (a width-0.5 student on
    DRIVE: plain logit KD 0.706, class-balanced 0.769-0.776 Dice). Under loss balancing its target gradient
    is the segmentation gradient's (``BALANCE_RATIO = 1``): a logit term teaches the same decision as the
    labels, so it may pull as hard.
    """

    TAPS = ("logits",)
    BALANCE_RATIO = 1.0

    def __init__(self, teacher_info, student_info, num_classes, tau: float = 1.0, class_balanced: bool = False):
        super().__init__(teacher_info, student_info, num_classes)
        if tau <= 0:
            raise ValueError(f"{type(self).__name__}: tau must be > 0, got {tau}")
        self.tau = float(tau)
        self.class_balanced = bool(class_balanced)

    def forward(self, ctx: KDContext) -> torch.Tensor:
        s, t = logit_pair(ctx, type(self).__name__)
        w = class_balance_weights(t) if self.class_balanced else None
        return self.tau ** 2 * pixel_kl(s, t, self.tau, w)
