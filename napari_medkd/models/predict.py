"""Torch inference on whole images and volumes: 2D models go slice by slice, large images are
tiled with overlap and Gaussian blending (MONAI ``sliding_window_inference``)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np


def _roi(spatial, divisor: int, max_roi: int):
    return tuple(min(max_roi, int(math.ceil(s / divisor) * divisor)) for s in spatial)


def predict_logits(model, image: np.ndarray, *, device=None, slice_axis: int = 0, batch_size: int = 8,
                   max_roi: int = 256, overlap: float = 0.25, amp: bool = False) -> np.ndarray:
    """Return logits ``(K, *spatial)`` float32 for a channel-first image ``(C, *spatial)``.

    A 2D model on a 3D image runs on slices along ``slice_axis`` in batches.
    """
    import torch
    from monai.inferers import sliding_window_inference

    device = torch.device(device) if device is not None else next(model.parameters()).device
    model_dims = getattr(model, "spatial_dims", 2)
    img_dims = image.ndim - 1
    if img_dims not in (2, 3):
        raise ValueError(f"expected a channel-first 2D or 3D image, got shape {image.shape}")
    if model_dims == 3 and img_dims == 2:
        raise ValueError("a 3D model cannot segment a 2D image")
    div = getattr(model, "size_divisor", 16)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            if model_dims == img_dims:
                x = torch.as_tensor(image[None], dtype=torch.float32, device=device)
                roi = _roi(x.shape[2:], div, max_roi if model_dims == 2 else 96)
                out = sliding_window_inference(x, roi, sw_batch_size=batch_size, predictor=model,
                                               overlap=overlap, mode="gaussian", padding_mode="constant")
                return out[0].float().cpu().numpy()
            # 2D model, 3D image: slices along the axis
            vol = np.moveaxis(image, 1 + slice_axis, 1)  # (C, S, a, b)
            outs = []
            for s0 in range(0, vol.shape[1], batch_size):
                chunk = np.ascontiguousarray(np.moveaxis(vol[:, s0:s0 + batch_size], 1, 0))  # (b, C, a, b)
                x = torch.as_tensor(chunk, dtype=torch.float32, device=device)
                roi = _roi(x.shape[2:], div, max_roi)
                out = sliding_window_inference(x, roi, sw_batch_size=batch_size, predictor=model,
                                               overlap=overlap, mode="gaussian", padding_mode="constant")
                outs.append(out.float().cpu().numpy())
            logits = np.concatenate(outs, 0)          # (S, K, a, b)
            return np.moveaxis(logits, 0, 1 + slice_axis)  # (K, ..., S at slice_axis, ...)
    finally:
        model.train(was_training)


def predict_labels(model, image: np.ndarray, fov: Optional[np.ndarray] = None, **kw) -> np.ndarray:
    logits = predict_logits(model, image, **kw)
    labels = logits.argmax(0).astype(np.uint8 if logits.shape[0] <= 256 else np.uint16)
    if fov is not None:
        labels[~fov.astype(bool)] = 0
    return labels
