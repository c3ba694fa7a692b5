"""Structured KD (Liu et al., CVPR 2019 / TPAMI 2020), methods.md §4.

- ``skd_pixel``: soft-target cross-entropy ``-sum_k p^T log p^S`` at ``tau``, mean over pixels.
  With ``subtract_entropy`` (default) the teacher's entropy is subtracted, i.e. ``KL(p^T||p^S)``:
  same gradient, but 0 when the student matches.
- ``skd_pairwise``: max-pool a tap into ``patch``-sized nodes (grown to at most ``max_nodes``;
  ``pool_scale`` gives SKD's original kernel = scale x size instead), L2-normalise along C,
  cosine affinity ``A`` (N x N), ``L = sum (A^S - A^T)^2 / N^2 / B``. Channel-agnostic.
- ``skd_holistic``: WGAN-GP with a SAGAN discriminator (:mod:`.discriminator`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ._common import MAX_NODES, check_taps, cosine_affinity, pair, pool_nodes, register_term
from .base import DistillTerm, KDContext
from .discriminator import AdversarialTerm
from .logit_kd import logit_pair

SKD_PAPER = "Liu et al., CVPR 2019 (Structured KD)"


@register_term("skd_pixel", paper=SKD_PAPER + ": pixel-wise", section="§4")
class SKDPixel(DistillTerm):
    """Soft-target cross-entropy per pixel (minus the teacher's entropy by default)."""

    TAPS = ("logits",)

    def __init__(self, teacher_info, student_info, num_classes, tau: float = 1.0, subtract_entropy: bool = True):
        super().__init__(teacher_info, student_info, num_classes)
        if tau <= 0:
            raise ValueError(f"skd_pixel: tau must be > 0, got {tau}")
        self.tau, self.subtract_entropy = float(tau), bool(subtract_entropy)

    def forward(self, ctx: KDContext) -> torch.Tensor:
        s, t = logit_pair(ctx, "skd_pixel")
        log_t = F.log_softmax(t / self.tau, dim=1)
        log_s = F.log_softmax(s / self.tau, dim=1)
        target = log_t - log_s if self.subtract_entropy else -log_s
        return (log_t.exp() * target).sum(1).mean()


@register_term("skd_pairwise", paper=SKD_PAPER + ": pair-wise", section="§4")
class SKDPairwise(DistillTerm):
    """Squared difference of patch-node cosine affinities (mean over node pairs and batch)."""

    TAPS = ("bottleneck",)
    CONTRACT = {"channel_agnostic": True}

    def __init__(self, teacher_info, student_info, num_classes, tap: str = "bottleneck", patch: int = 2,
                 pool_scale: Optional[float] = None, max_nodes: int = MAX_NODES):
        super().__init__(teacher_info, student_info, num_classes)
        check_taps("skd_pairwise", [tap], teacher_info, student_info)
        if pool_scale is not None and not 0 < pool_scale <= 1:
            raise ValueError(f"skd_pairwise: pool_scale must be in (0, 1], got {pool_scale}")
        self.TAPS = (tap,)
        self.patch, self.pool_scale, self.max_nodes = int(patch), pool_scale, int(max_nodes)

    def _patch(self, size: Sequence[int]) -> int:
        if self.pool_scale is None:
            return self.patch
        return max(1, math.ceil(max(size) * self.pool_scale))

    def forward(self, ctx: KDContext) -> torch.Tensor:
        s, t = pair(ctx, self.TAPS[0], "skd_pairwise")
        p = self._patch(t.shape[2:])
        a_s = cosine_affinity(pool_nodes(s, p, "max", self.max_nodes))
        a_t = cosine_affinity(pool_nodes(t, p, "max", self.max_nodes))
        return (a_s - a_t).pow(2).mean()


@register_term("skd_holistic", paper=SKD_PAPER + ": holistic (WGAN-GP)", section="§4")
class SKDHolistic(AdversarialTerm):
    """SKD's holistic term: Graph Flow's adversarial term with SKD's discriminator settings.

    SKD trains its discriminator with SGD (lr 4e-4, momentum 0.9); the engine's discriminator
    optimiser is Adam, so ``d_lr`` 4e-4 is used with Adam betas (0.9, 0.99).
    """

    def __init__(self, teacher_info, student_info, num_classes, lambda_gp: float = 10.0, lambda_d: float = 0.1,
                 d_lr: float = 4e-4, d_betas: Sequence[float] = (0.9, 0.99), conv_dim: int = 64,
                 with_image: bool = False, image_channels: int = 1, spatial_dims: int = 2):
        super().__init__(teacher_info, student_info, num_classes, lambda_gp=lambda_gp, lambda_d=lambda_d,
                         d_lr=d_lr, d_betas=d_betas, conv_dim=conv_dim, with_image=with_image,
                         image_channels=image_channels, spatial_dims=spatial_dims)
