"""Graph Flow distillation (Zou et al., TMI 2023): cross-layer variation graphs [R].

The graph loss of the paper was never released; this is the reconstruction of methods.md §2.2:

1. salience nodes: non-overlapping ``p x p`` max-pool patches of a tap, one ``C``-vector per node
   (``p`` grows automatically so that there are at most ``max_nodes`` nodes, 64x64 by default);
2. salience-graph edges: ``A_ij = cos(v_i, v_j)``;
3. variation graph from the shallow tap ``a`` (``enc_low``) to the deep tap ``b`` (``dec_low``):
   ``dV = V_b - V_a`` and ``dA = A_b - A_a``;
4. ``L_vertex = |dV^T - dV^S|^2`` and ``L_edge = |dA^T - dA^S|^2``.

Teacher taps pass through the encoder half of a frozen, pre-trained :class:`Paraphraser` (one
per teacher tap, ``k`` = the student's channel count), the student's raw taps are compared
directly. ``reduction="mean"`` (default) averages over batch, nodes and channels (or node pairs)
and uses O(1) weights; ``reduction="sum"`` sums everything and defaults to the paper's weights
(1e-5 vertex, 1e-9 edge), so ``sum == mean * numel``.

Shape handling: every tap is resized (bilinear/trilinear) to the teacher's shallow-tap size, so
both graphs share one node grid. If the student's deep tap has a different channel count from
its shallow tap (the paper's models share it), it is channel-pooled (adaptive average over
channel groups) to the shallow count: a parameter-free fallback, so ``dV^S`` is defined.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import TERMS
from .base import DistillTerm, KDContext, StageContext
from ...models.taps import TapInfo
from .paraphraser import Paraphraser, set_frozen, train_paraphrasers

PAPER_SUM_WEIGHTS = (1e-5, 1e-9)


def adapt_patch(size: Sequence[int], p: int, max_nodes: int) -> int:
    """The smallest patch size >= p giving at most ``max_nodes`` nodes on a map of ``size``."""
    p = max(1, int(p))
    while math.prod(math.ceil(s / p) for s in size) > max_nodes:
        p += 1
    return p


def salience_nodes(feat: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, *spatial) -> (B, N, C): per-channel maximum of each non-overlapping p^n patch."""
    nd = feat.dim() - 2
    kernel = tuple(min(p, s) for s in feat.shape[2:])
    pool = F.max_pool2d if nd == 2 else F.max_pool3d if nd == 3 else None
    if pool is None:
        raise ValueError(f"graph flow needs 2D or 3D feature maps, got shape {tuple(feat.shape)}")
    nodes = pool(feat, kernel_size=kernel, stride=kernel, ceil_mode=True)
    return nodes.flatten(2).transpose(1, 2)


def cosine_edges(nodes: torch.Tensor) -> torch.Tensor:
    """(B, N, C) -> (B, N, N) cosine similarities (zero vectors give zero similarity)."""
    v = F.normalize(nodes, dim=-1, eps=1e-8)
    return v @ v.transpose(1, 2)


def variation_graph(shallow: torch.Tensor, deep: torch.Tensor, p: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(dV, dA) of two taps with the same shape."""
    va, vb = salience_nodes(shallow, p), salience_nodes(deep, p)
    return vb - va, cosine_edges(vb) - cosine_edges(va)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def _channel_pool(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    b, c = x.shape[:2]
    flat = x.flatten(2).transpose(1, 2).reshape(-1, 1, c)  # (B*P, 1, C)
    pooled = F.adaptive_avg_pool1d(flat, channels)
    return pooled.reshape(b, -1, channels).transpose(1, 2).reshape(b, channels, *x.shape[2:])


@TERMS.register("graph_flow", paper="Zou et al., TMI 2023 (Graph Flow, arXiv 2203.08667) [R graph loss]",
                section="§2.2",
                defaults={"p": 3, "reduction": "mean", "lambda_vertex": None, "lambda_edge": None,
                          "use_paraphraser": True, "max_nodes": 4096, "paraphraser_loss": "l1",
                          "paraphraser_lr": 0.01, "taps": ("enc_low", "dec_low"), "spatial_dims": 2},
                weights_by_reduction={"mean": (1.0, 1.0), "sum": PAPER_SUM_WEIGHTS})
class GraphFlowTerm(DistillTerm):
    """Vertex + edge variation-graph distillation between a shallow and a deep tap (see module doc).

    ``forward`` returns ``lambda_vertex * L_vertex + lambda_edge * L_edge`` and stores both parts
    (unweighted) in ``self.last_parts``. Weights left ``None`` follow the reduction: 1 and 1 for
    ``"mean"``, 1e-5 and 1e-9 for ``"sum"``.
    """

    TAPS = ("enc_low", "dec_low")
    # with the paraphraser, zero is at the paraphrased teacher; without, channel counts must match
    CONTRACT = {"params": {"use_paraphraser": False}, "same_channels": True}
    PRETRAIN_STAGE = "paraphraser"

    def __init__(self, teacher_info: Dict[str, TapInfo], student_info: Dict[str, TapInfo], num_classes: int,
                 p: int = 3, reduction: str = "mean", lambda_vertex: float | None = None,
                 lambda_edge: float | None = None, use_paraphraser: bool = True, max_nodes: int = 4096,
                 paraphraser_loss: str = "l1", paraphraser_lr: float = 0.01,
                 taps: Sequence[str] = ("enc_low", "dec_low"), spatial_dims: int = 2):
        super().__init__(teacher_info, student_info, num_classes)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"graph_flow: reduction must be 'mean' or 'sum', got {reduction!r}")
        if len(taps) != 2:
            raise ValueError(f"graph_flow: taps must name a shallow and a deep tap, got {taps!r}")
        for side, info in (("teacher", teacher_info), ("student", student_info)):
            missing = [t for t in taps if t not in info]
            if missing:
                raise KeyError(f"graph_flow: the {side} has no tap(s) {missing}; it has {sorted(info)}")
        self.TAPS = tuple(taps)
        self.shallow, self.deep = self.TAPS
        self.p, self.reduction, self.max_nodes = int(p), reduction, int(max_nodes)
        self.spatial_dims = int(spatial_dims)
        default_v, default_e = (1.0, 1.0) if reduction == "mean" else PAPER_SUM_WEIGHTS
        self.lambda_vertex = float(default_v if lambda_vertex is None else lambda_vertex)
        self.lambda_edge = float(default_e if lambda_edge is None else lambda_edge)
        self.paraphraser_loss, self.paraphraser_lr = paraphraser_loss, float(paraphraser_lr)
        self.k = student_info[self.shallow].channels
        self.use_paraphraser = bool(use_paraphraser)
        self.paraphrasers = nn.ModuleDict()
        if self.use_paraphraser:
            for tap in self.TAPS:
                self.paraphrasers[tap] = Paraphraser(teacher_info[tap].channels, self.k, self.spatial_dims)
            set_frozen(self.paraphrasers, True)  # trainable only inside its pre-training stage
        else:
            self.PRETRAIN_STAGE = None
            chans = {teacher_info[t].channels for t in self.TAPS}
            if chans != {self.k}:
                raise ValueError(f"graph_flow with use_paraphraser=False needs equal channel counts; "
                                 f"teacher taps have {sorted(chans)}, the student's {self.shallow} has "
                                 f"{self.k}")
        self.last_parts: Dict[str, torch.Tensor] = {}

    # -- pre-training ---------------------------------------------------------------------------
    def pretrain(self, stage: StageContext) -> None:
        """Train the paraphrasers to reconstruct the frozen teacher's taps, then freeze them."""
        if self.use_paraphraser:
            train_paraphrasers(dict(self.paraphrasers.items()), stage, "paraphraser",
                               loss=self.paraphraser_loss, lr=self.paraphraser_lr)

    # -- loss -----------------------------------------------------------------------------------
    def teacher_factors(self, feat: torch.Tensor, tap: str) -> torch.Tensor:
        if not self.use_paraphraser:
            return feat
        with torch.no_grad():
            return self.paraphrasers[tap].encode(feat.float())

    def _reduce(self, sq: torch.Tensor) -> torch.Tensor:
        return sq.mean() if self.reduction == "mean" else sq.sum()

    def forward(self, ctx: KDContext) -> torch.Tensor:
        a, b = self.shallow, self.deep
        for side, taps in (("teacher", ctx.t), ("student", ctx.s)):
            if a not in taps or b not in taps:
                raise KeyError(f"graph_flow: the {side} taps {sorted(taps)} lack '{a}' or '{b}'")
        ta = ctx.t[a].detach()
        if ta.dim() - 2 != self.spatial_dims:
            raise ValueError(f"graph_flow was built for spatial_dims={self.spatial_dims} but the teacher's "
                             f"'{a}' tap has shape {tuple(ta.shape)}; pass params "
                             f"{{'spatial_dims': {ta.dim() - 2}}}")
        size = ta.shape[2:]
        ta = self.teacher_factors(ta, a)
        tb = self.teacher_factors(_resize(ctx.t[b].detach().float(), size), b)
        sa = _resize(ctx.s[a].float(), size)
        sb = _channel_pool(_resize(ctx.s[b].float(), size), sa.shape[1])
        if ta.shape[1] != sa.shape[1] or tb.shape[1] != sa.shape[1]:
            raise ValueError(f"graph_flow: teacher factors have {ta.shape[1]}/{tb.shape[1]} channels but the "
                             f"student's '{a}' tap has {sa.shape[1]}; build the term with the student's "
                             f"tap info")
        p = adapt_patch(size, self.p, self.max_nodes)
        dv_t, da_t = variation_graph(ta, tb, p)
        dv_s, da_s = variation_graph(sa, sb, p)
        vertex = self._reduce((dv_t - dv_s) ** 2)
        edge = self._reduce((da_t - da_s) ** 2)
        self.last_parts = {"vertex": vertex.detach(), "edge": edge.detach()}
        return self.lambda_vertex * vertex + self.lambda_edge * edge
