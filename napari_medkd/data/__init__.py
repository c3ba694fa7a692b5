"""Data sets on disk, their validation, preprocessing, patch sampling and augmentation.

Submodules: ``datasets`` (find cases), ``validate`` (check a set), ``prepare`` (normalise, resample,
pad, read a case, split, and the inverse: labels back to the source grid), ``slices`` (2D slices, patches), ``augment``, ``phantoms`` (synthetic images). The names below
are imported lazily so ``import napari_medkd.data`` stays light.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Case": "datasets", "DatasetSpec": "datasets", "load_dataset": "datasets", "load_label": "datasets",
    "ValidationReport": "validate", "Problem": "validate", "validate_dataset": "validate",
    "DataError": "validate", "check_dataset": "validate", "require_valid": "validate",
    "PreprocessConfig": "prepare", "preprocess_image": "prepare", "normalize_intensity": "prepare",
    "resample_to_spacing": "prepare", "pad_to_multiple": "prepare", "crop_back": "prepare",
    "prepare_image": "prepare", "prepare_case": "prepare", "labels_to_source_grid": "prepare",
    "volume_to_slices": "slices", "slices_to_volume": "slices", "sample_patch": "slices",
}  # ``augment`` is both a submodule and its function: import it from ``napari_medkd.data.augment``

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
