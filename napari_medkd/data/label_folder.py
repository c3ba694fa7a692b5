"""A plain folder of scans, with masks for some of them in another folder (``--data SCANS --labels MASKS``).

The scans are the data set's cases (``datasets.scan_dataset`` reads a folder of images as unlabelled
cases); :func:`attach_labels` gives each the mask of the same name (``case.nii.gz`` ->
``MASKS/case.nii.gz`` or any other image suffix) where there is one, so a run distils on every scan and
adds the segmentation loss where a mask exists. A plain folder never *expects* masks: its layout is
``"images"``, so validation does not call an unlabelled scan "image without mask" (a ``labels/`` folder
beside it is not taken for its masks unless named).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from .datasets import DatasetSpec, file_stem, is_image_file

PLAIN_LAYOUT = "images"


def is_plain_folder(spec: DatasetSpec) -> bool:
    """Whether the data set is a folder of images with no layout of its own (every case directly in it)."""
    root = Path(spec.root)
    return spec.layout in ("paired", PLAIN_LAYOUT) and bool(spec.cases) and \
        all(Path(c.image).parent == root for c in spec.cases)


def attach_labels(spec: DatasetSpec, labels_root=None) -> DatasetSpec:
    """Mark a plain folder of scans as such and, with ``labels_root``, give its cases their masks by name
    (scans without one stay unlabelled; masks without a scan are reported as orphans by validation)."""
    if labels_root is None and not is_plain_folder(spec):
        return spec
    if not is_plain_folder(spec):
        raise ValueError(f"data.labels_root ({labels_root}) is for a plain folder of scans; {spec.root} is a "
                         f"'{spec.layout}' data set that names its own masks")
    spec.layout = PLAIN_LAYOUT
    if labels_root is None:
        return spec
    folder = Path(labels_root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: the labels folder does not exist")
    masks: Dict[str, Path] = {file_stem(p): p for p in sorted(folder.iterdir()) if is_image_file(p)}
    stems = set()
    for case in spec.cases:
        stems.add(case.id)
        if case.label is None and case.id in masks:
            case.label = masks[case.id]
    spec.orphan_labels += [p for s, p in masks.items() if s not in stems]
    return spec
