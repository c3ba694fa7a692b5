"""Feature taps of a trained model on an image layer, and maps back onto the image grid.

Used by the region-graph and alignment widgets. The input is what the model saw in training
(``train.data.prepare_image`` with the run's preprocessing); a 2D model on a volume runs slice by
slice along the run's ``slice_axis``. Inputs are zero-padded to the model's size divisor and maps
are interpolated back, cropped and (if the run resamples) resized to the image grid. No Qt here;
torch is imported inside functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


@dataclass
class ModelInput:
    x: np.ndarray                 # (C, *work spatial), preprocessed as in training
    image_shape: Tuple[int, ...]  # spatial shape of the source image
    axis: int                     # slice axis for a 2D model on a volume, else -1 (whole image)
    divisor: int

    @property
    def n_slices(self) -> int:
        return self.x.shape[1 + self.axis] if self.axis >= 0 else 1

    @property
    def work_plane(self) -> Tuple[int, ...]:
        sp = self.x.shape[1:]
        return tuple(s for i, s in enumerate(sp) if i != self.axis) if self.axis >= 0 else tuple(sp)

    @property
    def image_plane(self) -> Tuple[int, ...]:
        sh = self.image_shape
        return tuple(s for i, s in enumerate(sh) if i != self.axis) if self.axis >= 0 else tuple(sh)

    @property
    def padded_plane(self) -> Tuple[int, ...]:
        return tuple(int(np.ceil(s / self.divisor) * self.divisor) for s in self.work_plane)

    def work_index(self, image_index: int) -> int:
        """Image slice index -> slice index in the (possibly resampled) model input."""
        if self.axis < 0:
            return 0
        n_img, n_work = self.image_shape[self.axis], self.n_slices
        return int(np.clip(round((image_index + 0.5) * n_work / n_img - 0.5), 0, n_work - 1))


def model_input(lm, img) -> ModelInput:
    from ..data.prepare import PreprocessConfig
    from ..data.prepare import prepare_image

    pcfg = PreprocessConfig.from_dict(lm.card.preprocess)
    x, _work = prepare_image(img, pcfg)
    if x.shape[0] != lm.card.in_channels:
        raise ValueError(f"the model takes {lm.card.in_channels} channel(s) but this image gives {x.shape[0]}")
    dims = int(lm.card.model_dims or getattr(lm.model, "spatial_dims", 2))
    if dims == 3 and x.ndim == 3:
        raise ValueError("a 3D model cannot run on a 2D image")
    axis = int(pcfg.slice_axis) if (dims == 2 and x.ndim == 4) else -1
    nsp = img.ndim_spatial
    return ModelInput(x, tuple(img.array.shape[:nsp]), axis, int(getattr(lm.model, "size_divisor", 16)))


def input_batches(mi: ModelInput, indices: Optional[Sequence[int]] = None, batch: int = 8):
    """Yield ``(work slice indices or None, tensor (B, C, *plane))``, zero-padded at the end of each
    spatial axis to the model's size divisor (``data.preprocess.pad_to_multiple``)."""
    import torch

    from ..data.prepare import pad_to_multiple

    def tensor(arr: np.ndarray):
        padded, _ = pad_to_multiple(arr, mi.divisor, n_spatial=arr.ndim - 2)
        return torch.as_tensor(np.ascontiguousarray(padded), dtype=torch.float32)

    if mi.axis < 0:
        yield None, tensor(mi.x[None])
        return
    vol = np.moveaxis(mi.x, 1 + mi.axis, 0)                      # (S, C, *plane)
    idx = list(range(mi.n_slices)) if indices is None else list(indices)
    for s0 in range(0, len(idx), batch):
        chunk = idx[s0:s0 + batch]
        yield chunk, tensor(vol[chunk])


def taps_on(model, x, taps: Sequence[str]):
    import torch

    from ..models.taps import run_with_taps

    with torch.no_grad():
        return run_with_taps(model, x, taps)


def to_image_grid(maps, mi: ModelInput, mode: str = "bilinear") -> np.ndarray:
    """(B, 1, *feature grid) maps -> (B, *image plane) numpy on the image grid."""
    import torch.nn.functional as F

    nd = maps.dim() - 2
    interp = mode if nd == 2 else ("trilinear" if mode != "nearest" else "nearest")
    kw = {} if interp == "nearest" else {"align_corners": False}
    up = F.interpolate(maps.float(), size=mi.padded_plane, mode=interp, **kw)
    up = up[(slice(None), slice(None)) + tuple(slice(0, s) for s in mi.work_plane)]
    if tuple(up.shape[2:]) != mi.image_plane:
        up = F.interpolate(up, size=mi.image_plane, mode=interp, **kw)
    return up[:, 0].cpu().numpy()


def feature_to_image_coords(points: np.ndarray, feat_shape: Sequence[int], mi: ModelInput) -> np.ndarray:
    """Continuous feature-grid coordinates (N, nd) -> image-plane pixel coordinates."""
    pts = np.asarray(points, dtype=float)
    stride = np.asarray(mi.padded_plane, float) / np.asarray(feat_shape, float)
    work = (pts + 0.5) * stride - 0.5
    return work * (np.asarray(mi.image_plane, float) / np.asarray(mi.work_plane, float))


def plane_taps(lm, img, taps: Sequence[str], position: Sequence[int]) -> Tuple[Dict[str, object], ModelInput, int]:
    """Taps for the plane through ``position`` (data indices of the image's spatial axes).

    A 2D model on a volume runs on the slice along its ``slice_axis``; a 3D model runs on the whole
    volume and its taps are cut at the matching depth along axis 0. Returns the taps, the plane's
    ``ModelInput`` and the slice axis used (-1 for a 2D image).
    """
    mi = model_input(lm, img)
    if mi.axis >= 0:
        index = int(position[mi.axis])
        _, x = next(input_batches(mi, [mi.work_index(index)]))
        return taps_on(lm.model, x, taps), mi, mi.axis
    _, x = next(input_batches(mi))
    feats = taps_on(lm.model, x, taps)
    if x.dim() != 5:
        return feats, mi, -1
    index, n_img, n_work = int(position[0]), mi.image_shape[0], mi.x.shape[1]
    cut = {}
    for k, v in feats.items():
        d = v.shape[2]
        cut[k] = v[:, :, int(np.clip(round((index + 0.5) * d / n_img - 0.5), 0, d - 1))]
    wi = int(np.clip(round((index + 0.5) * n_work / n_img - 0.5), 0, n_work - 1))
    return cut, ModelInput(mi.x[:, wi], mi.image_shape[1:], -1, mi.divisor), 0


def assemble_volume(parts: List[Tuple[Optional[List[int]], np.ndarray]], mi: ModelInput) -> np.ndarray:
    """Stack per-slice maps (work slice indices, (B, *plane)) into an image-shaped array (NaN where absent)."""
    if mi.axis < 0:
        return parts[0][1][0]
    planes = np.full((mi.n_slices,) + mi.image_plane, np.nan, np.float32)
    for idx, maps in parts:
        planes[idx] = maps
    n_img = mi.image_shape[mi.axis]
    if mi.n_slices != n_img:  # resampled along the slice axis: nearest slice
        src = np.clip(np.round((np.arange(n_img) + 0.5) * mi.n_slices / n_img - 0.5).astype(int), 0,
                      mi.n_slices - 1)
        planes = planes[src]
    return np.moveaxis(planes, 0, mi.axis)
