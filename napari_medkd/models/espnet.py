"""ESPNet (Mehta et al., ECCV 2018): ESP encoder (ESPNet-C) plus the paper's light decoder.

Follows the authors' ``ESPNet(classes, p=2, q=3)``: a 3x3/2 CBR to 16 ch (H/2) concatenated with
the down-sampled input; an ESP down-sampler to 64 ch (H/4), ``p`` ESP blocks, concatenation
(128 + in ch); an ESP down-sampler to 128 ch (H/8), ``q`` ESP blocks, concatenation (256 ch).
ESP blocks: 1x1 reduce to ``n = C/5`` then 3x3 convs with dilation 1, 2, 4, 8, 16 fused
hierarchically (HFF) and concatenated. The decoder works in class space: 1x1 projection,
transposed-conv up-sampling to H/4 and H/2 with skip fusion, a final transposed conv to H.

Taps (methods.md 2.1): ``enc_low`` = ``level1`` (16 ch, H/2), ``enc_mid`` = ``b2`` (the stage-2
output, 128 + in ch, H/4), ``enc_high`` and ``bottleneck`` = ``b3`` (256 ch, H/8), ``dec_mid`` =
``combine_l2_l3`` (``num_classes`` ch, H/4), ``dec_low`` = ``conv`` (``num_classes`` ch, H/2).

**No equal-channel encoder/decoder pair.** The decoder works in class space, so every decoder
feature has ``num_classes`` channels while the encoder's have 16/128+/256: ESPNet cannot offer
Graph Flow an equal-channel stride-4 pair. Graph Flow then channel-pools both student taps to the
smaller count (see ``distill/terms/graph_flow.py``, "Channel rule").
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from ..registry import MODELS
from .base import SegModel

EPS = 1e-3


class CBR(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2, bias=False),
                         nn.BatchNorm2d(cout, eps=EPS), nn.PReLU(cout))


class BR(nn.Sequential):
    def __init__(self, channels: int):
        super().__init__(nn.BatchNorm2d(channels, eps=EPS), nn.PReLU(channels))


def _dconv(cin: int, cout: int, d: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, padding=d, dilation=d, bias=False)


class ESPBlock(nn.Module):
    """Reduce (1x1, or 3x3/2 when down-sampling), split-transform with dilations 1..16, HFF, merge.

    With fewer than 5 output channels (the class-space decoder block for K < 5) the branches give
    5 channels and a 1x1 conv merges them to ``cout``.
    """

    def __init__(self, cin: int, cout: int, down: bool = False, add: bool = True):
        super().__init__()
        width = max(cout, 5)
        n = width // 5
        n1 = width - 4 * n
        self.reduce = nn.Conv2d(cin, n, 3, 2, padding=1, bias=False) if down else nn.Conv2d(cin, n, 1, bias=False)
        self.d1 = _dconv(n, n1, 1)
        self.d2, self.d4, self.d8, self.d16 = (_dconv(n, n, d) for d in (2, 4, 8, 16))
        self.merge = nn.Conv2d(width, cout, 1, bias=False) if width != cout else nn.Identity()
        self.add = add and not down and cin == cout
        self.out = BR(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.reduce(x)
        add1 = self.d2(r)
        add2 = add1 + self.d4(r)
        add3 = add2 + self.d8(r)
        add4 = add3 + self.d16(r)
        y = self.merge(torch.cat([self.d1(r), add1, add2, add3, add4], dim=1))
        if self.add:
            y = x + y
        return self.out(y)


class InputProjection(nn.Sequential):
    """``times`` 3x3/2 average poolings of the image (the input reinforcement)."""

    def __init__(self, times: int):
        super().__init__(*[nn.AvgPool2d(3, stride=2, padding=1) for _ in range(times)])


class ESPNet(SegModel):
    TAPS = {"enc_low": "level1", "enc_mid": "b2", "enc_high": "b3", "bottleneck": "b3",
            "dec_mid": "combine_l2_l3", "dec_low": "conv"}

    def __init__(self, in_channels: int = 1, num_classes: int = 2, p: int = 2, q: int = 3):
        super().__init__(in_channels, num_classes)
        c, k = in_channels, num_classes
        self._size_divisor = 8
        self.level1 = CBR(c, 16, 3, 2)
        self.sample1 = InputProjection(1)
        self.sample2 = InputProjection(2)
        self.b1 = BR(16 + c)
        self.level2_0 = ESPBlock(16 + c, 64, down=True)
        self.level2 = nn.Sequential(*[ESPBlock(64, 64) for _ in range(p)])
        self.b2 = BR(128 + c)
        self.level3_0 = ESPBlock(128 + c, 128, down=True)
        self.level3 = nn.Sequential(*[ESPBlock(128, 128) for _ in range(q)])
        self.b3 = BR(256)
        # decoder (class space)
        self.l3_classifier = nn.Conv2d(256, k, 1, bias=False)
        self.br = nn.BatchNorm2d(k, eps=EPS)
        self.up_l3 = nn.ConvTranspose2d(k, k, 2, stride=2, bias=False)
        self.level2_c = nn.Conv2d(128 + c, k, 1, bias=False)
        self.combine_l2_l3 = nn.Sequential(BR(2 * k), ESPBlock(2 * k, k, add=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(k, k, 2, stride=2, bias=False), BR(k))
        self.conv = CBR(16 + c + k, k, 3)
        self.classifier = nn.ConvTranspose2d(k, k, 2, stride=2, bias=False)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        out0 = self.b1(torch.cat([self.level1(x), self.sample1(x)], dim=1))
        out1_0 = self.level2_0(out0)
        out1 = self.b2(torch.cat([self.level2(out1_0), out1_0, self.sample2(x)], dim=1))
        out2_0 = self.level3_0(out1)
        out2 = self.b3(torch.cat([out2_0, self.level3(out2_0)], dim=1))
        return out2, [out0, out1]

    def decode(self, bottleneck: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        out0, out1 = skips
        l3 = self.up_l3(self.br(self.l3_classifier(bottleneck)))
        l2 = self.up_l2(self.combine_l2_l3(torch.cat([self.level2_c(out1), l3], dim=1)))
        return self.classifier(self.conv(torch.cat([l2, out0], dim=1)))


@MODELS.register("espnet", role="student", dims=2, description="ESPNet (Mehta et al. 2018), p=2, q=3, ~0.18M")
def espnet(in_channels: int = 1, num_classes: int = 2, p: int = 2, q: int = 3) -> ESPNet:
    return ESPNet(in_channels, num_classes, p=p, q=q)
