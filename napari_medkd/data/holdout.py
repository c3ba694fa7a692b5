"""Held-back data for a quick run: what the models are validated and evaluated on when the user gives
scans without a test split, written once as a CSV manifest (``manifest.csv``, the ``csv`` layout).

- **One case** (a volume or a single 2D image): it is cut along one axis into three contiguous blocks,
  each a case of its own on the right grid (origin moved, spacing and direction kept): ~60 % of the
  labelled extent for training, ~20 % for validation, ~20 % for the final evaluation, the held-back
  blocks at the end (or the start) of the axis, whichever holds more classes in them. A 2D model slicing
  along axis 0 is given that axis only, so it validates on whole held-out slices; a 3D one on a block.
- **Several cases, none labelled in a test split**: ``test_share`` of them (at least one) are held back
  for evaluation (labelled ones first, if any are labelled); the rest train (the engine validates on
  ``data.val_fraction`` of those).
- A data set that already has labelled test cases is used as it is.

:class:`HoldOut` says what was done, in words the user reads (``note``).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..io.image import MedicalImage
from ..io.image_io import read_image, write_image, write_mask
from .datasets import DatasetSpec, load_dataset, load_label

SHARES = (0.6, 0.2, 0.2)


@dataclass
class HoldOut:
    root: str                              # the data set to train on (the original or a manifest.csv)
    note: str                              # what is held back, for the user
    val_cases: Optional[List[str]] = None  # case ids to validate on (one-case split), else the engine's share
    blocks: List[Tuple[str, int, int]] = field(default_factory=list)  # (split, start, stop) along axis
    axis: int = 0


def block_bounds(n: int, extent: Tuple[int, int], shares: Sequence[float] = SHARES) -> List[Tuple[int, int]]:
    """Three contiguous ``[start, stop)`` ranges covering ``0..n``, cut inside ``extent`` (the labelled
    slices, inclusive) at ``shares`` so each holds some of it; each range at least one slice."""
    if n < 3:
        raise ValueError(f"one case of {n} slice(s) along the hold-out axis cannot be split into training, "
                         "validation and evaluation parts; give at least 3 slices, or more cases")
    lo, hi = extent
    span = hi - lo + 1
    c1 = lo + int(round(shares[0] * span))
    c2 = lo + int(round((shares[0] + shares[1]) * span))
    c1 = min(max(c1, 1), n - 2)
    c2 = min(max(c2, c1 + 1), n - 1)
    return [(0, c1), (c1, c2), (c2, n)]


def crop_along(img: MedicalImage, axis: int, start: int, stop: int) -> MedicalImage:
    """Slices ``start:stop`` of numpy ``axis``, its origin moved so it lies where it lay in the whole."""
    nsp = img.ndim_spatial
    sl = [slice(None)] * np.ndim(img.array)
    sl[axis] = slice(start, stop)
    d = nsp - 1 - axis  # SimpleITK's index of that axis
    direction = np.asarray(img.direction, float).reshape(nsp, nsp)
    origin = np.asarray(img.origin, float) + direction[:, d] * float(img.spacing[d]) * start
    return MedicalImage(np.ascontiguousarray(img.array[tuple(sl)]), tuple(img.spacing), tuple(origin.tolist()),
                        tuple(img.direction), img.path)


def _extent(label: Optional[np.ndarray], axis: int, n: int) -> Tuple[int, int]:
    if label is None or not label.any():
        return 0, n - 1
    other = tuple(a for a in range(label.ndim) if a != axis)
    idx = np.flatnonzero(label.any(axis=other))
    return int(idx[0]), int(idx[-1])


def _write_manifest(folder: Path, rows: List[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "image", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


def _blocks(n: int, extent: Tuple[int, int], held_first: bool) -> List[Tuple[int, int]]:
    """(train, val, test) ranges: held-back blocks after the training block, or (``held_first``) before it."""
    if not held_first:
        return block_bounds(n, extent)
    (a, b), (c, d), (e, f) = block_bounds(n, (n - 1 - extent[1], n - 1 - extent[0]))  # mirrored
    return [(n - b, n - a), (n - d, n - c), (n - f, n - e)]


def best_cut(label: Optional[np.ndarray], axes: Sequence[int]) -> Tuple[int, bool]:
    """(axis, held_first) whose validation and evaluation blocks hold the most classes (ties: the first axis,
    held-back blocks last)."""
    if label is None or not label.any():
        return axes[0], False
    classes = [c for c in np.unique(label) if c > 0]

    def score(axis: int, first: bool) -> int:
        n = label.shape[axis]
        if n < 3:
            return -1
        bounds = _blocks(n, _extent(label, axis, n), first)
        return sum(bool((np.take(label, range(a, b), axis=axis) == c).any()) for a, b in bounds[1:] for c in classes)

    order = [(a, f) for a in axes for f in (False, True)]
    return max(order, key=lambda af: (score(*af), -order.index(af)))


def split_one_case(spec: DatasetSpec, folder: Path, axes: Optional[Sequence[int]] = None) -> HoldOut:
    """The one case of ``spec`` cut into training, validation and evaluation blocks in ``folder``, along the
    one of ``axes`` (default: any) and at the end of it whose held-back blocks hold the most classes. A 2D
    model slicing along axis 0 should be given ``axes=(0,)``: it then validates on whole slices."""
    case = spec.cases[0]
    img = read_image(case.image)
    label = load_label(case.label) if case.label is not None else None
    axis, held_first = best_cut(label, tuple(axes) if axes else tuple(range(img.ndim_spatial)))
    n = int(np.shape(img.array)[axis])
    bounds = _blocks(n, _extent(label, axis, n), held_first)
    rows, blocks = [], []
    suffix = ".png" if img.is_rgb and img.ndim_spatial == 2 and img.array.dtype == np.uint8 else ".nii.gz"
    for (start, stop), split, name in zip(bounds, ("train", "train", "test"), ("train", "val", "test")):
        part = crop_along(img, axis, start, stop)
        cid = f"{case.id}_{name}_{start}-{stop - 1}"
        write_image(part.array, folder / "images" / f"{cid}{suffix}", reference=part)
        row = {"id": cid, "image": f"images/{cid}{suffix}", "label": "", "split": split}
        if label is not None:
            lab = crop_along(MedicalImage(label, img.spacing, img.origin, img.direction), axis, start, stop)
            write_mask(lab.array, folder / "labels" / f"{cid}{suffix}", reference=part)
            row["label"] = f"labels/{cid}{suffix}"
        rows.append(row)
        blocks.append((name, start, stop))
    path = _write_manifest(folder, rows)
    unit = "slices" if img.ndim_spatial == 3 else "rows"
    (_, v0, v1), (_, t0, t1) = blocks[1], blocks[2]
    (_, r0, r1) = blocks[0]
    note = (f"one case only: {unit} {v0}-{v1 - 1} (axis {axis}) are held back for validation and {unit} "
            f"{t0}-{t1 - 1} for the final evaluation; the models train on {unit} {r0}-{r1 - 1}")
    return HoldOut(str(path), note, [rows[1]["id"]], blocks, axis)


def hold_back_cases(spec: DatasetSpec, folder: Path, test_share: float = 0.2, seed: int = 0) -> HoldOut:
    """``test_share`` of the cases (labelled first) held back for evaluation, in ``folder/manifest.csv``."""
    cases = [c for c in spec.cases if c.split in ("train", "val")]
    labelled = [c for c in cases if c.label is not None]
    pool = labelled if len(labelled) >= 2 else cases
    k = max(1, int(round(test_share * len(pool))))
    order = np.random.default_rng(seed).permutation(len(pool))
    test = {pool[i].id for i in order[:k]}
    rows = [{"id": c.id, "image": str(Path(c.image).resolve()), "label": str(Path(c.label).resolve()) if c.label else "",
             "split": "test" if c.id in test else "train"} for c in cases]
    path = _write_manifest(folder, rows)
    return HoldOut(str(path), f"{k} of {len(cases)} cases are held back for the final evaluation "
                              f"({', '.join(sorted(test))}); the others train, a share of them validates")


def prepare_holdout(root: str | Path, folder: Path, axes: Optional[Sequence[int]] = None,
                    labels_root: Optional[str] = None) -> HoldOut:
    """What to train and evaluate on for the scans in ``root`` (see the module docstring)."""
    from .label_folder import attach_labels

    spec = attach_labels(load_dataset(root), labels_root)
    if any(c.split == "test" and c.label is not None for c in spec.cases):
        n = sum(c.split == "test" and c.label is not None for c in spec.cases)
        return HoldOut(str(root), f"the data set's own {n} labelled test case(s) are used for the final evaluation")
    if len(spec.cases) == 1:
        return split_one_case(spec, Path(folder), axes)
    return hold_back_cases(spec, Path(folder))
