"""Check a data set: missing or orphan masks, shape and geometry mismatches, label values outside the
classes, empty masks, unreadable or empty files; and summarise what is there.

Two passes share one set of rules, so every command refuses what ``medkd validate-data`` rejects:

* :func:`check_dataset` reads headers only (well under a second for hundreds of small volumes);
  ``train``, ``distill`` and ``evaluate`` run it through :func:`require_valid` before anything else.
* the pixel rules (:func:`check_masks`: label values, empty masks) run where masks are read anyway:
  when a run prepares its cases, when ``evaluate`` reads the truth, and in :func:`validate_dataset`,
  which reads every file once for ``medkd validate-data``.

Errors refuse the data set (:class:`DataError` names every bad file); warnings (empty masks, files
the layout ignores) are reported and the run keeps them.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from .datasets import Case, DatasetSpec, infer_modality_dims, label_array, scan_dataset

SPACING_RTOL = 1e-3
ORIGIN_ATOL = 1e-2   # mm
DIRECTION_ATOL = 1e-3
MAX_LISTED_VALUES = 10
EMPTY_MASK = "mask is empty (background only)"
WARNINGS_FILE = "data_warnings.txt"
SHOWN_WARNINGS = 10


class DataError(ValueError):
    """A data set refused by validation; the message names every bad file."""


@dataclass
class Problem:
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class ValidationReport:
    root: str
    problems: List[Problem] = field(default_factory=list)   # errors: the data set is refused
    warnings: List[Problem] = field(default_factory=list)   # reported, not refused
    summary: Dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, file, message: str) -> None:
        self.problems.append(Problem(str(file), message))

    def warn(self, file, message: str) -> None:
        self.warnings.append(Problem(str(file), message))

    def bad_files(self) -> set:
        return {p.file for p in self.problems}

    def refusal(self) -> str:
        return (f"{self.root}: the data set has {len(self.problems)} problem(s) (`medkd validate-data "
                f"{self.root}` checks it):\n" + "\n".join(f"  {p}" for p in self.problems))

    def format(self) -> str:
        lines = [f"data set: {self.root}"] + _summary_lines(self.summary)
        lines.append("OK: no problems found" if self.ok else f"{len(self.problems)} problem(s):")
        lines += [f"  {p}" for p in self.problems]
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s):")
            lines += [f"  {p}" for p in self.warnings]
        return "\n".join(lines)


def _summary_lines(s: Dict) -> List[str]:
    if not s:
        return []
    lines = [f"layout: {s.get('layout')}  dims: {s.get('dims')}D  modality: {s.get('modality')}",
             "cases: " + ", ".join(f"{k} {v}" for k, v in s.get("cases", {}).items())
             + f" (unlabelled {s.get('unlabelled', 0)})"]
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
    return lines


def _reason(exc: Exception, path: Path) -> str:
    return str(exc).replace(str(path), "").strip(" :") or type(exc).__name__


def _floats(values, digits: int) -> str:
    return "(" + ", ".join(f"{round(float(v), digits):g}" for v in values) + ")"


def _geometry_problem(img, other) -> Optional[str]:
    """How ``other``'s geometry (spacing, origin, direction) differs from ``img``'s, or None."""
    sp_a, sp_b = np.asarray(img.spacing, float), np.asarray(other.spacing, float)
    if not np.allclose(sp_a, sp_b, rtol=SPACING_RTOL, atol=1e-6):
        return f"spacing {_floats(sp_b, 4)} differs from the image's {_floats(sp_a, 4)}"
    if not np.allclose(np.asarray(img.origin, float), np.asarray(other.origin, float), atol=ORIGIN_ATOL):
        return f"origin {_floats(other.origin, 3)} differs from the image's {_floats(img.origin, 3)}"
    if not np.allclose(np.ravel(img.direction), np.ravel(other.direction), atol=DIRECTION_ATOL):
        return "direction (orientation) differs from the image's"
    return None


# ---------------------------------------------------------------------------------------------- headers

def _header(path: Path, report: ValidationReport):
    """The header of ``path``, or None with the reason reported."""
    from ..io.header import read_header

    try:
        h = read_header(path)
    except (ValueError, OSError) as e:
        report.add(path, f"unreadable: {_reason(e, path)}")
        return None
    if 0 in h.size:
        report.add(path, f"image holds no pixels (size {h.size})")
        return None
    return h


def _check_mask_header(kind: str, path: Path, img, report: ValidationReport) -> None:
    m = _header(path, report)
    if m is None:
        return
    if m.shape != img.shape:
        report.add(path, f"{kind} size {m.shape} differs from image size {img.shape} ({img.path})")
    elif len(img.shape) == 3:
        g = _geometry_problem(img, m)
        if g:
            report.add(path, f"{kind} geometry mismatch: {g}")


def _expects_mask(case: Case, spec: DatasetSpec) -> bool:
    """A case the data set says is labelled but whose mask is missing. Folder layouts say so by a masks
    folder (paired: ``masks/`` beside ``images/``; Decathlon without dataset.json: ``labelsTr/`` for
    ``imagesTr/``); dataset.json and CSV entries by naming a label (a named but missing one is a listing
    issue), so an entry without one is an unlabelled case (semi-supervised sets)."""
    if case.label is not None:
        return False
    if spec.layout == "paired":
        return any((case.image.parent.parent / n).is_dir() for n in ("masks", "labels", "mask"))
    if spec.layout == "msd" and not (spec.root / "dataset.json").is_file():
        return case.split == "train" and (spec.root / "labelsTr").is_dir()
    return False


def _check_listing(spec: DatasetSpec, report: ValidationReport, masks: bool) -> None:
    if not spec.cases:
        report.add(spec.root, "empty data set: no cases found (expected dataset.json + imagesTr/ + labelsTr/, "
                              "images/ + masks/ folders, or a CSV manifest)")
    for f, msg in spec.issues:
        report.add(f, msg)
    for f, msg in spec.notes:
        report.warn(f, msg)
    if masks:
        for f in spec.orphan_labels:
            report.add(f, "mask without image: no image with this name")


def check_headers(spec: DatasetSpec, report: ValidationReport, masks: bool = True) -> None:
    """The header rules: listing issues, images without their mask, unreadable files, and masks whose
    size or geometry differ from their image. ``masks=False`` (unlabelled images): images only."""
    _check_listing(spec, report, masks)
    for case in spec.cases:
        if masks and _expects_mask(case, spec):
            report.add(case.image, "image without mask")
        img = _header(case.image, report)
        if img is None or not masks:
            continue
        for kind, path in (("mask", case.label), ("FOV mask", case.fov)):
            if path is not None:
                _check_mask_header(kind, path, img, report)


def check_dataset(spec: DatasetSpec, masks: bool = True) -> ValidationReport:
    """The fast pass (headers only) over a scanned data set."""
    report = ValidationReport(str(spec.root))
    check_headers(spec, report, masks)
    return report


def require_valid(spec: DatasetSpec, masks: bool = True) -> List[Problem]:
    """Run the fast pass; raise :class:`DataError` naming every bad file, else return the warnings."""
    report = check_dataset(spec, masks)
    if not report.ok:
        raise DataError(report.refusal())
    return report.warnings


def keep_warnings(warnings: List[Problem], folder: Optional[Path] = None, echo: bool = True) -> None:
    """Print the data warnings (the first few, if ``echo``) and write them all to
    ``folder/data_warnings.txt`` (a run or evaluation folder), one ``file: message`` a line."""
    if not warnings:
        return
    if echo:
        where = f" (all in {Path(folder) / WARNINGS_FILE})" if folder is not None else ""
        print(f"medkd: {len(warnings)} data warning(s){where}:", file=sys.stderr)
        for w in warnings[:SHOWN_WARNINGS]:
            print(f"  {w}", file=sys.stderr)
    if folder is not None:
        from ..io.atomic import write_text_atomic

        write_text_atomic(Path(folder) / WARNINGS_FILE, "".join(f"{w}\n" for w in warnings))


# ---------------------------------------------------------------------------------------------- pixels

def label_counts(labels: np.ndarray) -> np.ndarray:
    """Voxels per label value (index = value) of an integer, non-negative label array."""
    return np.bincount(np.asarray(labels).ravel().astype(np.int64, copy=False))


def unknown_labels(counts: np.ndarray, classes: Iterable[int]) -> Optional[str]:
    """The problem of label values that are not among ``classes``, or None."""
    known = {int(c) for c in classes}
    bad = [int(v) for v in np.flatnonzero(counts) if int(v) not in known]
    if not bad:
        return None
    shown = ", ".join(str(v) for v in bad[:MAX_LISTED_VALUES]) + (f", ... ({len(bad)} in all)"
                                                                   if len(bad) > MAX_LISTED_VALUES else "")
    return f"label values [{shown}] are not among the classes {sorted(known)}"


def check_masks(report: ValidationReport, masks: Iterable[Tuple[Path, np.ndarray]],
                classes: Iterable[int]) -> Counter:
    """The pixel rules on masks already read: label values outside ``classes`` are errors, an empty mask
    a warning, and every mask empty an error (nothing to learn or measure). Returns the label counts."""
    classes = list(classes)
    total: Counter = Counter()
    n = n_empty = 0
    for path, labels in masks:
        counts = label_counts(labels)
        n += 1
        bad = unknown_labels(counts, classes)
        if bad:
            report.add(path, bad)
        if counts[1:].sum() == 0:
            n_empty += 1
            report.warn(path, EMPTY_MASK)
        total.update({int(v): int(counts[v]) for v in np.flatnonzero(counts)})
    if n and n_empty == n:
        report.add(report.root, f"all {n} masks are empty (background only): there is nothing to learn "
                                "or measure; check the label files")
    return total


# ---------------------------------------------------------------------------------------------- full read

class _Stats:
    def __init__(self):
        self.counts: Counter = Counter()
        self.sizes: List[tuple] = []
        self.spacings: List[tuple] = []
        self.channels: Counter = Counter()


def _read_labels(path: Path, report: ValidationReport) -> Optional[np.ndarray]:
    from ..io.image_io import read_image

    try:
        m = read_image(path)
        return label_array(np.asarray(m.array), len(m.spacing), path)
    except ValueError as e:
        report.add(path, _reason(e, path))
        return None


def _read_case(case: Case, spec: DatasetSpec, report: ValidationReport, st: _Stats) -> Optional[np.ndarray]:
    """Read a case whose headers passed: image statistics, and its label array (None if unlabelled)."""
    from ..io.image_io import read_image

    try:
        img = read_image(case.image)
    except ValueError as e:
        report.add(case.image, f"unreadable: {_reason(e, case.image)}")
        return None
    if not st.sizes:  # first image read: settle dims and modality
        try:
            spec.modality, spec.dims = infer_modality_dims(img, spec.meta)
        except ValueError as e:
            report.add(spec.root / "dataset.json", str(e))
    nsp, arr = len(img.spacing), np.asarray(img.array)
    st.sizes.append(tuple(arr.shape[:nsp]))
    st.spacings.append(tuple(round(float(v), 4) for v in img.spacing))
    st.channels[arr.shape[-1] if arr.ndim == nsp + 1 else 1] += 1
    if case.fov is not None:
        _read_labels(case.fov, report)
    return _read_labels(case.label, report) if case.label is not None else None


def _read_masks(spec: DatasetSpec, report: ValidationReport, st: _Stats):
    """(mask path, labels) of every case whose files passed the header rules."""
    bad = report.bad_files()
    for case in spec.cases:
        if {str(case.image), str(case.label), str(case.fov)} & bad:
            continue
        labels = _read_case(case, spec, report, st)
        if labels is not None:
            yield case.label, labels


def _minmax(rows: List[tuple]) -> Optional[Dict[str, list]]:
    if not rows:
        return None
    n = min(len(r) for r in rows)
    a = np.array([r[:n] for r in rows], dtype=float)
    fmt = (lambda v: int(v)) if np.all(a == np.round(a)) else (lambda v: round(float(v), 4))
    return {"min": [fmt(v) for v in a.min(0)], "max": [fmt(v) for v in a.max(0)]}


def _summary(spec: DatasetSpec, st: _Stats, report: ValidationReport) -> Dict:
    total = sum(st.counts.values())
    return {
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
        "warnings": len(report.warnings),
    }


def validate_dataset(root: Union[str, Path], class_names: Optional[Dict] = None) -> ValidationReport:
    """Check every case of the data set at ``root`` (folder or CSV manifest) and summarise it: the
    header rules of :func:`check_headers`, then every file read once for the pixel rules."""
    report = ValidationReport(str(root))
    try:
        spec = scan_dataset(root, class_names, probe=False)
    except (ValueError, OSError) as e:
        report.add(root, _reason(e, Path(root)))
        return report
    check_headers(spec, report)
    st = _Stats()
    st.counts = check_masks(report, _read_masks(spec, report, st), spec.class_names)
    report.summary = _summary(spec, st, report)
    return report
