"""GKD domain-invariant cross distillation (DICD) [R], methods.md §2.4.

With ``s^T = E^T(bot^T)`` (frozen teacher MSAN, no grad) and ``s^S = E^S(bot^S)``:

- ``F^{T->S} = D^S(s^T)`` -> ``z^S_hat = student.decode(F^{T->S}, student skips)``: trains the
  student decoder (and the student MSAN decoder when trainable);
- ``F^{S->T} = D^T(s^S)`` -> ``z^T_hat = teacher.decode(F^{S->T}, teacher skips)``: the teacher and
  its MSAN run frozen (eval, ``requires_grad`` off for the call), so gradients reach the student
  encoder through ``s^S`` and never the teacher's weights;
- both are supervised by the teacher prediction
  ``tau^2 * mean_pixels KL(softmax(z^T / tau) || softmax(z_hat / tau))`` [R: the loss type].

Returns ``w_student * L(z^S_hat) + w_teacher * L(z^T_hat)``; ``last_parts`` holds both.

Cost: the student's skips are needed, so the term calls ``ctx.student.encode(ctx.image)`` once
more (with gradients) and ``ctx.teacher.encode`` once (no grad), plus one student and one
teacher decoder pass. Callers that already have them can pass ``ctx.extra["student_encoding"]``
/ ``ctx.extra["teacher_encoding"]`` as ``(bottleneck, skips)`` to skip the encoder passes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...registry import TERMS
from .base import KDContext
from .gkd_msan import GKDTerm, frozen, resize


def pixel_kd(z_teacher: torch.Tensor, z_student: torch.Tensor, tau: float) -> torch.Tensor:
    """``tau^2 * mean over (B, pixels) of KL(softmax(z_t/tau) || softmax(z_s/tau))`` over classes."""
    if z_student.shape[2:] != z_teacher.shape[2:]:
        z_student = resize(z_student, z_teacher.shape[2:])
    logp_t = F.log_softmax(z_teacher.float() / tau, dim=1)
    logp_s = F.log_softmax(z_student.float() / tau, dim=1)
    return tau * tau * (logp_t.exp() * (logp_t - logp_s)).sum(1).mean()


@TERMS.register("gkd_dicd", paper="Qi et al., JBHI 2024 (GKD, arXiv 2207.12995) [R]",
                section="§2.4",
                defaults={"tau": 1.0, "w_student": 1.0, "w_teacher": 1.0, "dim": 512, "grid": 8, "hidden": 64,
                          "train_student_msan": True, "spatial_dims": 2, "alignment": None})
class DICDTerm(GKDTerm):
    TAPS = ("logits",)

    def __init__(self, teacher_info, student_info, num_classes, tau: float = 1.0, w_student: float = 1.0,
                 w_teacher: float = 1.0, alignment=None, **alignment_kw):
        super().__init__(teacher_info, student_info, num_classes, alignment=alignment, **alignment_kw)
        if tau <= 0:
            raise ValueError(f"gkd_dicd: tau must be > 0, got {tau}")
        self.tau, self.w_student, self.w_teacher = float(tau), float(w_student), float(w_teacher)
        self.last_parts = {}

    def forward(self, ctx: KDContext) -> torch.Tensor:
        if ctx.student is None or ctx.teacher is None:
            raise ValueError("gkd_dicd needs ctx.student and ctx.teacher (it exchanges their bottlenecks)")
        bot_s, skips_s = ctx.extra.get("student_encoding") or ctx.student.encode(ctx.image)
        with torch.no_grad(), frozen(ctx.teacher):
            bot_t, skips_t = ctx.extra.get("teacher_encoding") or ctx.teacher.encode(ctx.image)
        bot_t, skips_t = bot_t.detach(), [s.detach() for s in skips_t]
        t_msan, s_msan = self.alignment.teacher_msan, self.alignment.student_msan
        with torch.no_grad(), frozen(t_msan):
            sem_t = t_msan.encode(bot_t)
        sem_s = s_msan.encode(bot_s)
        feat_ts = s_msan.decode(sem_t, bot_s.shape[2:]).to(bot_s.dtype)
        z_hat_s = ctx.student.decode(feat_ts, skips_s)
        with frozen(ctx.teacher), frozen(t_msan):
            feat_st = t_msan.decode(sem_s, bot_t.shape[2:]).to(bot_t.dtype)
            z_hat_t = ctx.teacher.decode(feat_st, skips_t)
        z_t = ctx.t["logits"].detach()
        cross_s, cross_t = pixel_kd(z_t, z_hat_s, self.tau), pixel_kd(z_t, z_hat_t, self.tau)
        self.last_parts = {"cross_student": cross_s.detach(), "cross_teacher": cross_t.detach()}
        return self.w_student * cross_s + self.w_teacher * cross_t
