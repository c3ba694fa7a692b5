"""npe2 writer: a Labels layer -> .nii / .nii.gz / .mha / .nrrd / .png with the source geometry.

The geometry comes from ``metadata["medkd_geometry"]`` (set by the readers and copied by every
widget onto the layers it creates); a layer without it gets spacing, origin and direction from its
own ``scale`` / ``translate`` / ``affine``. napari's save dialog asks before replacing a file, so
the writer overwrites.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ._reader import as_label_array, layer_kwargs_to_geometry
from .io.suffixes import LABEL_WRITE_EXTENSIONS

WRITER_SUFFIXES = LABEL_WRITE_EXTENSIONS  # napari.yaml's writer lists the same (tests/test_plugin_io.py)


def geometry_from_attributes(meta: Dict[str, Any], ndim_spatial: int) -> Optional[Dict[str, Any]]:
    """spacing/origin/direction (SimpleITK order) of a layer from its metadata or its transform."""
    geo = (meta.get("metadata") or {}).get("medkd_geometry")
    if geo and len(geo.get("spacing", ())) == ndim_spatial:
        return {k: list(np.asarray(geo[k], dtype=float).ravel()) for k in ("spacing", "origin", "direction")}
    scale = meta.get("scale")
    if scale is None or len(scale) != ndim_spatial:
        return None
    translate = meta.get("translate")
    translate = np.zeros(ndim_spatial) if translate is None else translate
    return layer_kwargs_to_geometry(scale, translate, meta.get("affine"))


def reference_image(shape, geometry: Optional[Dict[str, Any]]):
    """A ``MedicalImage`` carrying only the geometry (a zero-stride array of ``shape``)."""
    from .io.image import MedicalImage

    if geometry is None:
        return None
    arr = np.broadcast_to(np.zeros((), np.uint8), tuple(shape))
    return MedicalImage(arr, tuple(geometry["spacing"]), tuple(geometry["origin"]),
                        tuple(geometry["direction"]), None)


def write_labels(path: str, data: Any, meta: Dict[str, Any]) -> List[str]:
    """npe2 single-layer writer for Labels layers."""
    from .io.image_io import write_mask

    low = str(path).lower()
    if not low.endswith(WRITER_SUFFIXES):
        raise ValueError(f"{path}: napari-medkd writes labels as {', '.join(WRITER_SUFFIXES)}")
    mask = as_label_array(np.asarray(data))
    if low.endswith(".png") and mask.ndim != 2:
        raise ValueError(f"{path}: PNG holds 2D masks only; this layer is {mask.ndim}D (use .nii.gz)")
    ref = reference_image(mask.shape, geometry_from_attributes(meta, mask.ndim))
    write_mask(mask, path, reference=ref, overwrite=True)
    return [str(Path(path))]
