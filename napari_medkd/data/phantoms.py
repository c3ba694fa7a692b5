"""Procedural phantoms: fundus-like RGB images with a vessel tree, made by the project itself.

They fill ``napari_medkd/sample_data/vessels2d`` (see ``scripts/make_sample_vessels.py``) and give tests a
realistic-looking 2D case without shipping third-party images.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import ndimage


def _draw_branch(canvas: np.ndarray, rng: np.random.Generator, y: float, x: float, angle: float,
                 width: float, length: float, depth: int) -> None:
    h, w = canvas.shape
    step = 1.0
    n = int(length / step)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        angle += rng.normal(0, 0.06)
        y += step * np.sin(angle)
        x += step * np.cos(angle)
        if not (0 <= y < h and 0 <= x < w):
            return
        if i % 2 == 0:
            r = max(width, 0.6)
            y0, y1 = int(max(0, y - r - 1)), int(min(h, y + r + 2))
            x0, x1 = int(max(0, x - r - 1)), int(min(w, x + r + 2))
            d2 = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2
            canvas[y0:y1, x0:x1] |= d2 <= r * r
        if depth > 0 and i > 8 and rng.random() < 0.035:
            side = rng.choice([-1, 1])
            _draw_branch(canvas, rng, y, x, angle + side * rng.uniform(0.4, 0.9), width * 0.7,
                         length * rng.uniform(0.35, 0.6), depth - 1)
            width *= 0.92
    return


def vessel_phantom(size: int = 256, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(rgb uint8 (H,W,3), vessel mask uint8 {0,1}, fov mask uint8 {0,1})``."""
    rng = np.random.default_rng(seed)
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h / 2 + rng.normal(0, 3), w / 2 + rng.normal(0, 3)
    fov = ((yy - cy) ** 2 + (xx - cx) ** 2) <= (0.46 * size) ** 2
    # optic disc to one side; vessels leave it in arcs
    dy, dx = cy + rng.normal(0, 0.05 * size), cx + rng.choice([-1, 1]) * 0.22 * size
    vessels = np.zeros((h, w), dtype=bool)
    for k in range(rng.integers(5, 8)):
        ang = rng.uniform(0, 2 * np.pi)
        _draw_branch(vessels, rng, dy, dx, ang, width=size / 90 * rng.uniform(1.0, 1.6),
                     length=size * rng.uniform(0.45, 0.8), depth=3)
    vessels &= fov
    # fundus colours: orange-red background with a bright disc and darker macula
    r = np.hypot(yy - cy, xx - cx) / (0.46 * size)
    shade = 1.0 - 0.35 * r ** 2
    disc = np.exp(-(((yy - dy) ** 2 + (xx - dx) ** 2) / (2 * (0.05 * size) ** 2)))
    mac = np.exp(-(((yy - cy) ** 2 + (xx - (2 * cx - dx)) ** 2) / (2 * (0.08 * size) ** 2)))
    soft_v = ndimage.gaussian_filter(vessels.astype(np.float32), 0.8)
    base = np.stack([0.85 * shade, 0.42 * shade, 0.18 * shade], -1)
    base += disc[..., None] * np.array([0.15, 0.45, 0.35])
    base -= mac[..., None] * np.array([0.15, 0.12, 0.05])
    base -= soft_v[..., None] * np.array([0.25, 0.22, 0.08]) * rng.uniform(0.8, 1.2)
    base += ndimage.gaussian_filter(rng.normal(0, 0.05, (h, w)), 6)[..., None]
    base += rng.normal(0, 0.015, base.shape)
    img = np.clip(base, 0, 1) * fov[..., None]
    return (img * 255).astype(np.uint8), vessels.astype(np.uint8), fov.astype(np.uint8)
