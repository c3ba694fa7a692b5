"""U-Net teacher and tiny U-Net student (2D or 3D), built from MONAI ``BasicUNet`` blocks.

Five resolution levels (strides 1, 2, 4, 8, 16) of ``TwoConv`` / ``Down`` (max-pool + TwoConv)
and four ``UpCat`` decoder stages (transposed-conv up-sampling, concatenation, TwoConv).

Taps: ``enc_low`` = ``down_1`` (stride 2), ``enc_mid`` = ``down_2`` (stride 4),
``enc_high`` = ``down_3`` (stride 8), ``bottleneck`` = ``down_4`` (stride 16), ``dec_mid`` =
``upcat_3`` (stride 4, same channels as ``enc_mid``), ``dec_low`` = ``upcat_2`` (stride 2, same
channels as ``enc_low``).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat

from ..registry import MODELS
from .base import SegModel

#: default features of the teacher: levels 0..4 and the last decoder stage (BasicUNet layout)
TEACHER_FEATURES = (32, 64, 128, 256, 512, 32)
TINY_FEATURES = (8, 8, 16, 32, 32, 8)


def _norm(norm: str):
    if norm == "instance":
        return ("instance", {"affine": True})
    if norm == "batch":
        return ("batch", {})
    raise ValueError(f"unet: norm must be 'batch' or 'instance', got {norm!r}")


class UNet(SegModel):
    """MONAI BasicUNet split into ``encode``/``decode``; ``features`` has six entries."""

    TAPS = {"enc_low": "down_1", "enc_mid": "down_2", "enc_high": "down_3", "bottleneck": "down_4",
            "dec_mid": "upcat_3", "dec_low": "upcat_2"}

    def __init__(self, in_channels: int = 1, num_classes: int = 2, features: Sequence[int] = TEACHER_FEATURES,
                 width: float = 1.0, spatial_dims: int = 2, norm: str = "batch", dropout: float = 0.0,
                 upsample: str = "deconv"):
        super().__init__(in_channels, num_classes)
        if len(features) != 6:
            raise ValueError(f"unet: features needs 6 entries (5 levels + last decoder), got {tuple(features)}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"unet: spatial_dims must be 2 or 3, got {spatial_dims}")
        fea = tuple(max(2, int(round(f * width))) for f in features)
        self.features = fea
        self.spatial_dims = int(spatial_dims)
        self._size_divisor = 16
        d, act, nrm = self.spatial_dims, ("LeakyReLU", {"negative_slope": 0.1, "inplace": False}), _norm(norm)
        self.conv_0 = TwoConv(d, in_channels, fea[0], act, nrm, True, dropout)
        self.down_1 = Down(d, fea[0], fea[1], act, nrm, True, dropout)
        self.down_2 = Down(d, fea[1], fea[2], act, nrm, True, dropout)
        self.down_3 = Down(d, fea[2], fea[3], act, nrm, True, dropout)
        self.down_4 = Down(d, fea[3], fea[4], act, nrm, True, dropout)
        self.upcat_4 = UpCat(d, fea[4], fea[3], fea[3], act, nrm, True, dropout, upsample)
        self.upcat_3 = UpCat(d, fea[3], fea[2], fea[2], act, nrm, True, dropout, upsample)
        self.upcat_2 = UpCat(d, fea[2], fea[1], fea[1], act, nrm, True, dropout, upsample)
        self.upcat_1 = UpCat(d, fea[1], fea[0], fea[5], act, nrm, True, dropout, upsample, halves=False)
        self.final_conv = Convolution(d, fea[5], num_classes, kernel_size=1, conv_only=True)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        return self.down_4(x3), [x0, x1, x2, x3]

    def decode(self, bottleneck: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        x0, x1, x2, x3 = skips
        u = self.upcat_4(bottleneck, x3)
        u = self.upcat_3(u, x2)
        u = self.upcat_2(u, x1)
        u = self.upcat_1(u, x0)
        return self.final_conv(u)


@MODELS.register("unet", role="teacher", dims=2, description="MONAI BasicUNet-style U-Net, 32-512 channels")
def unet(in_channels: int = 1, num_classes: int = 2, features: Sequence[int] = TEACHER_FEATURES,
         width: float = 1.0, **kw) -> UNet:
    return UNet(in_channels, num_classes, features=features, width=width, spatial_dims=2, **kw)


@MODELS.register("unet_tiny", role="student", dims=2, description="tiny U-Net, 8-32 channels")
def unet_tiny(in_channels: int = 1, num_classes: int = 2, features: Sequence[int] = TINY_FEATURES,
              width: float = 1.0, **kw) -> UNet:
    return UNet(in_channels, num_classes, features=features, width=width, spatial_dims=2, **kw)
