"""ENet (Paszke et al., 2016): the paper's architecture, adapted to any in/out channel count.

Initial block (conv + max-pool, 16 ch, H/2); stage 1: down-sampling bottleneck to 64 ch (H/4) + 4
bottlenecks; stages 2-3: down-sampling to 128 ch (H/8), regular / dilated (2, 4, 8, 16) /
asymmetric (5x1, 1x5) bottlenecks; stages 4-5: max-unpooling up-sampling bottlenecks to 64 ch
(H/4) and 16 ch (H/2); a transposed conv to full size. PReLU in the encoder, ReLU in the decoder.

Max-unpooling is written as ``nearest-upsample * (upsampled argmax index == position)``, which
equals ``F.max_unpool2d`` for 2x2/stride-2 pooling and exports to ONNX with either exporter.
The skips are the int64 pooling indices of stages 1 and 2.

Taps (methods.md 2.1/2.2): ``enc_low`` and ``enc_mid`` = stage-1 output (64 ch, H/4), ``enc_high``
and ``bottleneck`` = end of stage 3 (128 ch, H/8), ``dec_low`` and ``dec_mid`` = stage-4 output
(64 ch, H/4): Graph Flow's pair.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .base import SegModel


def _act(prelu: bool, channels: int) -> nn.Module:
    return nn.PReLU(channels) if prelu else nn.ReLU()


def _cbr(cin: int, cout: int, k, stride=1, padding=0, dilation=1, prelu=True) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, dilation, bias=False), nn.BatchNorm2d(cout),
                         _act(prelu, cout))


class SpatialDropout(nn.Dropout2d):
    """``nn.Dropout2d`` that is a plain identity in eval mode (so ``torch.export`` keeps batch dynamic)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout2d(x, self.p, True, self.inplace) if self.training and self.p > 0 else x


def max_unpool2x(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``F.max_unpool2d(x, indices, 2)`` for 2x2/stride-2 pooling, as ONNX-friendly ops.

    Positions are compared in float32 (exact below 2**24 pixels per plane) whatever ``x``'s dtype.
    """
    h, w = x.shape[-2], x.shape[-1]
    pos = torch.arange(4 * h * w, device=x.device).view(1, 1, 2 * h, 2 * w).to(torch.float32)
    up_idx = F.interpolate(indices.to(torch.float32), scale_factor=2.0, mode="nearest")
    return F.interpolate(x, scale_factor=2.0, mode="nearest") * (up_idx == pos).to(x.dtype)


class InitialBlock(nn.Module):
    """3x3/2 conv to ``16 - in`` channels concatenated with a 2x2 max-pool of the input."""

    def __init__(self, in_channels: int, out_channels: int = 16):
        super().__init__()
        if in_channels >= out_channels:
            raise ValueError(f"enet: in_channels must be < {out_channels}, got {in_channels}")
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)  # == floor mode for even sizes; ONNX/export-friendly
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class RegularBottleneck(nn.Module):
    """1x1 reduce -> (3x3 | dilated 3x3 | 5x1+1x5) -> 1x1 expand, spatial dropout, residual."""

    def __init__(self, channels: int, dilation: int = 1, asymmetric: bool = False, dropout: float = 0.0,
                 prelu: bool = True, ratio: int = 4):
        super().__init__()
        mid = channels // ratio
        self.reduce = _cbr(channels, mid, 1, prelu=prelu)
        if asymmetric:
            self.conv = nn.Sequential(_cbr(mid, mid, (5, 1), padding=(2, 0), prelu=prelu),
                                      _cbr(mid, mid, (1, 5), padding=(0, 2), prelu=prelu))
        else:
            self.conv = _cbr(mid, mid, 3, padding=dilation, dilation=dilation, prelu=prelu)
        self.expand = _cbr(mid, channels, 1, prelu=prelu)
        self.drop = SpatialDropout(dropout)
        self.out_act = _act(prelu, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_act(x + self.drop(self.expand(self.conv(self.reduce(x)))))


class DownsamplingBottleneck(nn.Module):
    """Main: 2x2 max-pool (indices kept) + zero channel padding; branch: 2x2/2 conv, 3x3, 1x1."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.0, prelu: bool = True, ratio: int = 4):
        super().__init__()
        mid = cin // ratio
        self.extra = cout - cin
        self.branch = nn.Sequential(_cbr(cin, mid, 2, stride=2, prelu=prelu), _cbr(mid, mid, 3, padding=1, prelu=prelu),
                                    _cbr(mid, cout, 1, prelu=prelu), SpatialDropout(dropout))
        self.out_act = _act(prelu, cout)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        main, indices = F.max_pool2d(x, 2, 2, return_indices=True)
        main = F.pad(main, (0, 0, 0, 0, 0, self.extra))
        return self.out_act(main + self.branch(x)), indices


class UpsamplingBottleneck(nn.Module):
    """Main: 1x1 conv + max-unpool with the encoder's indices; branch: 1x1, 2x2/2 transposed conv, 1x1."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.0, ratio: int = 4):
        super().__init__()
        mid = cin // ratio
        self.main = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.branch = nn.Sequential(
            _cbr(cin, mid, 1, prelu=False),
            nn.ConvTranspose2d(mid, mid, 2, stride=2, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout), SpatialDropout(dropout))
        self.out_act = nn.ReLU()

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.out_act(max_unpool2x(self.main(x), indices) + self.branch(x))


def _stage23(prefix: str, dropout: float) -> List[Tuple[str, nn.Module]]:
    """The 8 bottlenecks shared by stages 2 and 3: regular, d2, asym5, d4, regular, d8, asym5, d16."""
    kinds = [("regular", {}), ("dilated", {"dilation": 2}), ("asymmetric", {"asymmetric": True}),
             ("dilated", {"dilation": 4}), ("regular", {}), ("dilated", {"dilation": 8}),
             ("asymmetric", {"asymmetric": True}), ("dilated", {"dilation": 16})]
    return [(f"{kind}{prefix}_{i}", RegularBottleneck(128, dropout=dropout, **kw))
            for i, (kind, kw) in enumerate(kinds)]


class ENet(SegModel):
    TAPS = {"enc_low": "stage1", "enc_mid": "stage1", "enc_high": "stage3", "bottleneck": "stage3",
            "dec_mid": "stage4", "dec_low": "stage4"}

    def __init__(self, in_channels: int = 1, num_classes: int = 2, dropout1: float = 0.01, dropout: float = 0.1):
        super().__init__(in_channels, num_classes)
        self._size_divisor = 8
        self.initial = InitialBlock(in_channels, 16)
        self.down1 = DownsamplingBottleneck(16, 64, dropout=dropout1)
        self.stage1 = nn.Sequential(*[RegularBottleneck(64, dropout=dropout1) for _ in range(4)])
        self.down2 = DownsamplingBottleneck(64, 128, dropout=dropout)
        self.stage2 = nn.Sequential(OrderedDict(_stage23("2", dropout)))
        self.stage3 = nn.Sequential(OrderedDict(_stage23("3", dropout)))
        self.up4 = UpsamplingBottleneck(128, 64, dropout=dropout)
        self.stage4 = nn.Sequential(*[RegularBottleneck(64, dropout=dropout, prelu=False) for _ in range(2)])
        self.up5 = UpsamplingBottleneck(64, 16, dropout=dropout)
        self.stage5 = RegularBottleneck(16, dropout=dropout, prelu=False)
        self.fullconv = nn.ConvTranspose2d(16, num_classes, 3, stride=2, padding=1, output_padding=1, bias=False)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        x, idx1 = self.down1(self.initial(x))
        x, idx2 = self.down2(self.stage1(x))
        return self.stage3(self.stage2(x)), [idx1, idx2]

    def decode(self, bottleneck: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        idx1, idx2 = skips
        x = self.stage4(self.up4(bottleneck, idx2))
        x = self.stage5(self.up5(x, idx1))
        return self.fullconv(x)


@MODELS.register("enet", role="student", dims=2, description="ENet (Paszke et al. 2016), ~0.35M parameters")
def enet(in_channels: int = 1, num_classes: int = 2, **kw) -> ENet:
    return ENet(in_channels, num_classes, **kw)
