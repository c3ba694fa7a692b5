"""Data sets on disk, their validation, preprocessing, patch sampling and augmentation.

Submodules: ``datasets`` (find cases), ``validate`` (check a set), ``preprocess`` (normalise, resample,
pad), ``slices`` (2D slices, patches), ``augment``, ``phantoms`` (synthetic images). The names below
are imported lazily so ``import napari_medkd.data`` stays light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Case": "datasets", "DatasetSpec": "datasets", "load_dataset": "datasets", "load_label": "datasets",
    "ValidationReport": "validate", "Problem": "validate", "validate_dataset": "validate",
    "PreprocessConfig": "preprocess", "preprocess_image": "preprocess", "normalize_intensity": "preprocess",
    "resample_to_spacing": "preprocess", "pad_to_multiple": "preprocess", "crop_back": "preprocess",
    "volume_to_slices": "slices", "slices_to_volume": "slices", "sample_patch": "slices",
}  # ``augment`` is both a submodule and its function: import it from ``napari_medkd.data.augment``

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
