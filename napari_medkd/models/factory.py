"""Build registered models by name and measure their feature taps."""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict

import torch

from ..registry import MODELS
from .base import SegModel
from .taps import FeatureTaps

if TYPE_CHECKING:  # pragma: no cover
    from .taps import TapInfo


def build_model(name: str, in_channels: int = 1, num_classes: int = 2, **kw) -> SegModel:
    """Build the registered model ``name``; unknown names raise ``KeyError`` listing the known ones."""
    if name not in MODELS:  # the registry imports every module of this package on first use
        raise KeyError(f"unknown model '{name}'; known models: {', '.join(MODELS.names())}")
    if int(in_channels) < 1 or int(num_classes) < 1:
        raise ValueError(f"model '{name}': in_channels and num_classes must be >= 1, "
                         f"got {in_channels} and {num_classes}")
    try:
        model = MODELS.get(name)(in_channels=int(in_channels), num_classes=int(num_classes), **kw)
    except TypeError as exc:
        raise TypeError(f"model '{name}' rejected its options {sorted(kw)}: {exc}") from exc
    if not isinstance(model, SegModel):
        raise TypeError(f"model factory '{name}' returned {type(model).__name__}, not a SegModel")
    return model


def tap_info(model: SegModel, in_channels: int, size: int = 64) -> Dict[str, "TapInfo"]:
    """Channels and stride of every tap (and ``logits``), from one probe forward pass.

    The probe is ``1 x in_channels x size^dims`` (``size`` rounded up to the model's
    ``size_divisor``), run in eval mode without gradients; the model's mode is restored.
    """
    from .taps import TapInfo

    dims = int(getattr(model, "spatial_dims", 2))
    div = int(model.size_divisor)
    side = max(div, -(-int(size) // div) * div)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = torch.randn((1, int(in_channels)) + (side,) * dims, device=device, dtype=dtype)
    names = [n for n in model.tap_paths() if n != "logits"]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FeatureTaps(model, names) as taps:
            logits = model(x)
    finally:
        model.train(was_training)
    feats = dict(taps.features)
    feats["logits"] = logits
    info = {}
    for name, feat in feats.items():
        spatial = tuple(feat.shape[2:])
        if len(spatial) != dims:
            raise ValueError(f"{type(model).__name__}: tap '{name}' has shape {tuple(feat.shape)}, "
                             f"expected {dims} spatial dims")
        strides = {side // s if s else 0 for s in spatial}
        if len(strides) != 1 or any(s * (side // s) != side for s in spatial):
            raise ValueError(f"{type(model).__name__}: tap '{name}' of shape {tuple(feat.shape)} has no single "
                             f"integer stride for a {side}^{dims} input")
        info[name] = TapInfo(channels=int(feat.shape[1]), stride=strides.pop())
    return info
