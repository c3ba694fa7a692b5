"""Graph Flow distillation (Zou et al., TMI 2023): cross-layer variation graphs [R].

The graph loss of the paper was never released; this is the reconstruction of methods.md §2.2:

1. salience nodes: non-overlapping ``p x p`` max-pool patches of a tap, one ``C``-vector per node
   (``p`` grows automatically so that there are at most ``max_nodes`` nodes, 64x64 by default);
2. salience-graph edges: ``A_ij = cos(v_i, v_j)``;
3. variation graph from the shallow (encoder) tap ``a`` to the deep (decoder) tap ``b``:
   ``dV = V_b - V_a`` and ``dA = A_b - A_a``;
4. ``L_vertex = |dV^T - dV^S|^2`` and ``L_edge = |dA^T - dA^S|^2``.

What follows methods.md: the pipeline (teacher taps through the encoder half of a frozen, pre-trained
:class:`Paraphraser` per teacher tap with ``k`` factor channels, the student's taps compared with no
translator), max-pool salience nodes with ``p = 3``, cosine edges, the vertex/edge split, the
``reduction="sum"`` switch with the paper's weights (1e-5 vertex, 1e-9 edge; ``sum == mean * numel``)
and, by default, one encoder and one decoder tap at the same resolution H/4 (``enc_mid``/``dec_mid``).
``reduction="mean"`` (default) averages over batch, nodes and channels (or node pairs), O(1) weights.

Documented reconstructions (the choices this code owns):

- **Scale-free vertices** (``normalize``, methods.md §2.2 "node features normalised before
  differencing", and Factor Transfer's ``L_FT = |F_T/|F_T| - F_S/|F_S||``). Raw student activations
  and LeakyReLU paraphraser factors live on unrelated scales, so an unnormalised ``L_vertex`` mostly
  measures that scale. Each tap's node matrix ``V`` (N x C, per sample) is divided by its RMS
  before differencing: ``"map"`` (``True``, the default) uses one RMS over all nodes and channels,
  i.e. FT's L2 normalisation of the whole factor map up to the constant ``sqrt(N C)`` (which keeps the
  mean-reduced loss O(1)); it keeps which patches are *more* salient than others, the information the
  cosine edges discard. ``"node"`` divides every node by its own RMS (direction only). Either makes
  the loss invariant to a positive rescaling of what is compared: the student's taps (together or
  each on its own) and the teacher's factors (its taps when ``use_paraphraser=False``; the frozen
  paraphraser itself, with biases and LeakyReLUs, is not scale-equivariant and was trained on the
  teacher's own scale). ``False`` is the unnormalised variant, for reproducing the paper with
  ``reduction="sum"``.
  Edges are cosines, invariant already.
- **Tap choice** (``taps=None``): ``("enc_mid", "dec_mid")`` (stride 4, methods.md) when both models
  have them, else ``("enc_low", "dec_low")`` (models written before the stride-4 taps existed).
  Explicit ``taps`` are used as given.
- **Channel rule**: ``dV^S = V_b - V_a`` needs one channel count. When the student's two taps differ
  (ESPNet: its decoder is in class space; the paper's models share it), both are channel-pooled
  (adaptive average over contiguous channel groups, parameter-free) to the *smaller* of the two
  counts, ``k``; the paraphrasers produce ``k`` factors. Without the paraphraser the teacher's taps must
  have the student's channel counts tap by tap and are pooled the same way.
- **Shape handling**: every tap is resized (bilinear/trilinear) to the teacher's shallow-tap size, so
  both graphs share one node grid.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

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


NORMALIZE_MODES = ("map", "node", "none")


def normalize_mode(normalize) -> str:
    """``True`` -> ``"map"``, ``False``/``None`` -> ``"none"``; strings are checked."""
    if normalize is True:
        return "map"
    if normalize is False or normalize is None:
        return "none"
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"graph_flow: normalize must be True, False or one of {NORMALIZE_MODES}, got {normalize!r}")
    return normalize


def normalize_nodes(nodes: torch.Tensor, mode: str = "map", eps: float = 1e-12) -> torch.Tensor:
    """(B, N, C) nodes divided by their RMS: over all nodes and channels (``"map"``), per node (``"node"``).

    A zero map (or node) stays zero; ``"none"`` returns the nodes unchanged.
    """
    if mode == "none":
        return nodes
    dims = (1, 2) if mode == "map" else (2,)
    rms = nodes.pow(2).mean(dim=dims, keepdim=True).add(eps).sqrt()
    return nodes / rms


def variation_graph(shallow: torch.Tensor, deep: torch.Tensor, p: int,
                    normalize: str = "none") -> Tuple[torch.Tensor, torch.Tensor]:
    """(dV, dA) of two taps with the same shape; the nodes of each tap are normalised first."""
    va = normalize_nodes(salience_nodes(shallow, p), normalize)
    vb = normalize_nodes(salience_nodes(deep, p), normalize)
    return vb - va, cosine_edges(vb) - cosine_edges(va)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def _channel_pool(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Adaptive average over contiguous channel groups: (B, C, *sp) -> (B, channels, *sp)."""
    if x.shape[1] == channels:
        return x
    b, c = x.shape[:2]
    flat = x.flatten(2).transpose(1, 2).reshape(-1, 1, c)  # (B*P, 1, C)
    pooled = F.adaptive_avg_pool1d(flat, channels)
    return pooled.reshape(b, -1, channels).transpose(1, 2).reshape(b, channels, *x.shape[2:])


STRIDE4_TAPS = ("enc_mid", "dec_mid")
LEGACY_TAPS = ("enc_low", "dec_low")


def choose_taps(taps: Optional[Sequence[str]], teacher_info: Dict[str, TapInfo],
                student_info: Dict[str, TapInfo]) -> Tuple[str, str]:
    """The (shallow, deep) pair: ``taps`` as given, or for ``None`` the stride-4 pair when both models
    have it and the older ``enc_low``/``dec_low`` pair otherwise (see the module doc)."""
    if taps is None:
        both = all(t in info for t in STRIDE4_TAPS for info in (teacher_info, student_info))
        taps = STRIDE4_TAPS if both else LEGACY_TAPS
    if isinstance(taps, str) or len(taps) != 2:
        raise ValueError(f"graph_flow: taps must name a shallow and a deep tap, got {taps!r}")
    for side, info in (("teacher", teacher_info), ("student", student_info)):
        missing = [t for t in taps if t not in info]
        if missing:
            raise KeyError(f"graph_flow: the {side} has no tap(s) {missing}; it has {sorted(info)}")
    return tuple(taps)


@TERMS.register("graph_flow", paper="Zou et al., TMI 2023 (Graph Flow, arXiv 2203.08667) [R graph loss]",
                section="§2.2",
                defaults={"p": 3, "reduction": "mean", "lambda_vertex": None, "lambda_edge": None,
                          "use_paraphraser": True, "max_nodes": 4096, "paraphraser_loss": "l1",
                          "paraphraser_lr": 0.01, "taps": None, "spatial_dims": 2, "normalize": True},
                weights_by_reduction={"mean": (1.0, 1.0), "sum": PAPER_SUM_WEIGHTS})
class GraphFlowTerm(DistillTerm):
    """Vertex + edge variation-graph distillation between a shallow and a deep tap (see module doc).

    ``forward`` returns ``lambda_vertex * L_vertex + lambda_edge * L_edge`` and stores both parts
    (unweighted) in ``self.last_parts``. Weights left ``None`` follow the reduction: 1 and 1 for
    ``"mean"``, 1e-5 and 1e-9 for ``"sum"``. ``self.TAPS`` is the pair in use, ``self.k`` the
    channel count of the compared nodes.
    """

    TAPS = STRIDE4_TAPS
    # with the paraphraser, zero is at the paraphrased teacher; without, channel counts must match
    CONTRACT = {"params": {"use_paraphraser": False}, "same_channels": True}
    PRETRAIN_STAGE = "paraphraser"

    def __init__(self, teacher_info: Dict[str, TapInfo], student_info: Dict[str, TapInfo], num_classes: int,
                 p: int = 3, reduction: str = "mean", lambda_vertex: float | None = None,
                 lambda_edge: float | None = None, use_paraphraser: bool = True, max_nodes: int = 4096,
                 paraphraser_loss: str = "l1", paraphraser_lr: float = 0.01,
                 taps: Optional[Sequence[str]] = None, spatial_dims: int = 2, normalize: bool | str = True):
        super().__init__(teacher_info, student_info, num_classes)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"graph_flow: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.TAPS = choose_taps(taps, teacher_info, student_info)
        self.shallow, self.deep = self.TAPS
        self.normalize = normalize_mode(normalize)
        self.p, self.reduction, self.max_nodes = int(p), reduction, int(max_nodes)
        self.spatial_dims = int(spatial_dims)
        default_v, default_e = (1.0, 1.0) if reduction == "mean" else PAPER_SUM_WEIGHTS
        self.lambda_vertex = float(default_v if lambda_vertex is None else lambda_vertex)
        self.lambda_edge = float(default_e if lambda_edge is None else lambda_edge)
        self.paraphraser_loss, self.paraphraser_lr = paraphraser_loss, float(paraphraser_lr)
        self.k = min(student_info[t].channels for t in self.TAPS)  # the channel rule
        self.use_paraphraser = bool(use_paraphraser)
        self.paraphrasers = nn.ModuleDict()
        if self.use_paraphraser:
            for tap in self.TAPS:
                self.paraphrasers[tap] = Paraphraser(teacher_info[tap].channels, self.k, self.spatial_dims)
            set_frozen(self.paraphrasers, True)  # trainable only inside its pre-training stage
        else:
            self.PRETRAIN_STAGE = None
            t_ch = [teacher_info[t].channels for t in self.TAPS]
            s_ch = [student_info[t].channels for t in self.TAPS]
            if t_ch != s_ch:
                raise ValueError(f"graph_flow with use_paraphraser=False needs equal channel counts; "
                                 f"teacher taps {list(self.TAPS)} have {t_ch} channels, the student's {s_ch}")
        self.last_parts: Dict[str, torch.Tensor] = {}

    # -- pre-training ---------------------------------------------------------------------------
    def pretrain(self, stage: StageContext) -> None:
        """Train the paraphrasers to reconstruct the frozen teacher's taps, then freeze them."""
        if self.use_paraphraser:
            train_paraphrasers(dict(self.paraphrasers.items()), stage, "paraphraser",
                               loss=self.paraphraser_loss, lr=self.paraphraser_lr)

    # -- loss -----------------------------------------------------------------------------------
    def teacher_factors(self, feat: torch.Tensor, tap: str) -> torch.Tensor:
        """Paraphraser factors (``k`` channels) or, without it, the tap channel-pooled to ``k``."""
        if not self.use_paraphraser:
            return _channel_pool(feat, self.k)
        with torch.no_grad():
            return self.paraphrasers[tap].encode(feat.float())

    def _reduce(self, sq: torch.Tensor) -> torch.Tensor:
        return sq.mean() if self.reduction == "mean" else sq.sum()

    def _taps(self, ctx: KDContext):
        """Teacher factors and student taps on one node grid, all with ``k`` channels."""
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
        ta = self.teacher_factors(ta.float(), a)
        tb = self.teacher_factors(_resize(ctx.t[b].detach().float(), size), b)
        sa = _channel_pool(_resize(ctx.s[a].float(), size), self.k)
        sb = _channel_pool(_resize(ctx.s[b].float(), size), self.k)
        if ta.shape[1] != self.k or tb.shape[1] != self.k:
            raise ValueError(f"graph_flow: teacher factors have {ta.shape[1]}/{tb.shape[1]} channels but the "
                             f"student's taps give {self.k}; build the term with the models' tap info")
        return ta, tb, sa, sb

    def forward(self, ctx: KDContext) -> torch.Tensor:
        ta, tb, sa, sb = self._taps(ctx)
        p = adapt_patch(ta.shape[2:], self.p, self.max_nodes)
        dv_t, da_t = variation_graph(ta, tb, p, self.normalize)
        dv_s, da_s = variation_graph(sa, sb, p, self.normalize)
        vertex = self._reduce((dv_t - dv_s) ** 2)
        edge = self._reduce((da_t - da_s) ** 2)
        self.last_parts = {"vertex": vertex.detach(), "edge": edge.detach()}
        return self.lambda_vertex * vertex + self.lambda_edge * edge
