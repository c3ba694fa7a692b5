"""3D U-Net teacher and tiny 3D U-Net student: the MONAI-block :class:`~.unet.UNet` with 3D convs.

Same encode/decode split and taps as the 2D U-Net (``enc_low``/``dec_low`` at stride 2,
``enc_mid``/``dec_mid`` at stride 4 with equal channels, ``enc_high`` at stride 8, ``bottleneck`` at
stride 16); inputs are ``(B, C, D, H, W)`` with every
spatial size a multiple of 16.
"""
from __future__ import annotations

from typing import Sequence

from ..registry import MODELS
from .unet import UNet

TEACHER3D_FEATURES = (16, 32, 64, 128, 256, 16)
TINY3D_FEATURES = (4, 8, 8, 16, 16, 4)


@MODELS.register("unet3d", role="teacher", dims=3, description="3D U-Net (MONAI blocks), 16-256 channels")
def unet3d(in_channels: int = 1, num_classes: int = 2, features: Sequence[int] = TEACHER3D_FEATURES,
           width: float = 1.0, **kw) -> UNet:
    return UNet(in_channels, num_classes, features=features, width=width, spatial_dims=3, **kw)


@MODELS.register("unet3d_tiny", role="student", dims=3, description="tiny 3D U-Net, 4-16 channels")
def unet3d_tiny(in_channels: int = 1, num_classes: int = 2, features: Sequence[int] = TINY3D_FEATURES,
                width: float = 1.0, **kw) -> UNet:
    return UNet(in_channels, num_classes, features=features, width=width, spatial_dims=3, **kw)
