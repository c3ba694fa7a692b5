"""Check a data set before training: missing or orphan masks, shape and geometry mismatches, label
values outside the classes, unreadable or empty files; and summarise what is there.

Every file is read once.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from .datasets import Case, DatasetSpec, infer_modality_dims, label_array, scan_dataset

SPACING_RTOL = 1e-3
ORIGIN_ATOL = 1e-2   # mm
DIRECTION_ATOL = 1e-3


@dataclass
class Problem:
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class ValidationReport:
    root: str
    problems: List[Problem] = field(default_factory=list)
    summary: Dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, file, message: str) -> None:
        self.problems.append(Problem(str(file), message))

    def format(self) -> str:
        s = self.summary
        lines = [f"data set: {self.root}"]
        if s:
            lines.append(f"layout: {s.get('layout')}  dims: {s.get('dims')}D  modality: {s.get('modality')}")
            lines.append("cases: " + ", ".join(f"{k} {v}" for k, v in s.get("cases", {}).items())
                         + f" (unlabelled {s.get('unlabelled', 0)})")
            for c, info in s.get("classes", {}).items():
                frac = info.get("fraction")
                lines.append(f"  class {c} {info['name']}: "
                             + (f"{100 * frac:.3f}% of labelled voxels" if frac is not None else "no labels read"))
            if s.get("image_size"):
                lines.append(f"image size (numpy order): min {s['image_size']['min']}  max {s['image_size']['max']}")
            if s.get("spacing"):
                lines.append(f"spacing (x, y[, z]): min {s['spacing']['min']}  max {s['spacing']['max']}")
            if s.get("channels"):
                lines.append(f"channels: {s['channels']}")
            if s.get("with_fov"):
                lines.append(f"cases with FOV mask: {s['with_fov']}")
        lines.append("OK: no problems found" if self.ok else f"{len(self.problems)} problem(s):")
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def _read(path: Path, report: ValidationReport):
    """Read a file with the project reader; report empty or unreadable files and return None for them."""
    from ..io.image_io import read_image

    try:
        if path.stat().st_size == 0:
            report.add(path, "empty file (0 bytes)")
            return None
    except OSError as e:
        report.add(path, f"cannot access file ({e})")
        return None
    try:
        img = read_image(path)
    except Exception as e:  # noqa: BLE001 - any reader failure is a data problem to report
        msg = str(e).replace(str(path), "").strip(" :") or type(e).__name__
        report.add(path, f"unreadable: {msg}")
        return None
    if np.asarray(img.array).size == 0:
        report.add(path, "image holds no pixels")
        return None
    return img


def _spatial(img) -> tuple:
    return tuple(np.asarray(img.array).shape[: len(img.spacing)])


def _geometry_problem(img, other) -> Optional[str]:
    sp_a, sp_b = np.asarray(img.spacing, float), np.asarray(other.spacing, float)
    if not np.allclose(sp_a, sp_b, rtol=SPACING_RTOL, atol=1e-6):
        return f"spacing {tuple(np.round(sp_b, 4))} differs from the image's {tuple(np.round(sp_a, 4))}"
    if not np.allclose(np.asarray(img.origin, float), np.asarray(other.origin, float), atol=ORIGIN_ATOL):
        return f"origin {tuple(np.round(other.origin, 3))} differs from the image's {tuple(np.round(img.origin, 3))}"
    if not np.allclose(np.ravel(img.direction), np.ravel(other.direction), atol=DIRECTION_ATOL):
        return "direction (orientation) differs from the image's"
    return None


class _Stats:
    def __init__(self):
        self.counts: Counter = Counter()
        self.sizes: List[tuple] = []
        self.spacings: List[tuple] = []
        self.channels: Counter = Counter()


def _check_mask(kind: str, path: Path, img, shape, report: ValidationReport):
    """Read a mask (label or FOV), check it against the image; return its label array or None."""
    m = _read(path, report)
    if m is None:
        return None
    try:
        arr = label_array(np.asarray(m.array), len(m.spacing), path)
    except ValueError as e:
        report.add(path, str(e).replace(str(path), "").strip(" :"))
        return None
    if arr.shape != shape:
        report.add(path, f"{kind} size {arr.shape} differs from image size {shape} ({img.path or ''})")
        return None
    if len(shape) == 3:
        g = _geometry_problem(img, m)
        if g:
            report.add(path, f"{kind} geometry mismatch: {g}")
    return arr


def _check_case(case: Case, report: ValidationReport, spec: DatasetSpec, st: _Stats) -> None:
    img = _read(case.image, report)
    if img is None:
        return
    if not st.sizes:  # first image read: settle dims and modality
        try:
            spec.modality, spec.dims = infer_modality_dims(img, spec.meta)
        except ValueError as e:
            report.add(spec.root / "dataset.json", str(e))
    classes = spec.class_names
    nsp = len(img.spacing)
    shape = _spatial(img)
    arr = np.asarray(img.array)
    st.sizes.append(shape)
    st.spacings.append(tuple(round(float(v), 4) for v in img.spacing))
    st.channels[arr.shape[-1] if arr.ndim == nsp + 1 else 1] += 1
    if case.label is not None:
        lbl = _check_mask("mask", case.label, img, shape, report)
        if lbl is not None:
            counts = np.bincount(lbl.ravel().astype(np.int64, copy=False))
            present = np.flatnonzero(counts)
            bad = [int(v) for v in present if int(v) not in classes]
            if bad:
                report.add(case.label, f"label values {bad} are not among the classes {sorted(classes)}")
            for v in present:
                st.counts[int(v)] += int(counts[v])
    if case.fov is not None:
        _check_mask("FOV mask", case.fov, img, shape, report)


def _expects_mask(case: Case, spec: DatasetSpec, labelled_splits: set) -> bool:
    if case.label is not None:
        return False
    if case.split in labelled_splits:
        return True
    if spec.layout == "paired":  # a masks/ folder beside images/ means every image needs a mask
        return any((case.image.parent.parent / n).is_dir() for n in ("masks", "labels", "mask"))
    return False


def _minmax(rows: List[tuple]) -> Optional[Dict[str, list]]:
    if not rows:
        return None
    n = min(len(r) for r in rows)
    a = np.array([r[:n] for r in rows], dtype=float)
    fmt = (lambda v: int(v)) if np.all(a == np.round(a)) else (lambda v: round(float(v), 4))
    return {"min": [fmt(v) for v in a.min(0)], "max": [fmt(v) for v in a.max(0)]}


def validate_dataset(root: Union[str, Path], class_names: Optional[Dict] = None) -> ValidationReport:
    """Check every case of the data set at ``root`` (folder or CSV manifest) and summarise it."""
    report = ValidationReport(str(root))
    try:
        spec = scan_dataset(root, class_names, probe=False)
    except (ValueError, OSError) as e:
        report.add(root, str(e).replace(str(root), "").strip(" :"))
        return report
    if not spec.cases:
        report.add(root, "empty data set: no cases found (expected dataset.json + imagesTr/ + labelsTr/, "
                         "images/ + masks/ folders, or a CSV manifest)")
    for f, msg in spec.issues:
        report.add(f, msg)
    for f in spec.orphan_labels:
        report.add(f, "mask without image: no image with this name")
    labelled_splits = {c.split for c in spec.cases if c.label is not None}
    st = _Stats()
    for case in spec.cases:
        if _expects_mask(case, spec, labelled_splits):
            report.add(case.image, "image without mask")
        _check_case(case, report, spec, st)
    total = sum(st.counts.values())
    report.summary = {
        "layout": spec.layout, "dims": spec.dims, "modality": spec.modality,
        "cases": dict(sorted(Counter(c.split for c in spec.cases).items())),
        "unlabelled": sum(c.label is None for c in spec.cases),
        "with_fov": sum(c.fov is not None for c in spec.cases),
        "classes": {int(k): {"name": v, "fraction": (st.counts.get(int(k), 0) / total) if total else None}
                    for k, v in sorted(spec.class_names.items())},
        "image_size": _minmax(st.sizes),
        "spacing": _minmax(st.spacings),
        "channels": dict(sorted(st.channels.items())),
        "problems": len(report.problems),
    }
    return report
