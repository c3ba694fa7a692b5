"""A one-case Decathlon-layout data set from in-memory arrays (an image, its labels and their geometry).

This is how the Distil widget trains on the layers open in napari (the widget hands over the
layers' arrays and geometry), and it works the same from a script or notebook. No Qt here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ..io.image import MedicalImage
from ..io.image_io import write_image, write_mask


class ArrayDatasetError(ValueError):
    """The labels do not fit the image (grid, dtype) or are empty; the message names both inputs."""

def guess_modality(img: MedicalImage) -> str:
    """The dataset.json modality of an image: RGB, CT (a volume with values <= -500 HU), MR (other
    volumes) or grey (other 2D images)."""
    if img.is_rgb:
        return "RGB"
    if img.ndim_spatial == 3:
        return "CT" if float(np.min(img.array)) <= -500 else "MR"
    return "grey"


def image_from_arrays(array: np.ndarray, geometry: Optional[Dict[str, Any]] = None, ndim_spatial: int = 0,
                      source: Optional[str] = None) -> MedicalImage:
    """A ``MedicalImage`` of ``array`` with ``geometry`` (spacing/origin/direction, SimpleITK order);
    without geometry: unit spacing, zero origin, identity direction over ``ndim_spatial`` axes."""
    if geometry is None:
        n = ndim_spatial or np.ndim(array)
        geometry = {"spacing": [1.0] * n, "origin": [0.0] * n, "direction": np.eye(n).ravel().tolist()}
    return MedicalImage(np.asarray(array), tuple(geometry["spacing"]), tuple(geometry["origin"]),
                        tuple(np.ravel(geometry["direction"])), source)


def check_labels(labels: np.ndarray, spatial_shape: tuple, image_name: str = "image",
                 labels_name: str = "labels") -> np.ndarray:
    """``labels`` as an array, or an ``ArrayDatasetError``: it must cover the image's grid and hold
    some non-negative integer labels."""
    lab = np.asarray(labels)
    if lab.shape != tuple(spatial_shape):
        raise ArrayDatasetError(f"image layer '{image_name}' has shape {tuple(spatial_shape)} but labels layer "
                         f"'{labels_name}' has shape {lab.shape}; they must cover the same grid")
    if not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0:
        raise ArrayDatasetError(f"labels layer '{labels_name}' must hold non-negative integer labels")
    if lab.max() == 0:
        raise ArrayDatasetError(f"labels layer '{labels_name}' is empty: paint some labels first")
    return lab


def write_array_dataset(image: np.ndarray, labels: np.ndarray, folder: Path,
                        geometry: Optional[Dict[str, Any]] = None, name: str = "", image_name: str = "image",
                        labels_name: str = "labels") -> Path:
    """Write ``image`` (spatial axes first, colour last) and its ``labels`` as a one-case data set
    (``imagesTr/``, ``labelsTr/``, ``dataset.json``) in ``folder``, geometry kept; returns ``folder``.

    ``geometry``: spacing/origin/direction of the image in SimpleITK order (None: unit grid over
    the labels' axes). ``image_name``/``labels_name`` name the inputs in ``ArrayDatasetError``s.
    """
    folder = Path(folder)
    n = len(geometry["spacing"]) if geometry is not None else np.ndim(labels)
    lab = check_labels(labels, tuple(np.shape(image)[:n]), image_name, labels_name)
    img = image_from_arrays(image, geometry, n)
    ext = ".png" if img.is_rgb and img.array.dtype == np.uint8 else ".nii.gz"
    case = "case_000"
    write_image(img.array, folder / "imagesTr" / f"{case}{ext}", reference=img)
    write_mask(lab, folder / "labelsTr" / f"{case}{ext}", reference=img)
    names = {"0": "background", **{str(v): f"class {v}" for v in range(1, int(lab.max()) + 1)}}
    (folder / "dataset.json").write_text(json.dumps({
        "name": name or f"arrays {image_name} / {labels_name}", "modality": {"0": guess_modality(img)},
        "labels": names, "training": [{"image": f"./imagesTr/{case}{ext}", "label": f"./labelsTr/{case}{ext}"}],
        "test": []}, indent=1), encoding="utf-8")
    return folder
