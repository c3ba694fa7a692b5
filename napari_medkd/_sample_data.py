"""npe2 sample data: one hippocampus MRI case (3D) and one fundus phantom (2D), with their labels.

The files ship inside the package (``napari_medkd/sample_data/``, in the wheel too) and are found with
``importlib.resources``. Should the vessel files be missing, the 2D phantom is drawn on the fly with
``napari_medkd.data.phantoms``.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from ._reader import LayerData, image_layer_data
from .io.resources import sample_data_dir

SAMPLE_DATA = sample_data_dir()
HIPPOCAMPUS_CASE = "hippocampus_001.nii.gz"
FUNDUS_CASE = "phantom_000.png"


def sample_root() -> Path:
    return SAMPLE_DATA


def hippocampus() -> List[LayerData]:
    """The MRI and its anterior/posterior hippocampus labels (MSD Task04, CC BY-SA 4.0)."""
    from .io.image_io import read_image

    root = sample_root() / "hippocampus"
    img_path, lab_path = root / "imagesTr" / HIPPOCAMPUS_CASE, root / "labelsTr" / HIPPOCAMPUS_CASE
    for p in (img_path, lab_path):
        if not p.is_file():
            raise FileNotFoundError(f"sample file {p} is missing; the hippocampus sample needs the package's "
                                    f"sample_data/ folder")
    image = image_layer_data(read_image(img_path), "hippocampus MRI", "image", source=str(img_path))
    labels = image_layer_data(read_image(lab_path), "hippocampus labels", "labels", source=str(lab_path))
    labels[1]["opacity"] = 0.5
    labels[1]["colormap"] = _label_colors({1: "#3b82f6", 2: "#22c55e"})  # anterior, posterior
    return [image, labels]


def _label_colors(colors):
    """A fixed, readable label colour map (background transparent) instead of napari's random one."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", **colors})


def fundus_phantom() -> List[LayerData]:
    """An RGB fundus phantom with its vessel labels (made by this project, no patient data)."""
    from .io.image import MedicalImage
    from .io.image_io import read_image

    folder = sample_root() / "vessels2d" / "train"
    img_path, mask_path = folder / "images" / FUNDUS_CASE, folder / "masks" / FUNDUS_CASE
    if img_path.is_file() and mask_path.is_file():
        img, mask = read_image(img_path), read_image(mask_path)
        vessels = (np.asarray(mask.array) > 0).astype(np.uint8)
        src = str(img_path)
    else:
        from .data.phantoms import vessel_phantom

        rgb, ves, _fov = vessel_phantom(256, seed=0)
        img = MedicalImage(rgb, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), None)
        mask = MedicalImage(ves, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), None)
        vessels = ves.astype(np.uint8)
        src = "generated: napari_medkd.data.phantoms.vessel_phantom(256, seed=0)"
    image = image_layer_data(img, "fundus phantom", "image", source=src)
    mask.array = vessels
    labels = image_layer_data(mask, "vessels", "labels", source=src)
    labels[1]["opacity"] = 0.7
    labels[1]["colormap"] = _label_colors({1: "#00e5ff"})  # cyan vessels stand out on the red-orange fundus
    return [image, labels]
