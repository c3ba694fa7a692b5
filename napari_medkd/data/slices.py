"""Cut volumes into 2D slices and back, and sample training patches with foreground over-sampling."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np


def volume_to_slices(array_cfirst: np.ndarray, axis: int = 0) -> List[np.ndarray]:
    """``(C, z, y, x)`` -> list of channel-first 2D slices along spatial ``axis`` (0 = z)."""
    if array_cfirst.ndim != 4:
        raise ValueError(f"expected a channel-first volume (C, z, y, x), got shape {array_cfirst.shape}")
    if not 0 <= axis <= 2:
        raise ValueError(f"slice axis must be 0, 1 or 2, got {axis}")
    return [np.take(array_cfirst, i, axis=1 + axis) for i in range(array_cfirst.shape[1 + axis])]


def slices_to_volume(slices: Sequence[np.ndarray], axis: int = 0, channel_first: bool = True) -> np.ndarray:
    """Stack 2D slices back into a volume: channel-first ``(C, y, x)`` slices give ``(C, z, y, x)``;
    with ``channel_first=False`` ``(y, x)`` slices (e.g. label maps) give ``(z, y, x)``."""
    if not len(slices):
        raise ValueError("no slices to stack")
    if not 0 <= axis <= 2:
        raise ValueError(f"slice axis must be 0, 1 or 2, got {axis}")
    return np.stack(list(slices), axis=axis + (1 if channel_first else 0))


def _as_size(patch_size: Union[int, Sequence[int]], nsp: int) -> Tuple[int, ...]:
    size = (int(patch_size),) * nsp if np.isscalar(patch_size) else tuple(int(p) for p in patch_size)
    if len(size) != nsp or min(size) < 1:
        raise ValueError(f"patch size {patch_size} does not fit an image with {nsp} spatial axes")
    return size


def centred_pads(spatial: Sequence[int], size: Sequence[int]) -> List[Tuple[int, int]]:
    """Per axis ``(before, after)`` zero padding that brings ``spatial`` up to ``size``, centred (the
    extra voxel after); (0, 0) where the axis is long enough."""
    return [(d // 2, d - d // 2) for d in (max(0, int(p) - int(s)) for p, s in zip(size, spatial))]


def sample_patch(image_cf: np.ndarray, label: Optional[np.ndarray], patch_size: Union[int, Sequence[int]],
                 fg_prob: float = 0.33, rng: Optional[np.random.Generator] = None
                 ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Random crop of a channel-first image and its label map (2D or 3D).

    With probability ``fg_prob`` (and when the label has foreground) the patch is centred on a random
    voxel of a randomly chosen foreground class, as far as the borders allow. Images smaller than the
    patch are zero-padded (label 0) at both sides.
    """
    rng = rng if rng is not None else np.random.default_rng()
    nsp = image_cf.ndim - 1
    size = _as_size(patch_size, nsp)
    spatial = image_cf.shape[1:]
    if label is not None and label.shape != spatial:
        raise ValueError(f"label shape {label.shape} differs from image spatial shape {spatial}")
    pads = centred_pads(spatial, size)
    if any(sum(p) for p in pads):
        image_cf = np.pad(image_cf, [(0, 0)] + pads)
        if label is not None:
            label = np.pad(label, pads)
        spatial = image_cf.shape[1:]
    hi = [s - p for s, p in zip(spatial, size)]
    start = None
    if label is not None and fg_prob > 0 and rng.random() < fg_prob:
        if label.dtype.kind in "iu" and label.size and label.min() >= 0:
            classes = np.flatnonzero(np.bincount(label.ravel()))
        else:
            classes = np.unique(label)
        classes = classes[classes > 0]
        if classes.size:
            c = classes[rng.integers(classes.size)]
            idx = np.flatnonzero(label == c)
            centre = np.unravel_index(idx[rng.integers(idx.size)], spatial)
            start = [int(np.clip(ci - p // 2, 0, h)) for ci, p, h in zip(centre, size, hi)]
    if start is None:
        start = [int(rng.integers(0, h + 1)) for h in hi]
    sl = tuple(slice(s, s + p) for s, p in zip(start, size))
    img = np.ascontiguousarray(image_cf[(slice(None),) + sl])
    lbl = np.ascontiguousarray(label[sl]) if label is not None else None
    return img, lbl
