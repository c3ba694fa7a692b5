"""Random training augmentation on channel-first numpy patches: flips, 90-degree turns, intensity jitter."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def augment(image_cf: np.ndarray, label: Optional[np.ndarray], rng: np.random.Generator, flips: bool = True,
            rot90: bool = True, intensity: Optional[Sequence[float]] = (0.1, 0.1),
            fov: Optional[np.ndarray] = None):
    """Apply the same random geometry to ``image_cf`` (C, *spatial), ``label`` and ``fov`` (*spatial).

    * flips: each spatial axis flipped with probability 1/2;
    * rot90: a random multiple of 90 degrees in the (y, x) plane when that plane is square;
    * intensity ``(scale, shift)``: image only, ``x * (1 + U(-scale, scale)) + U(-shift, shift)`` per
      channel; ``None`` switches it off.

    Returns ``(image, label)``, or ``(image, label, fov)`` when ``fov`` is given.
    """
    nsp = image_cf.ndim - 1
    spatial = image_cf.shape[1:]
    for name, m in (("label", label), ("fov", fov)):
        if m is not None and m.shape != spatial:
            raise ValueError(f"{name} shape {m.shape} differs from image spatial shape {spatial}")
    img, lbl, fv = image_cf, label, fov

    def geo(fn):
        nonlocal img, lbl, fv
        img = fn(img, 1)
        lbl = fn(lbl, 0) if lbl is not None else None
        fv = fn(fv, 0) if fv is not None else None

    if flips:
        for ax in range(nsp):
            if rng.random() < 0.5:
                geo(lambda a, off, ax=ax: np.flip(a, axis=off + ax))
    if rot90 and nsp >= 2 and spatial[-1] == spatial[-2]:
        k = int(rng.integers(4))
        if k:
            geo(lambda a, off: np.rot90(a, k, axes=(a.ndim - 2, a.ndim - 1)))
    img = np.array(img, dtype=np.float32 if img.dtype.kind != "f" else img.dtype, copy=True)
    if intensity:
        img = intensity_jitter(img, rng, intensity)
    lbl = np.ascontiguousarray(lbl) if lbl is not None else None
    if fov is None:
        return img, lbl
    return img, lbl, np.ascontiguousarray(fv)


def intensity_jitter(image_cf: np.ndarray, rng: np.random.Generator, intensity: Sequence[float] = (0.1, 0.1)
                     ) -> np.ndarray:
    """``x * (1 + U(-scale, scale)) + U(-shift, shift)`` per channel of a channel-first image."""
    scale, shift = float(intensity[0]), float(intensity[1])
    c = image_cf.shape[0]
    a = 1.0 + rng.uniform(-scale, scale, size=c)
    b = rng.uniform(-shift, shift, size=c)
    shape = (c,) + (1,) * (image_cf.ndim - 1)
    return (image_cf * a.reshape(shape) + b.reshape(shape)).astype(image_cf.dtype, copy=False)
