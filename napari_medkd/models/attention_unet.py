"""Residual attention U-Net teacher (RA-UNet / Attention U-Net style) from MONAI blocks.

Encoder: a stride-1 stem and four stride-2 MONAI ``ResidualUnit`` stages (strides 2..16).
Decoder stage per level: ``UpConv`` (transposed conv), an additive attention gate
(``AttentionBlock``, Oktay et al. 2018) on the skip, concatenation, and a ``ResidualUnit``.

Taps: ``enc_low`` = ``encoders.1`` (stride 2), ``enc_mid`` = ``encoders.2`` (stride 4),
``enc_high`` = ``encoders.3`` (stride 8), ``bottleneck`` = ``encoders.4`` (stride 16),
``dec_mid`` = ``decoders.2`` (stride 4, same channels as ``enc_mid``), ``dec_low`` =
``decoders.1`` (stride 2).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets.attentionunet import AttentionBlock, UpConv
from torch import nn

from ..registry import MODELS
from .base import SegModel

DEFAULT_CHANNELS = (32, 64, 128, 256, 384)


class AttentionUp(nn.Module):
    """Up-sample ``x``, gate the skip with it, concatenate, fuse with a residual unit."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, subunits: int, dropout: float):
        super().__init__()
        self.up = UpConv(dims, in_ch, out_ch, kernel_size=3, strides=2, dropout=dropout)
        self.gate = AttentionBlock(dims, f_int=max(1, out_ch // 2), f_g=out_ch, f_l=out_ch, dropout=dropout)
        self.fuse = ResidualUnit(dims, 2 * out_ch, out_ch, strides=1, subunits=subunits, norm="BATCH",
                                 dropout=dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)
        return self.fuse(torch.cat([self.gate(g=up, x=skip), up], dim=1))


class ResAttentionUNet(SegModel):
    """Residual U-Net with attention-gated skips; ``channels`` has five entries (strides 1..16)."""

    TAPS = {"enc_low": "encoders.1", "enc_mid": "encoders.2", "enc_high": "encoders.3",
            "bottleneck": "encoders.4", "dec_mid": "decoders.2", "dec_low": "decoders.1"}

    def __init__(self, in_channels: int = 1, num_classes: int = 2, channels: Sequence[int] = DEFAULT_CHANNELS,
                 width: float = 1.0, spatial_dims: int = 2, subunits: int = 2, dropout: float = 0.0):
        super().__init__(in_channels, num_classes)
        if len(channels) != 5:
            raise ValueError(f"attention_unet: channels needs 5 entries, got {tuple(channels)}")
        ch = tuple(max(2, int(round(c * width))) for c in channels)
        self.channels = ch
        self.spatial_dims = int(spatial_dims)
        self._size_divisor = 16
        d = self.spatial_dims
        enc = [ResidualUnit(d, in_channels, ch[0], strides=1, subunits=subunits, norm="BATCH", dropout=dropout)]
        enc += [ResidualUnit(d, ch[i - 1], ch[i], strides=2, subunits=subunits, norm="BATCH", dropout=dropout)
                for i in range(1, 5)]
        self.encoders = nn.ModuleList(enc)
        # decoders[i] brings level i+1 up to level i (stride 2**i)
        self.decoders = nn.ModuleList([AttentionUp(d, ch[i + 1], ch[i], subunits, dropout) for i in range(4)])
        self.head = Convolution(d, ch[0], num_classes, kernel_size=1, conv_only=True)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        skips = []
        for stage in self.encoders[:-1]:
            x = stage(x)
            skips.append(x)
        return self.encoders[-1](x), skips

    def decode(self, bottleneck: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        x = bottleneck
        for level in (3, 2, 1, 0):
            x = self.decoders[level](x, skips[level])
        return self.head(x)


@MODELS.register("attention_unet", role="teacher", dims=2,
                 description="residual attention U-Net (attention-gated skips, residual units)")
def attention_unet(in_channels: int = 1, num_classes: int = 2, channels: Sequence[int] = DEFAULT_CHANNELS,
                   width: float = 1.0, **kw) -> ResAttentionUNet:
    return ResAttentionUNet(in_channels, num_classes, channels=channels, width=width, spatial_dims=2, **kw)
