"""MSKD (Zhao et al., Comput Biol Med 2023): feature filtering + region graph distillation [R].

No official code exists; this is the parameter-free reconstruction of methods.md §2.3 (the
terms own no parameters at all). Both work on the feature mapping (FMM) of each tap,
``fmm(F) = sum_c softmax_c(GAP(relu F))_c * relu(F)_c`` (B, 1, *sp), after resizing the student tap
to the teacher's size. Both sum over ``taps``.

What follows methods.md: the FMM, the confidence gate ``pi = max(q, 1 - q)``, ``q = sigmoid(m^T)``,
``w = pi^gamma / mean_u(pi^gamma)`` with ``gamma = 0.6``, the weighted MSE of FFD, RGD's p x p
average-pooled patch nodes (p = 2) with cosine edges, and the options (ground-truth gate, class-region
nodes).

Documented reconstruction, ``normalize=True`` (the default; ``False`` is the unnormalised variant,
which the spec leaves open): the maps are made **scale-free** before gating and comparing:

    m~ = standardise(fmm(F / rms(F)))      rms over channels and pixels, standardise over pixels,
                                           both per sample: (m - mean) / sqrt(var + 1e-6)

Why: the FMM of a ReLU map is >= 0, so ``sigmoid(m)`` >= 0.5 and ``pi = max(q, 1 - q)`` is just ``q``:
the background half of the gate never fires and ``pi`` grows with the raw activation scale rather
than with confidence. The FMM is also not scale-equivariant (the softmax channel weights sharpen as
the features grow), and an MSE between raw maps of two networks measures their activation scales.
Dividing ``F`` by its RMS fixes the softmax "temperature" relative to the feature's own spread and
makes the FMM invariant to rescaling ``F``; standardising the map (rather than dividing it by its
L2 norm, which would keep it >= 0 and the gate stuck at q >= 0.5) centres it, so ``q`` spans (0, 1):
pixels well above the image's mean FMM (confident foreground) get ``q -> 1``, those well below
(confident background) ``q -> 0``, both ``pi -> 1``; pixels near the mean get ``pi ~ 0.5``. The FFD and
RGD losses are then invariant to any positive rescaling of either network's features and compare
structure on one scale for any two channel counts. RGD's edges are cosines (invariant already);
its node attributes are the pooled standardised maps.

- ``mskd_ffd``: ``L = mean_{b,u} w(u) (m~^S(u) - m~^T(u))^2``. ``gate="confidence"``: the gate above.
  ``gate="gt"``: ``pi = 1`` on foreground (class > 0) and ``bg_weight`` elsewhere, from the
  nearest-resized ground truth (teacher argmax for unlabelled samples).
- ``mskd_rgd``: graph nodes with attribute ``n`` (pooled map value) and feature ``f`` (pooled
  C-vector); edges ``E_ij = cos(f_i, f_j)``; ``L = mean (n^S - n^T)^2 + mean (E^S - E^T)^2``.
  ``nodes="patch"``: ``p x p`` average-pooled patches (p = 2, grown to at most ``max_nodes``).
  ``nodes="class"``: ground-truth class regions (masked means), averaged over the classes
  (nodes) and class pairs (edges) present in each image.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ._common import (MAX_NODES, check_region_source, check_taps, class_masks, cosine_affinity, fmm, masked_mean,
                      pair, pair_mask, pool_nodes, region_labels, region_prototypes, register_term)
from .base import DistillTerm, KDContext

MSKD_PAPER = "Zhao et al., Comput Biol Med 2023 (MSKD) [R]"
MAP_EPS = 1e-6


def _per_sample(x: torch.Tensor) -> tuple:
    return tuple(range(1, x.dim()))


def scale_free_fmm(feat: torch.Tensor, normalize: bool = True, eps: float = MAP_EPS) -> torch.Tensor:
    """``fmm(F / rms(F))`` standardised per sample over its pixels (see the module doc); ``fmm(F)`` when
    ``normalize`` is False. A constant map standardises to zero."""
    if not normalize:
        return fmm(feat)
    dims = _per_sample(feat)
    f = feat / feat.pow(2).mean(dim=dims, keepdim=True).add(1e-12).sqrt()
    m = fmm(f)
    mu = m.mean(dim=dims, keepdim=True)
    var = (m - mu).pow(2).mean(dim=dims, keepdim=True)
    return (m - mu) / var.add(eps).sqrt()


def confidence_gate(m_t: torch.Tensor) -> torch.Tensor:
    """``pi = max(q, 1 - q)`` with ``q = sigmoid(m_t)``: the teacher's confidence, in [0.5, 1)."""
    q = torch.sigmoid(m_t)
    return torch.maximum(q, 1 - q)


class _MSKDBase(DistillTerm):
    TAPS = ("enc_high", "dec_low")
    CONTRACT = {"channel_agnostic": True}

    def __init__(self, teacher_info, student_info, num_classes, taps: Sequence[str], region_source: str,
                 normalize: bool = True):
        super().__init__(teacher_info, student_info, num_classes)
        self.normalize = bool(normalize)
        name = type(self).__name__
        if isinstance(taps, str):
            taps = (taps,)
        if not taps:
            raise ValueError(f"{name}: taps must name at least one tap")
        check_taps(name, taps, teacher_info, student_info)
        self.TAPS = tuple(taps)
        self.region_source = check_region_source(name, region_source)

    def maps(self, s: torch.Tensor, t: torch.Tensor):
        """(student, teacher) FMM maps, scale-free when ``normalize``."""
        return scale_free_fmm(s, self.normalize), scale_free_fmm(t, self.normalize)

    def forward(self, ctx: KDContext) -> torch.Tensor:
        total = 0.0
        for name in self.TAPS:
            total = total + self.tap_loss(ctx, *self.shared(ctx, name))
        return total

    def shared(self, ctx: KDContext, name: str):
        """(student resized, teacher, their maps) of one tap, computed once per step for both MSKD terms (the
        same tensors and graph: FFD and RGD read the same maps, so the KD step computes them once)."""
        key = f"mskd:{name}:{self.normalize}:{id(ctx.s.get(name))}:{id(ctx.t.get(name))}"
        if key not in ctx.extra:
            s, t = pair(ctx, name, type(self).__name__)
            ctx.extra[key] = (s, t) + tuple(self.maps(s, t))
        return ctx.extra[key]

    def tap_loss(self, ctx: KDContext, s: torch.Tensor, t: torch.Tensor, m_s: torch.Tensor,
                 m_t: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@register_term("mskd_ffd", paper=MSKD_PAPER + ": feature filtering distillation", section="§2.3")
class MSKDFeatureFiltering(_MSKDBase):
    """Confidence- (or ground-truth-) weighted MSE between (scale-free) FMM maps."""

    def __init__(self, teacher_info, student_info, num_classes, taps: Sequence[str] = ("enc_high", "dec_low"),
                 gamma: float = 0.6, gate: str = "confidence", bg_weight: float = 0.5, region_source: str = "gt",
                 normalize: bool = True):
        super().__init__(teacher_info, student_info, num_classes, taps, region_source, normalize)
        if gate not in ("confidence", "gt"):
            raise ValueError(f"mskd_ffd: gate must be 'confidence' or 'gt', got {gate!r}")
        if not 0 < bg_weight <= 1:
            raise ValueError(f"mskd_ffd: bg_weight must be in (0, 1], got {bg_weight}")
        self.gamma, self.gate, self.bg_weight = float(gamma), gate, float(bg_weight)

    def weights(self, ctx: KDContext, m_t: torch.Tensor) -> torch.Tensor:
        if self.gate == "confidence":
            pi = confidence_gate(m_t)
        else:
            labels = region_labels(ctx, m_t.shape[2:], self.num_classes, self.region_source).unsqueeze(1)
            pi = torch.where(labels > 0, torch.ones_like(m_t), torch.full_like(m_t, self.bg_weight))
        w = pi.pow(self.gamma)
        return w / w.flatten(1).mean(1).view(-1, *[1] * (w.dim() - 1))

    def tap_loss(self, ctx, s, t, m_s, m_t):
        return (self.weights(ctx, m_t) * (m_s - m_t).pow(2)).mean()


@register_term("mskd_rgd", paper=MSKD_PAPER + ": region graph distillation", section="§2.3")
class MSKDRegionGraph(_MSKDBase):
    """Node-attribute and cosine-edge distillation over patch or class-region graphs."""

    def __init__(self, teacher_info, student_info, num_classes, taps: Sequence[str] = ("enc_high", "dec_low"),
                 nodes: str = "patch", patch: int = 2, max_nodes: int = MAX_NODES, region_source: str = "gt",
                 normalize: bool = True):
        super().__init__(teacher_info, student_info, num_classes, taps, region_source, normalize)
        if nodes not in ("patch", "class"):
            raise ValueError(f"mskd_rgd: nodes must be 'patch' or 'class', got {nodes!r}")
        self.nodes, self.patch, self.max_nodes = nodes, int(patch), int(max_nodes)

    def tap_loss(self, ctx, s, t, m_s, m_t):
        if self.nodes == "patch":
            n_s = pool_nodes(m_s, self.patch, "avg", self.max_nodes)[..., 0]
            n_t = pool_nodes(m_t, self.patch, "avg", self.max_nodes)[..., 0]
            e_s = cosine_affinity(pool_nodes(s, self.patch, "avg", self.max_nodes))
            e_t = cosine_affinity(pool_nodes(t, self.patch, "avg", self.max_nodes))
            return (n_s - n_t).pow(2).mean() + (e_s - e_t).pow(2).mean()
        labels = region_labels(ctx, t.shape[2:], self.num_classes, self.region_source)
        masks = class_masks(labels, self.num_classes)
        present = masks.flatten(2).sum(-1) > 0
        n_s, n_t = region_prototypes(m_s, masks)[..., 0], region_prototypes(m_t, masks)[..., 0]
        e_s = cosine_affinity(region_prototypes(s, masks))
        e_t = cosine_affinity(region_prototypes(t, masks))
        return masked_mean((n_s - n_t).pow(2), present) + masked_mean((e_s - e_t).pow(2), pair_mask(present))
