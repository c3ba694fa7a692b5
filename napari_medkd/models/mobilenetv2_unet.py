"""MobileNetV2-UNet student (the Graph Flow / GKD ``MobileNetV2_unet``), no torchvision.

Encoder: MobileNetV2 ``features`` (Sandler et al. 2018): a 3x3/2 stem to 32 ch, 17 inverted
residual blocks (expansion t, channels c, repeats n, stride s per the paper's table) and a 1x1
conv to 1280 ch at H/32. Decoder: four stages of ``ConvTranspose2d(4, stride 2)`` up-sampling,
concatenation with the encoder feature at that stride (96, 32, 24, 16 ch) and an inverted
residual; a 1x1 conv to the classes at H/2 and bilinear x2 up-sampling.

Taps (methods.md 2.2): ``enc_low`` and ``enc_mid`` = ``features.3`` (24 ch, H/4), ``enc_high`` =
``features.6`` (32 ch, H/8), ``bottleneck`` = ``features.18`` (1280 ch, H/32), ``dec_low`` and
``dec_mid`` = ``invres3`` (24 ch, H/4). ``width_mult`` scales all encoder/decoder widths like MobileNetV2's.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .base import SegModel

#: (expansion t, channels c, repeats n, first stride s), MobileNetV2 Table 2
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
#: feature indices whose outputs are the skips at H/2, H/4, H/8, H/16
SKIP_AT = (1, 3, 6, 13)


def _divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection; residual if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = int(round(cin * expand))
        layers: List[nn.Module] = [ConvBNReLU6(cin, hidden, 1)] if expand != 1 else []
        layers += [ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2UNet(SegModel):
    TAPS = {"enc_low": "features.3", "enc_mid": "features.3", "enc_high": "features.6", "bottleneck": "features.18",
            "dec_mid": "invres3", "dec_low": "invres3"}

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width_mult: float = 1.0):
        super().__init__(in_channels, num_classes)
        self._size_divisor = 32
        stem = _divisible(32 * width_mult)
        last = _divisible(1280 * max(1.0, width_mult))
        feats: List[nn.Module] = [ConvBNReLU6(in_channels, stem, 3, 2)]
        cin, widths = stem, []
        for t, c, n, s in SETTINGS:
            cout = _divisible(c * width_mult)
            for i in range(n):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
                widths.append(cout)
        feats.append(ConvBNReLU6(cin, last, 1))
        self.features = nn.Sequential(*feats)
        c1, c2, c3, c4 = (widths[i - 1] for i in SKIP_AT)  # widths[k - 1]: output of features[k]
        self.dconv1 = nn.ConvTranspose2d(last, c4, 4, stride=2, padding=1)
        self.invres1 = InvertedResidual(2 * c4, c4, 1, 6)
        self.dconv2 = nn.ConvTranspose2d(c4, c3, 4, stride=2, padding=1)
        self.invres2 = InvertedResidual(2 * c3, c3, 1, 6)
        self.dconv3 = nn.ConvTranspose2d(c3, c2, 4, stride=2, padding=1)
        self.invres3 = InvertedResidual(2 * c2, c2, 1, 6)
        self.dconv4 = nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1)
        self.invres4 = InvertedResidual(2 * c1, c1, 1, 6)
        self.conv_last = nn.Conv2d(c1, num_classes, 1)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        skips = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in SKIP_AT:
                skips.append(x)
        return x, skips

    def decode(self, bottleneck: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        x1, x2, x3, x4 = skips
        x = self.invres1(torch.cat([x4, self.dconv1(bottleneck)], dim=1))
        x = self.invres2(torch.cat([x3, self.dconv2(x)], dim=1))
        x = self.invres3(torch.cat([x2, self.dconv3(x)], dim=1))
        x = self.invres4(torch.cat([x1, self.dconv4(x)], dim=1))
        return F.interpolate(self.conv_last(x), scale_factor=2.0, mode="bilinear", align_corners=False)


@MODELS.register("mobilenetv2_unet", role="student", dims=2,
                 description="MobileNetV2 encoder + U-Net decoder (Graph Flow / GKD student)")
def mobilenetv2_unet(in_channels: int = 1, num_classes: int = 2, width_mult: float = 1.0) -> MobileNetV2UNet:
    return MobileNetV2UNet(in_channels, num_classes, width_mult=width_mult)
