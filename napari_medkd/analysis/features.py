"""Feature taps of a trained model on an image layer, and maps back onto the image grid.

Used by the region-graph and alignment widgets. The input is what the model saw in training
(``train.data.prepare_image`` with the run's preprocessing); a 2D model on a volume runs slice by
slice along the run's ``slice_axis``. Slicing and padding are the grid predictor's
(``models.predict``: zero-padded centred to the size divisor, as in prediction), slice indices map
with ``data.prepare.work_slice_index`` (as Live does); maps are interpolated back, cropped and (if the
run resamples) resized to the image grid. No Qt here; torch is imported inside functions.
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
    steps: Tuple[float, float] = (1.0, 1.0)  # (source, work) spacing along the slice axis (axis 0 in 3D)

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

    @property
    def pad_before(self) -> Tuple[int, ...]:
        """Zeros before the work plane on each axis (``models.predict.pad_center`` splits them evenly)."""
        return tuple((p - s) // 2 for p, s in zip(self.padded_plane, self.work_plane))

    def work_index(self, image_index: int, n_work: Optional[int] = None) -> int:
        """Image slice index -> slice index in the (possibly resampled) model input
        (``data.prepare.work_slice_index``); ``n_work`` for a 3D input cut along axis 0."""
        from ..data.prepare import work_slice_index

        if self.axis < 0 and n_work is None:
            return 0
        return work_slice_index(image_index, self.steps[0], self.steps[1], n_work or self.n_slices)


def model_input(lm, img) -> ModelInput:
    from ..data.prepare import PreprocessConfig
    from ..data.prepare import prepare_image

    pcfg = PreprocessConfig.from_dict(lm.card.preprocess)
    x, work = prepare_image(img, pcfg)
    if x.shape[0] != lm.card.in_channels:
        raise ValueError(f"the model takes {lm.card.in_channels} channel(s) but this image gives {x.shape[0]}")
    dims = int(lm.card.model_dims or getattr(lm.model, "spatial_dims", 2))
    if dims == 3 and x.ndim == 3:
        raise ValueError("a 3D model cannot run on a 2D image")
    axis = int(pcfg.slice_axis) if (dims == 2 and x.ndim == 4) else -1
    nsp = img.ndim_spatial
    sitk_ax = nsp - 1 - max(axis, 0)               # spacing is in SimpleITK (x, y, z) order
    steps = (img.spacing[sitk_ax], work.spacing[sitk_ax]) if nsp == 3 else (1.0, 1.0)
    return ModelInput(x, tuple(img.array.shape[:nsp]), axis, int(getattr(lm.model, "size_divisor", 16)), steps)


def input_batches(mi: ModelInput, indices: Optional[Sequence[int]] = None, batch: int = 8):
    """Yield ``(work slice indices or None, tensor (B, C, *plane))``, sliced and zero-padded to the
    model's size divisor as the grid predictor does (``models.predict.slice_batches``/``pad_center``)."""
    import torch

    from ..models.predict import pad_center, slice_batches

    def tensor(arr: np.ndarray):
        padded, _ = pad_center(arr, mi.divisor, arr.ndim - 2)
        return torch.as_tensor(np.ascontiguousarray(padded), dtype=torch.float32)

    if mi.axis < 0:
        yield None, tensor(mi.x[None])
        return
    for chunk, x in slice_batches(mi.x, mi.axis, batch, indices):
        yield chunk, tensor(x)


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
    up = up[(slice(None), slice(None)) + tuple(slice(b, b + s) for b, s in zip(mi.pad_before, mi.work_plane))]
    if tuple(up.shape[2:]) != mi.image_plane:
        up = F.interpolate(up, size=mi.image_plane, mode=interp, **kw)
    return up[:, 0].cpu().numpy()


def feature_to_image_coords(points: np.ndarray, feat_shape: Sequence[int], mi: ModelInput) -> np.ndarray:
    """Continuous feature-grid coordinates (N, nd) -> image-plane pixel coordinates."""
    pts = np.asarray(points, dtype=float)
    stride = np.asarray(mi.padded_plane, float) / np.asarray(feat_shape, float)
    work = (pts + 0.5) * stride - 0.5 - np.asarray(mi.pad_before, float)
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
    wi = mi.work_index(int(position[0]), n_work=mi.x.shape[1])
    before, padded = mi.pad_before[0], mi.padded_plane[0]
    cut = {}
    for k, v in feats.items():  # the feature cell nearest the work slice, on the padded grid
        d = v.shape[2]
        cut[k] = v[:, :, int(np.clip(np.floor((wi + before + 0.5) * d / padded), 0, d - 1))]
    return cut, ModelInput(mi.x[:, wi], mi.image_shape[1:], -1, mi.divisor), 0


def assemble_volume(parts: List[Tuple[Optional[List[int]], np.ndarray]], mi: ModelInput) -> np.ndarray:
    """Stack per-slice maps (work slice indices, (B, *plane)) into an image-shaped array (NaN where absent)."""
    if mi.axis < 0:
        return parts[0][1][0]
    planes = np.full((mi.n_slices,) + mi.image_plane, np.nan, np.float32)
    for idx, maps in parts:
        planes[idx] = maps
    n_img = mi.image_shape[mi.axis]
    if mi.n_slices != n_img or mi.steps[0] != mi.steps[1]:  # resampled along the slice axis: nearest slice
        planes = planes[[mi.work_index(i) for i in range(n_img)]]
    return np.moveaxis(planes, 0, mi.axis)
