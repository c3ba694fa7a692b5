"""ERFNet (Romera et al., T-ITS 2018), following the authors' ``erfnet.py``.

Encoder: down-samplers (3x3/2 conv concatenated with 2x2 max-pool) to 16 ch (H/2) and 64 ch (H/4),
5 ``non_bottleneck_1d`` blocks (3x1/1x3 factorised residual convs), a down-sampler to 128 ch
(H/8) and 2x4 dilated blocks (dilation 2, 4, 8, 16). Decoder: transposed-conv up-samplers to
64 ch (H/4) and 16 ch (H/2) with 2 blocks each, a 2x2/2 transposed conv to the classes. No skips.

Taps (methods.md 2.2, "encoder and decoder middle features"): ``enc_low`` and ``enc_mid`` =
``encoder.6`` (end of the 64-ch stage, H/4), ``enc_high`` and ``bottleneck`` = ``encoder.15``
(128 ch, H/8), ``dec_low`` and ``dec_mid`` = ``decoder.2`` (end of the 64-ch decoder stage, H/4).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .base import SegModel
from .enet import SpatialDropout

EPS = 1e-3


class DownsamplerBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        if cin >= cout:
            raise ValueError(f"erfnet: in_channels must be < {cout}, got {cin}")
        self.conv = nn.Conv2d(cin, cout - cin, 3, stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)  # == floor mode for even sizes; ONNX/export-friendly
        self.bn = nn.BatchNorm2d(cout, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class NonBottleneck1d(nn.Module):
    """Two factorised (3x1, 1x3) conv pairs, the second dilated; dropout; residual ReLU."""

    def __init__(self, channels: int, dropout: float, dilation: int):
        super().__init__()
        c, d = channels, dilation
        self.conv3x1_1 = nn.Conv2d(c, c, (3, 1), padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(c, c, (1, 3), padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(c, eps=EPS)
        self.conv3x1_2 = nn.Conv2d(c, c, (3, 1), padding=(d, 0), dilation=(d, 1), bias=True)
        self.conv1x3_2 = nn.Conv2d(c, c, (1, 3), padding=(0, d), dilation=(1, d), bias=True)
        self.bn2 = nn.BatchNorm2d(c, eps=EPS)
        self.dropout = SpatialDropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv3x1_1(x))
        y = F.relu(self.bn1(self.conv1x3_1(y)))
        y = F.relu(self.conv3x1_2(y))
        y = self.dropout(self.bn2(self.conv1x3_2(y)))
        return F.relu(y + x)


class UpsamplerBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=True),
                         nn.BatchNorm2d(cout, eps=EPS), nn.ReLU())


class ERFNet(SegModel):
    TAPS = {"enc_low": "encoder.6", "enc_mid": "encoder.6", "enc_high": "encoder.15", "bottleneck": "encoder.15",
            "dec_mid": "decoder.2", "dec_low": "decoder.2"}

    def __init__(self, in_channels: int = 1, num_classes: int = 2, dropout_low: float = 0.03,
                 dropout_high: float = 0.3):
        super().__init__(in_channels, num_classes)
        self._size_divisor = 8
        enc: List[nn.Module] = [DownsamplerBlock(in_channels, 16), DownsamplerBlock(16, 64)]
        enc += [NonBottleneck1d(64, dropout_low, 1) for _ in range(5)]
        enc.append(DownsamplerBlock(64, 128))
        enc += [NonBottleneck1d(128, dropout_high, d) for _ in range(2) for d in (2, 4, 8, 16)]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(
            UpsamplerBlock(128, 64), NonBottleneck1d(64, 0.0, 1), NonBottleneck1d(64, 0.0, 1),
            UpsamplerBlock(64, 16), NonBottleneck1d(16, 0.0, 1), NonBottleneck1d(16, 0.0, 1),
            nn.ConvTranspose2d(16, num_classes, 2, stride=2, bias=True))

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        return self.encoder(x), []

    def decode(self, bottleneck: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        return self.decoder(bottleneck)


@MODELS.register("erfnet", role="student", dims=2, description="ERFNet (Romera et al. 2018), ~2M parameters")
def erfnet(in_channels: int = 1, num_classes: int = 2, **kw) -> ERFNet:
    return ERFNet(in_channels, num_classes, **kw)
