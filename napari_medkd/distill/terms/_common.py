"""Shared helpers of the baseline, EMKD and MSKD terms (2D and 3D).

Conventions: teacher tensors are detached here (``teacher()``), whatever the caller passes;
student taps are resized (bilinear / trilinear) to the teacher's spatial size before comparing;
region masks come from the ground truth, with the teacher's argmax for unlabelled samples
(``region_source``, methods.md §6.2); pairwise graphs use at most ``max_nodes`` nodes (§6.4).
"""
from __future__ import annotations

import inspect
import math
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import TERMS
from .base import KDContext
from ...models.taps import TapInfo

REGION_SOURCES = ("gt", "teacher", "student")
MAX_NODES = 64 * 64


def register_term(name: str, paper: str, section: str, **meta):
    """``TERMS.register`` with ``defaults`` read from the class's keyword defaults."""

    def deco(cls):
        sig = inspect.signature(cls.__init__)
        skip = {"self", "teacher_info", "student_info", "num_classes"}
        defaults = {k: p.default for k, p in sig.parameters.items()
                    if k not in skip and p.default is not inspect.Parameter.empty}
        return TERMS.register(name, paper=paper, section=section, defaults=defaults, **meta)(cls)

    return deco


def teacher(x: torch.Tensor) -> torch.Tensor:
    """Teacher tensors never carry gradients into the loss."""
    return x.detach().float()


def tap(taps: Dict[str, torch.Tensor], name: str, side: str, term: str) -> torch.Tensor:
    if name not in taps:
        raise KeyError(f"{term}: the {side} taps {sorted(taps)} lack '{name}'")
    return taps[name]


def check_taps(term: str, taps: Sequence[str], teacher_info: Dict[str, TapInfo], student_info: Dict[str, TapInfo]):
    """Fail at build time when a model lacks a feature tap the term needs (logits always exist)."""
    for side, info in (("teacher", teacher_info), ("student", student_info)):
        missing = [t for t in taps if t != "logits" and info and t not in info]
        if missing:
            raise KeyError(f"{term}: the {side} has no tap(s) {missing}; it has {sorted(info)}")


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear (2D) / trilinear (3D) resize to ``size``; a no-op when the size matches."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    modes = {3: "linear", 4: "bilinear", 5: "trilinear"}
    if x.dim() not in modes:
        raise ValueError(f"expected a (B, C, *spatial) tensor with 1-3 spatial dims, got {tuple(x.shape)}")
    return F.interpolate(x, size=tuple(size), mode=modes[x.dim()], align_corners=False)


def pair(ctx: KDContext, name: str, term: str, same_channels: bool = False):
    """(student, teacher) tensors of one tap, the student resized to the teacher's size (fp32)."""
    s, t = tap(ctx.s, name, "student", term), teacher(tap(ctx.t, name, "teacher", term))
    if s.dim() != t.dim():
        raise ValueError(f"{term}: tap '{name}' is {s.dim() - 2}D in the student but {t.dim() - 2}D in the teacher")
    if same_channels and s.shape[1] != t.shape[1]:
        raise ValueError(f"{term}: tap '{name}' has {s.shape[1]} student channels but {t.shape[1]} teacher "
                         f"channels; this term needs equal counts")
    return resize(s.float(), t.shape[2:]), t


def matmul32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in fp32 even under autocast (long pixel sums overflow fp16)."""
    with torch.autocast(a.device.type, enabled=False):
        return a.float() @ b.float()


# -- regions -------------------------------------------------------------------------------------
def _nearest(lab: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(lab.shape[1:]) == tuple(size):
        return lab.long()
    return F.interpolate(lab[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def check_region_source(term: str, source: str) -> str:
    if source not in REGION_SOURCES:
        raise ValueError(f"{term}: region_source must be one of {REGION_SOURCES}, got {source!r}")
    return source


def region_labels(ctx: KDContext, size: Sequence[int], num_classes: int, source: str = "gt") -> torch.Tensor:
    """(B, *size) class indices, -1 where ignored, nearest-resized.

    ``gt`` uses ``ctx.label`` and falls back to the teacher's argmax for samples with
    ``labelled == False`` (or for all when there is no label); ``teacher``/``student`` use that
    model's argmax.
    """
    if source not in REGION_SOURCES:
        raise ValueError(f"region_source must be one of {REGION_SOURCES}, got {source!r}")
    if source == "student":
        pred = _nearest(ctx.s["logits"].detach().argmax(1), size)
    else:
        pred = _nearest(ctx.t["logits"].detach().argmax(1), size)
    if source != "gt" or ctx.label is None:
        return pred
    lab = ctx.label
    if lab.dim() == ctx.t["logits"].dim():  # (B, 1, *spatial)
        lab = lab[:, 0]
    lab = _nearest(lab, size)
    lab = torch.where((lab >= 0) & (lab < num_classes), lab, torch.full_like(lab, -1))
    if ctx.labelled is not None:
        keep = torch.as_tensor(ctx.labelled, device=lab.device).bool().view(-1, *([1] * (lab.dim() - 1)))
        lab = torch.where(keep, lab, pred)
    return lab


def class_masks(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, *sp) indices -> (B, K, *sp) float one-hot; ignored (-1) pixels are in no mask."""
    k = torch.arange(num_classes, device=labels.device).view(1, -1, *([1] * (labels.dim() - 1)))
    return (labels.unsqueeze(1) == k).float()


def region_prototypes(feat: torch.Tensor, masks: torch.Tensor, smooth: Optional[Sequence[float]] = None,
                      eps: float = 1e-6) -> torch.Tensor:
    """Masked means ``r_k = sum F M_k / (sum M_k + s_k)``: (B, C, *sp), (B, K, *sp) -> (B, K, C).

    ``smooth`` gives ``s_k`` per class (EMKD: 0 for background, 1 for foreground); the
    denominator is at least ``eps`` so an empty class gives a zero prototype, never NaN.
    """
    f = feat.flatten(2)                       # (B, C, P)
    m = masks.flatten(2)                      # (B, K, P)
    num = matmul32(m, f.transpose(1, 2))      # (B, K, C)
    den = m.sum(-1)
    if smooth is not None:
        den = den + torch.as_tensor(list(smooth), dtype=den.dtype, device=den.device)
    return num / den.clamp_min(eps).unsqueeze(-1)


def pair_mask(present: torch.Tensor) -> torch.Tensor:
    """(B, K) bool -> (B, K, K) bool: off-diagonal class pairs present in the image."""
    k = present.shape[1]
    off = ~torch.eye(k, dtype=torch.bool, device=present.device)
    return present.unsqueeze(2) & present.unsqueeze(1) & off


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image mean of ``values`` over ``mask`` (0 for an image with none), then the batch mean."""
    mask = mask.to(values.dtype)
    dims = tuple(range(1, values.dim()))
    per_image = (values * mask).sum(dims) / mask.sum(dims).clamp_min(1.0)
    return per_image.mean()


# -- graphs --------------------------------------------------------------------------------------
def adapt_patch(size: Sequence[int], p: int, max_nodes: int = MAX_NODES) -> int:
    """The smallest patch size >= p giving at most ``max_nodes`` nodes on a map of ``size``."""
    p = max(1, int(p))
    while math.prod(math.ceil(s / p) for s in size) > max_nodes:
        p += 1
    return p


def pool_nodes(feat: torch.Tensor, p: int, mode: str = "max", max_nodes: int = MAX_NODES) -> torch.Tensor:
    """(B, C, *sp) -> (B, N, C): one node per non-overlapping ``p``-patch (``p`` grown to fit ``max_nodes``)."""
    nd = feat.dim() - 2
    if nd not in (1, 2, 3):
        raise ValueError(f"expected 1-3 spatial dims, got a tensor of shape {tuple(feat.shape)}")
    p = adapt_patch(feat.shape[2:], p, max_nodes)
    kernel = tuple(min(p, s) for s in feat.shape[2:])
    if mode == "max":
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
        nodes = pool(feat, kernel_size=kernel, stride=kernel, ceil_mode=True)
    elif mode == "avg":
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
        nodes = pool(feat, kernel_size=kernel, stride=kernel, ceil_mode=True, count_include_pad=False)
    else:
        raise ValueError(f"node pooling mode must be 'max' or 'avg', got {mode!r}")
    return nodes.flatten(2).transpose(1, 2)


def cosine_affinity(nodes: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B, N, C) -> (B, N, N) cosine similarities; a zero node has zero similarity."""
    v = F.normalize(nodes.float(), dim=-1, eps=eps)
    return matmul32(v, v.transpose(1, 2))


# -- MSKD feature mapping ------------------------------------------------------------------------
def fmm(feat: torch.Tensor) -> torch.Tensor:
    """Parameter-free channel collapse: ``sum_c softmax_c(GAP(relu F))_c * relu(F)_c`` -> (B, 1, *sp)."""
    f = F.relu(feat)
    w = torch.softmax(f.flatten(2).mean(-1), dim=1)             # (B, C)
    return (f * w.view(*w.shape, *([1] * (f.dim() - 2)))).sum(1, keepdim=True)


def conv_cls(spatial_dims: int):
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d
