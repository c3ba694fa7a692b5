"""The one table of image file suffixes napari-medkd reads and writes, and the stem/suffix helpers.

Compound suffixes (``.nii.gz``) are matched before simple ones, case-insensitively.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple, Union

VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
BITMAP_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif")
SUPPORTED_EXTENSIONS: Tuple[str, ...] = VOLUME_EXTENSIONS + BITMAP_EXTENSIONS
WRITE_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".png", ".tif", ".tiff")
LABEL_WRITE_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".nrrd", ".png")  # the napari writer (napari.yaml lists them)
FORMAT_NAMES = {".nii.gz": "NIfTI", ".nii": "NIfTI", ".mha": "MetaImage", ".mhd": "MetaImage", ".nrrd": "NRRD",
                ".nhdr": "NRRD", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG",
                ".bmp": "BMP", ".gif": "GIF"}


def suffix_of(path: Union[str, os.PathLike]) -> str:
    """The image suffix of ``path`` in lower case (``.nii.gz`` as one suffix); else its last suffix."""
    name = Path(path).name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return Path(name).suffix


def stem_of(path: Union[str, os.PathLike]) -> str:
    """The file name without its image suffix (``case.nii.gz`` -> ``case``), case kept."""
    name = Path(path).name
    ext = suffix_of(name)
    return name[: len(name) - len(ext)] if ext and name.lower().endswith(ext) else name


def is_supported(path: Union[str, os.PathLike]) -> bool:
    """True if ``path`` has a file extension :func:`read_image` reads (folders are not checked)."""
    return suffix_of(path) in SUPPORTED_EXTENSIONS


def is_volume(path: Union[str, os.PathLike]) -> bool:
    """True for the volume formats (NIfTI, MetaImage, NRRD)."""
    return suffix_of(path) in VOLUME_EXTENSIONS
