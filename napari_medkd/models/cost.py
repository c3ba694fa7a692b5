"""Model cost: parameter counts, multiply-accumulates (MACs) and the registry's model table."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import nn

#: 3D models are costed on this cube (2D models on ``size x size``)
SIZE_3D = 64


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of one forward pass on a zero tensor of ``input_shape`` (FLOPs / 2).

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, transposed
    convolutions and matrix products; element-wise ops, norms and pooling are not counted).
    """
    from torch.utils.flop_counter import FlopCounterMode

    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 3 or any(s < 1 for s in shape):
        raise ValueError(f"count_macs: input_shape must be (B, C, *spatial) with positive sizes, got {shape}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(shape, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def _round_up(size: int, divisor: int) -> int:
    return -(-int(size) // divisor) * divisor


def model_table(size: int = 256, in_channels: int = 1, num_classes: int = 2) -> List[Dict]:
    """One row per registered model: name, role, dims, params, macs (and the input shape used).

    2D models are costed on ``1 x C x size x size`` and 3D models on ``1 x C x 64^3`` (sizes are
    rounded up to the model's ``size_divisor``).
    """
    from ..registry import MODELS
    from .factory import build_model

    rows = []
    for name in MODELS.names():
        meta = MODELS.meta(name)
        model = build_model(name, in_channels=in_channels, num_classes=num_classes)
        dims = int(meta.get("dims", getattr(model, "spatial_dims", 2)))
        side = _round_up(size if dims == 2 else SIZE_3D, model.size_divisor)
        shape = (1, in_channels) + (side,) * dims
        rows.append({"name": name, "role": meta.get("role", "?"), "dims": dims,
                     "params": count_parameters(model), "macs": count_macs(model, shape), "input_shape": shape})
    return rows
