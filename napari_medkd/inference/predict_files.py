"""Segment image files with a trained torch model and write masks with the source geometry."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..data.prepare import PreprocessConfig, labels_to_source_grid
from ..io.image import MedicalImage
from ..io.paths import may_be_dicom, not_a_regular_file
from ..io.suffixes import SUPPORTED_EXTENSIONS, is_supported, is_volume, stem_of, suffix_of
from ..io.image_io import read_image, write_mask
from ..train.run_model import LoadedModel
from ..models.predict import predict_labels

_MASK_SUFFIX = {".mhd": ".mha", ".nhdr": ".nrrd"}  # header + raw pairs are written as one file


def mask_name(src: Path) -> str:
    if is_volume(src):
        suf = suffix_of(src)
        return stem_of(src) + "_mask" + _MASK_SUFFIX.get(suf, suf)
    if src.is_dir():  # DICOM series
        return src.name + "_mask.nii.gz"
    return src.stem + "_mask.png"


def list_inputs(path: Path) -> List[Path]:
    """A file, a DICOM folder, or a folder of image files / DICOM sub-folders."""
    if path.is_file():
        return [path]
    if not path.is_dir():  # missing, or a FIFO, a device, a link to /dev/zero: say which
        raise FileNotFoundError(not_a_regular_file(path, "input"))
    files = sorted(p for p in path.iterdir() if p.is_file())
    images = [p for p in files if is_supported(p)]
    if images:
        return images
    if any(may_be_dicom(p) for p in files):
        return [path]  # a DICOM series folder
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    if subdirs:
        return subdirs
    raise FileNotFoundError(f"no images found in {path} (supported: {', '.join(SUPPORTED_EXTENSIONS)} files, "
                            "or a folder of DICOM files)")


@dataclass
class Prediction:
    source: Path
    labels: np.ndarray
    reference: MedicalImage
    seconds: float
    output: Optional[Path] = None  # where the mask was written, if it was


def predict_image(lm: LoadedModel, img: MedicalImage, device=None) -> np.ndarray:
    """Labels for one image in its own grid (resampled back if the model works at another spacing)."""
    from ..data.prepare import prepare_image

    pcfg = PreprocessConfig.from_dict(lm.card.preprocess)
    image_cf, work = prepare_image(img, pcfg)
    if image_cf.shape[0] != lm.card.in_channels:
        raise ValueError(f"{img.path or 'image'}: the model expects {lm.card.in_channels} channel(s) "
                         f"but preprocessing gave {image_cf.shape[0]}")
    labels = predict_labels(lm.model, image_cf, device=device, slice_axis=pcfg.slice_axis)
    return labels_to_source_grid(labels, work, img)  # resampled: bring the mask back to the source grid


def predict_path(lm: LoadedModel, src: Path, out: Optional[Path], overwrite: bool = False,
                 series: Optional[str] = None) -> Prediction:
    """Segment ``src`` (``series``: which DICOM series of a folder, by UID or index) and write ``out``."""
    img = read_image(src, series_uid=series)
    t0 = time.perf_counter()
    labels = predict_image(lm, img)
    dt = time.perf_counter() - t0
    if out is not None:
        write_mask(labels, out, reference=img, overwrite=overwrite)
    return Prediction(src, labels, img, dt, out)
