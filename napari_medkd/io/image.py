"""The image type (an array with its geometry) and the errors of reading and writing images.

Axis conventions: ``MedicalImage.array`` is in numpy order ((z, y, x) or (y, x), colour last);
``spacing``/``origin``/``direction`` are in SimpleITK order (x, y[, z]), direction flattened row-major.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]


class ImageReadError(ValueError):
    """A file or folder could not be read as an image; the message names it and says why."""


class ImageWriteError(ValueError):
    """An image or mask could not be written; the message names the target and says why."""


@dataclass
class MedicalImage:
    """An array with its SimpleITK geometry (see the module docstring for axis orders)."""

    array: np.ndarray
    spacing: Tuple[float, ...]
    origin: Tuple[float, ...]
    direction: Tuple[float, ...]
    path: str = ""

    def __post_init__(self):
        self.spacing = tuple(float(v) for v in np.ravel(self.spacing))
        self.origin = tuple(float(v) for v in np.ravel(self.origin))
        self.direction = tuple(float(v) for v in np.ravel(self.direction))
        self.path = "" if self.path is None else str(self.path)
        n = len(self.spacing)
        if n not in (2, 3) or len(self.origin) != n or len(self.direction) != n * n:
            raise ValueError(f"{self.path or 'image'}: inconsistent geometry: spacing {self.spacing}, "
                             f"origin {self.origin}, direction of {len(self.direction)} values")
        if np.ndim(self.array) not in (n, n + 1):
            raise ValueError(f"{self.path or 'image'}: array of shape {np.shape(self.array)} does not fit "
                             f"{n} spatial axes")

    @property
    def ndim_spatial(self) -> int:
        return len(self.spacing)

    @property
    def channels(self) -> int:
        shape = np.shape(self.array)
        return shape[-1] if len(shape) == self.ndim_spatial + 1 else 1

    @property
    def is_rgb(self) -> bool:
        return self.ndim_spatial == 2 and np.ndim(self.array) == 3 and self.channels == 3

    def geometry(self) -> dict:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    def to_sitk(self):
        import SimpleITK as sitk

        arr = np.asarray(self.array)
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        img = sitk.GetImageFromArray(arr, isVector=arr.ndim == self.ndim_spatial + 1)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    @classmethod
    def from_sitk(cls, img, path: PathLike = "") -> "MedicalImage":
        import SimpleITK as sitk

        return cls(sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), img.GetDirection(), str(path))

    def affine(self) -> np.ndarray:
        """Homogeneous index -> physical matrix, both in numpy axis order ((z, y, x) or (y, x))."""
        n = self.ndim_spatial
        lin = np.asarray(self.direction, float).reshape(n, n) @ np.diag(self.spacing)
        out = np.eye(n + 1)
        out[:n, :n] = lin[::-1, ::-1]
        out[:n, n] = np.asarray(self.origin, float)[::-1]
        return out



def sitk_reason(exc: Exception, path: PathLike) -> str:
    """The useful part of a SimpleITK/ITK error message, without the C++ source locations."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = [ln.split("ERROR:", 1)[-1].strip() for ln in lines if "Exception thrown in" not in ln]
    text = " ".join(k for k in keep if k) or type(exc).__name__
    text = re.sub(r"\w+\(0x[0-9a-fA-F]+\):\s*", "", text)  # ITK object addresses
    return text.replace(str(path), Path(path).name)[:300]


def image_from_sitk(img, path: PathLike, bitmap: bool = False) -> MedicalImage:
    """Apply the reading rules (dimensions, channels, bitmap geometry) to a SimpleITK image."""
    import SimpleITK as sitk

    dim, comps = img.GetDimension(), img.GetNumberOfComponentsPerPixel()
    if dim not in (2, 3):
        raise ImageReadError(f"{path}: {dim}D images are not supported (only 2D and 3D)")
    if "complex" in img.GetPixelIDTypeAsString():
        raise ImageReadError(f"{path}: complex-valued pixels are not supported")
    arr = sitk.GetArrayFromImage(img)
    if comps > 1:
        if dim == 3:
            raise ImageReadError(f"{path}: 3D image with {comps} components per voxel; only single-channel "
                                 f"volumes (and 2D RGB images) are supported")
        if comps not in (2, 3, 4):
            raise ImageReadError(f"{path}: 2D image with {comps} channels; expected grey, RGB or RGBA")
        arr = arr[..., 0] if comps == 2 else np.ascontiguousarray(arr[..., :3])
    if bitmap:
        return MedicalImage(arr, (1.0,) * dim, (0.0,) * dim, tuple(np.eye(dim).ravel()), str(path))
    return MedicalImage(arr, img.GetSpacing(), img.GetOrigin(), img.GetDirection(), str(path))

