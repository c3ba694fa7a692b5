"""GKD dual contrastive graph distillation (DCGD) [R], methods.md §2.4.

For each image ``i`` of the batch the anchor is the image itself (its bottleneck from the
``bottleneck`` tap) and ``K`` augmented views come from ``ctx.extra["views"]`` (a list of ``K``
image tensors, or a ``(K, B, ...)`` tensor) or, by default, are drawn here with random flips,
rot90 and intensity jitter. Every bottleneck goes through the model's MSAN encoder and is
L2-normalised (``s^T`` with the frozen teacher MSAN under ``no_grad``, ``s^S`` with the student
MSAN, gradients flowing to the student encoder and, if trainable, its MSAN). With ``center``
(default, an [R] choice) each model's vectors are first centred on their mean over the graph's
nodes: MSAN vectors share a large common component (cosines of different images are ~0.99), and
without centring every softmax at tau = 0.1 is nearly uniform and the loss carries no signal.

- intra-coupling (star graph): ``P_i = softmax_j(<s_{i,0}, s_j> / tau)`` over all ``B*K`` views
  of the batch (the anchor's own views are the positives, other samples' views the negatives);
- inter-coupling (complete graph): ``Q = row-softmax(S S^T / tau)`` over all ``B*(K+1)`` vectors
  (anchors and views; including the anchors keeps the graph non-trivial at ``B = 1``), the
  diagonal removed;
- ``L = KL(P^T || P^S) + KL(Q^T || Q^S)`` (row means). ``last_parts`` holds both parts.

Cost per iteration: one extra student and one extra (no-grad) teacher encoder pass over the
``B*K`` views. With ``B = 1`` the intra graph covers the image's own views only; nothing
divides by the batch size, so the loss stays finite.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F

from ...registry import TERMS
from .base import KDContext
from .gkd_msan import GKDTerm, augment, frozen


def coupling_logits(vectors: torch.Tensor, batch: int, views: int,
                    tau: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the intra (B, B*K) and inter (N, N-1) coupling graphs.

    ``vectors`` is ``(B*(K+1), d)``, L2-normalised, ordered as the ``B`` anchors followed by the
    views view-major (view ``k`` of sample ``i`` at row ``B + k*B + i``).
    """
    anchors, rest = vectors[:batch], vectors[batch:]
    if rest.shape[0] != batch * views:
        raise ValueError(f"DCGD expects {batch * views} view vectors, got {rest.shape[0]}")
    intra = F.log_softmax(anchors @ rest.t() / tau, dim=1)
    n = vectors.shape[0]
    sim = vectors @ vectors.t() / tau
    off = ~torch.eye(n, dtype=torch.bool, device=vectors.device)
    inter = F.log_softmax(sim[off].view(n, n - 1), dim=1)
    return intra, inter


def kl_rows(logp_t: torch.Tensor, logp_s: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(p_t || p_s) given log-probabilities."""
    return (logp_t.exp() * (logp_t - logp_s)).sum(1).mean()


@TERMS.register("gkd_dcgd", paper="Qi et al., JBHI 2024 (GKD, arXiv 2207.12995) [R]",
                section="§2.4",
                defaults={"tau": 0.1, "num_views": 2, "jitter": 0.1, "dim": 512, "grid": 8, "hidden": 64,
                          "train_student_msan": True, "spatial_dims": 2, "center": True, "alignment": None})
class DCGDTerm(GKDTerm):
    TAPS = ("bottleneck",)

    def __init__(self, teacher_info, student_info, num_classes, tau: float = 0.1, num_views: int = 2,
                 jitter: float = 0.1, center: bool = True, alignment=None, **alignment_kw):
        super().__init__(teacher_info, student_info, num_classes, alignment=alignment, **alignment_kw)
        if tau <= 0 or num_views < 1:
            raise ValueError(f"gkd_dcgd: tau must be > 0 and num_views >= 1, got tau={tau}, "
                             f"num_views={num_views}")
        self.tau, self.num_views, self.jitter = float(tau), int(num_views), float(jitter)
        self.center = bool(center)
        self.last_parts = {}

    def _views(self, ctx: KDContext) -> List[torch.Tensor]:
        views = ctx.extra.get("views")
        if views is None:
            return [augment(ctx.image, self.jitter) for _ in range(self.num_views)]
        views = list(views)
        for v in views:
            if v.shape[0] != ctx.image.shape[0] or v.shape[1] != ctx.image.shape[1]:
                raise ValueError(f"gkd_dcgd: ctx.extra['views'] entries must be (B, C, ...) like the image "
                                 f"{tuple(ctx.image.shape)}, got {tuple(v.shape)}")
        return views

    def _semantic(self, bottlenecks: List[torch.Tensor], teacher: bool) -> torch.Tensor:
        if teacher:
            with torch.no_grad(), frozen(self.alignment.teacher_msan):
                vec = torch.cat([self.alignment.teacher_msan.encode(b.detach()) for b in bottlenecks])
        else:
            vec = torch.cat([self.alignment.student_msan.encode(b) for b in bottlenecks])
        if self.center:
            vec = vec - vec.mean(0, keepdim=True)
        return F.normalize(vec, dim=1, eps=1e-8)

    def forward(self, ctx: KDContext) -> torch.Tensor:
        if ctx.student is None or ctx.teacher is None:
            raise ValueError("gkd_dcgd needs ctx.student and ctx.teacher to encode the augmented views")
        views = self._views(ctx)
        same = all(v.shape == views[0].shape for v in views)
        chunks = [torch.cat(views)] if same else views
        bot_s = [ctx.s["bottleneck"] if "bottleneck" in ctx.s else ctx.student.encode(ctx.image)[0]]
        bot_s += [ctx.student.encode(c)[0] for c in chunks]
        with torch.no_grad(), frozen(ctx.teacher):
            bot_t = [ctx.t["bottleneck"] if "bottleneck" in ctx.t else ctx.teacher.encode(ctx.image)[0]]
            bot_t += [ctx.teacher.encode(c)[0] for c in chunks]
        s_t, s_s = self._semantic(bot_t, True), self._semantic(bot_s, False)
        b, k = ctx.image.shape[0], len(views)
        intra_t, inter_t = coupling_logits(s_t, b, k, self.tau)
        intra_s, inter_s = coupling_logits(s_s, b, k, self.tau)
        intra, inter = kl_rows(intra_t, intra_s), kl_rows(inter_t, inter_s)
        self.last_parts = {"intra": intra.detach(), "inter": inter.detach()}
        return intra + inter
