"""The contract every segmentation model in napari-medkd follows.

A model is an ``nn.Module`` whose ``forward(x)`` returns logits ``(B, K, *spatial)`` and which
splits into ``encode`` / ``decode`` so that a bottleneck can be exchanged between models (the
header exchange of Generalizable KD):

    bottleneck, skips = model.encode(x)
    logits = model.decode(bottleneck, skips)      # == model(x)

Named feature taps are module paths (``TAPS``) whose *output* is captured by a forward hook
(``napari_medkd.models.taps.FeatureTaps``), so distillation never changes the model:

- ``enc_low``:    a shallow encoder stage (stride 2 or 4)
- ``enc_mid``:    the encoder output at stride 4
- ``enc_high``:   a mid/deep encoder stage (stride 8 where the design has one)
- ``bottleneck``: the deepest encoder output (the tensor ``encode`` returns)
- ``dec_mid``:    the decoder stage at stride 4, with ``enc_mid``'s channel count where the design
  allows it (Graph Flow's cross-layer pair, methods.md §2.2; a model that cannot offer an
  equal-channel pair says so in its docstring)
- ``dec_low``:    the decoder stage at ``enc_low``'s resolution
- ``logits``:     the final output (the model itself, path "")

Models whose ``enc_low``/``dec_low`` already sit at stride 4 point ``enc_mid``/``dec_mid`` at the
same modules (two names, one hook each); the older names are never moved, since other terms and
saved configs use them.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn

TAP_NAMES = ("enc_low", "enc_mid", "enc_high", "bottleneck", "dec_mid", "dec_low", "logits")


class SegModel(nn.Module):
    """Base class: subclasses set ``TAPS`` and implement ``encode``/``decode``."""

    #: tap name -> dotted module path inside this model ("" = the model output)
    TAPS: Dict[str, str] = {}
    spatial_dims: int = 2

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:  # pragma: no cover
        raise NotImplementedError

    def decode(self, bottleneck: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bottleneck, skips = self.encode(x)
        return self.decode(bottleneck, skips)

    def tap_paths(self) -> Dict[str, str]:
        taps = dict(self.TAPS)
        taps.setdefault("logits", "")
        return taps

    @property
    def size_divisor(self) -> int:
        """Input sizes must be multiples of this (the total stride)."""
        return getattr(self, "_size_divisor", 16)
