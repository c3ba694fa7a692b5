"""Find the cases of a segmentation data set on disk: Decathlon (MSD), paired folders or a CSV manifest.

Layouts understood by :func:`load_dataset`:

* ``msd``: ``dataset.json`` + ``imagesTr/`` + ``labelsTr/`` (``imagesTs/`` without labels), as in the
  Medical Segmentation Decathlon. Without ``dataset.json`` the folders are paired by file stem.
* ``paired``: ``images/`` + ``masks/`` (+ ``fov/``), optionally inside ``train/``, ``val/``, ``test/``;
  image ``x.jpg`` goes with mask ``x.png``. A folder holding only image files is an unlabelled set.
* ``csv``: a manifest with columns ``image,label[,fov][,split][,id]`` (``mask`` and ``stem`` are
  accepted for ``label`` and ``id``), paths relative to the CSV's folder.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from ..io.suffixes import SUPPORTED_EXTENSIONS, VOLUME_EXTENSIONS, is_supported, is_volume, stem_of

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "tr": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test", "ts": "test"}
IMAGE_SUFFIXES = SUPPORTED_EXTENSIONS  # the one table, napari_medkd/io/suffixes.py
VOLUME_SUFFIXES = VOLUME_EXTENSIONS
BINARY_CLASSES = {0: "background", 1: "foreground"}


@dataclass
class Case:
    id: str
    image: Path
    label: Optional[Path]
    fov: Optional[Path]
    split: str  # "train" | "test" | "val"


@dataclass
class DatasetSpec:
    root: Path
    layout: str                  # "msd" | "paired" | "csv"
    cases: List[Case]
    class_names: Dict[int, str]
    modality: str                # "CT" | "MR" | "RGB" | "grey"
    dims: int                    # 2 | 3
    # files found in label folders with no image beside them (reported by validation)
    orphan_labels: List[Path] = field(default_factory=list)
    # (file, message) for entries that point at missing files, duplicate stems and the like
    issues: List[Tuple[Path, str]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # dataset.json contents (Decathlon layout)
    # (file, message) for files the layout ignores (not listed in dataset.json): warnings, not errors
    notes: List[Tuple[Path, str]] = field(default_factory=list)

    def split(self, name: str) -> List[Case]:
        name = _SPLIT_ALIASES.get(name.lower(), name)
        return [c for c in self.cases if c.split == name]


# ---------------------------------------------------------------------------------------------- helpers

def file_stem(path: Union[str, Path]) -> str:
    """Name without the image suffix (``case.nii.gz`` -> ``case``)."""
    return stem_of(path)


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and is_supported(path)


def _list_images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else []


def _by_stem(files: List[Path], issues: List[Tuple[Path, str]]) -> Dict[str, Path]:
    out: Dict[str, Path] = {}
    for f in files:
        s = file_stem(f)
        if s in out:
            issues.append((f, f"duplicate case name '{s}' (also {out[s].name}); this file is ignored"))
            continue
        out[s] = f
    return out


def normalize_modality(name: str) -> str:
    """Map a modality name ("MRI", "ct", "T1", "gray", "rgb" ...) to CT | MR | RGB | grey."""
    n = str(name).strip().lower()
    if n in ("ct",):
        return "CT"
    if n in ("mr", "mri", "t1", "t2", "t1w", "t2w", "flair", "adc", "dwi", "t1gd", "pd") or n.startswith("mr"):
        return "MR"
    if n in ("rgb", "colour", "color", "fundus", "endoscopy"):
        return "RGB"
    if n in ("grey", "gray", "greyscale", "grayscale", "mono"):
        return "grey"
    raise ValueError(f"unknown modality '{name}' (use CT, MR, RGB or grey)")


def _int_keys(names: Dict) -> Dict[int, str]:
    try:
        return {int(k): str(v) for k, v in names.items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"class names must map integer label values to names, got {names!r}") from e


def _rel(base: Path, p: str) -> Path:
    q = Path(p.strip())
    return q if q.is_absolute() else (base / q)


def escapes_root(p: str) -> bool:
    """True for a path that is absolute (POSIX or Windows) or climbs out of its folder with ``..``
    (checked on the text, so a data set's own symbolic links stay usable)."""
    s = str(p).strip()
    win = PureWindowsPath(s)
    if PurePosixPath(s).is_absolute() or win.drive or win.root:
        return True
    parts = os.path.normpath(s.replace("\\", "/")).split(os.sep)
    return parts[0] == ".."


def _json_entry_paths(root: Path, entry, key: str, js: Path, issues) -> Optional[Tuple[Path, Optional[Path]]]:
    """The (image, label) paths of one dataset.json entry, or None (an issue recorded) for an entry
    that names no image or a path outside the data set folder, which is never opened."""
    if isinstance(entry, str):
        entry = {"image": entry}
    elif not isinstance(entry, dict) or not entry.get("image"):
        issues.append((js, f"entry {entry!r} in '{key}' names no image"))
        return None
    names = [str(entry[k]) for k in ("image", "label") if entry.get(k)]
    outside = [n for n in names if escapes_root(n)]
    if outside:
        issues.append((js, f"entry {entry!r} in '{key}': {', '.join(repr(n) for n in outside)} leads outside "
                           f"the data set folder {root}; refused (paths must be relative, inside the folder)"))
        return None
    return _rel(root, names[0]), (_rel(root, names[1]) if len(names) > 1 else None)


# ---------------------------------------------------------------------------------------------- layouts

def _scan_msd(root: Path, issues, notes) -> Tuple[List[Case], List[Path], dict]:
    meta: dict = {}
    js = root / "dataset.json"
    cases: List[Case] = []
    used_labels = set()
    if js.is_file():
        try:
            meta = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{js}: cannot read dataset.json ({e})") from e
        for split, key in (("train", "training"), ("val", "validation"), ("test", "test")):
            for entry in meta.get(key, []) or []:
                paths = _json_entry_paths(root, entry, key, js, issues)
                if paths is None:
                    continue
                img, lbl = paths
                if not img.exists():
                    if split != "test" or lbl is not None:  # MSD test lists may name absent files
                        issues.append((img, f"listed in dataset.json ('{key}') but the file does not exist"))
                    continue
                if lbl is not None and not lbl.exists():
                    issues.append((lbl, f"label of {img.name} listed in dataset.json does not exist"))
                    lbl = None
                if lbl is not None:
                    used_labels.add(lbl.resolve())
                cases.append(Case(file_stem(img), img, lbl, None, split))
        listed = {c.image.resolve() for c in cases}
        for f in _list_images(root / "imagesTr"):
            if f.resolve() not in listed:
                notes.append((f, "image in imagesTr/ is not listed in dataset.json; it is ignored"))
    else:
        labels = _by_stem(_list_images(root / "labelsTr"), issues)
        for stem, img in _by_stem(_list_images(root / "imagesTr"), issues).items():
            lbl = labels.get(stem)
            if lbl is not None:
                used_labels.add(lbl.resolve())
            cases.append(Case(stem, img, lbl, None, "train"))
        for stem, img in _by_stem(_list_images(root / "imagesTs"), issues).items():
            cases.append(Case(stem, img, None, None, "test"))
    image_stems = {file_stem(c.image) for c in cases}
    orphans = [f for f in _list_images(root / "labelsTr")
               if f.resolve() not in used_labels and file_stem(f) not in image_stems]
    for f in _list_images(root / "labelsTr"):
        if f.resolve() not in used_labels and file_stem(f) in image_stems:
            notes.append((f, "label in labelsTr/ is not used by any case in dataset.json; it is ignored"))
    return cases, orphans, meta


def _scan_paired_split(folder: Path, split: str, issues) -> Tuple[List[Case], List[Path]]:
    masks_dir = next((folder / n for n in ("masks", "labels", "mask") if (folder / n).is_dir()), None)
    images = _by_stem(_list_images(folder / "images"), issues)
    masks = _by_stem(_list_images(masks_dir), issues) if masks_dir else {}
    fovs = _by_stem(_list_images(folder / "fov"), issues)
    cases = [Case(s, p, masks.get(s), fovs.get(s), split) for s, p in images.items()]
    orphans = [p for s, p in masks.items() if s not in images]
    orphans += [p for s, p in fovs.items() if s not in images]
    return cases, orphans


def _scan_paired(root: Path, issues) -> Tuple[List[Case], List[Path]]:
    cases: List[Case] = []
    orphans: List[Path] = []
    if (root / "images").is_dir():
        c, o = _scan_paired_split(root, "train", issues)
        cases += c
        orphans += o
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        split = _SPLIT_ALIASES.get(d.name.lower())
        if split and (d / "images").is_dir():
            c, o = _scan_paired_split(d, split, issues)
            cases += c
            orphans += o
    return cases, orphans


def _scan_csv(path: Path, issues) -> List[Case]:
    base = path.parent
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as e:
        raise ValueError(f"{path}: cannot read the CSV manifest ({e})") from e
    if not rows:
        return []
    cols = {k.strip().lower(): k for k in rows[0].keys() if k}

    def col(*names):
        return next((cols[n] for n in names if n in cols), None)

    c_img, c_lbl = col("image", "img", "image_path"), col("label", "mask", "seg", "label_path", "mask_path")
    c_fov, c_split, c_id = col("fov", "fov_mask", "roi"), col("split", "subset", "set"), col("id", "stem", "case")
    if c_img is None:
        raise ValueError(f"{path}: the CSV manifest needs an 'image' column (found {list(cols)})")
    cases = []
    for i, r in enumerate(rows, start=2):
        img_s = (r.get(c_img) or "").strip()
        if not img_s:
            issues.append((path, f"line {i}: empty image path"))
            continue
        img = _rel(base, img_s)
        lbl_s = (r.get(c_lbl) or "").strip() if c_lbl else ""
        fov_s = (r.get(c_fov) or "").strip() if c_fov else ""
        split_s = (r.get(c_split) or "train").strip().lower() if c_split else "train"
        split = _SPLIT_ALIASES.get(split_s)
        if split is None:
            issues.append((path, f"line {i}: unknown split '{split_s}' (use train, val or test)"))
            continue
        lbl = _rel(base, lbl_s) if lbl_s else None
        fov = _rel(base, fov_s) if fov_s else None
        for p, what in ((img, "image"), (lbl, "label"), (fov, "FOV mask")):
            if p is not None and not p.exists():
                issues.append((p, f"{what} named in {path.name} line {i} does not exist"))
        if not img.exists():
            continue
        lbl = lbl if lbl is not None and lbl.exists() else None
        fov = fov if fov is not None and fov.exists() else None
        cid = (r.get(c_id) or "").strip() if c_id else ""
        cases.append(Case(cid or file_stem(img), img, lbl, fov, split))
    return cases


# ---------------------------------------------------------------------------------------------- entry

def infer_modality_dims(img, meta: Optional[dict] = None) -> Tuple[str, int]:
    """Dims from an image (a ``MedicalImage``); modality from dataset.json where given, else guessed:
    colour -> RGB, 3D with values <= -500 -> CT, other 3D -> MR, other 2D -> grey."""
    meta = meta or {}
    nsp = len(img.spacing)
    dims = 3 if nsp >= 3 else 2
    if meta.get("modality"):
        m = meta["modality"]
        return normalize_modality(m.get("0", next(iter(m.values()))) if isinstance(m, dict) else m), dims
    arr = np.asarray(img.array)
    if arr.ndim == nsp + 1 and arr.shape[-1] in (3, 4):
        return "RGB", dims
    if dims == 3:
        return ("CT" if arr.size and float(arr.min()) <= -500 else "MR"), dims
    return "grey", dims


def scan_dataset(root_or_csv: Union[str, Path], class_names: Optional[Dict] = None,
                 probe: bool = True) -> DatasetSpec:
    """Like :func:`load_dataset` but never fails for lack of cases (validation uses this).

    ``probe=False`` skips reading the first image, leaving ``dims``/``modality`` as a first guess
    (from the file suffix and dataset.json) for the caller to settle with :func:`infer_modality_dims`.
    """
    path = Path(root_or_csv).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: data set folder or manifest does not exist")
    issues: List[Tuple[Path, str]] = []
    notes: List[Tuple[Path, str]] = []
    orphans: List[Path] = []
    meta: dict = {}
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ValueError(f"{path}: expected a data set folder or a .csv manifest")
        layout, root, cases = "csv", path.parent, _scan_csv(path, issues)
    elif (path / "dataset.json").is_file() or (path / "imagesTr").is_dir():
        layout, root = "msd", path
        cases, orphans, meta = _scan_msd(path, issues, notes)
    else:
        layout, root = "paired", path
        cases, orphans = _scan_paired(path, issues)
        if not cases and not orphans:
            flat = _list_images(path)
            if flat:  # a plain folder of images: unlabelled cases
                cases = [Case(s, p, None, None, "train") for s, p in _by_stem(flat, issues).items()]
            elif (path / "manifest.csv").is_file():
                layout, cases = "csv", _scan_csv(path / "manifest.csv", issues)
    if class_names:
        names = _int_keys(class_names)
    elif meta.get("labels"):
        names = _int_keys(meta["labels"])
    else:
        names = dict(BINARY_CLASSES)
    spec = DatasetSpec(root, layout, cases, names, "grey", 2, orphans, issues, meta, notes)
    if cases and probe:
        from ..io.image_io import read_image

        spec.modality, spec.dims = infer_modality_dims(read_image(cases[0].image), meta)
    elif cases:
        spec.dims = 3 if is_volume(cases[0].image) else 2
        spec.modality = "MR" if spec.dims == 3 else "grey"
        if meta.get("modality"):
            m = meta["modality"]
            spec.modality = normalize_modality(m.get("0", next(iter(m.values()))) if isinstance(m, dict) else m)
    return spec


def load_dataset(root_or_csv: Union[str, Path], class_names: Optional[Dict] = None) -> DatasetSpec:
    """Read a data set's case list (images are not loaded). Raises ``ValueError`` if it has no cases.

    ``class_names`` given here win over ``dataset.json``; the default is binary background/foreground.
    """
    spec = scan_dataset(root_or_csv, class_names)
    if not spec.cases:
        raise ValueError(
            f"{root_or_csv}: no cases found. Expected dataset.json + imagesTr/ + labelsTr/ (Decathlon), "
            "images/ + masks/ folders (optionally under train/ and test/), or a CSV manifest with "
            "columns image,label[,fov][,split][,id]")
    return spec


# ---------------------------------------------------------------------------------------------- labels

def label_array(arr: np.ndarray, n_spatial: int, path: Union[str, Path] = "") -> np.ndarray:
    """Turn a read mask array into integer labels: colour masks with equal channels -> one channel,
    masks holding only 0 and 255 -> 0/1, other values kept."""
    if arr.ndim == n_spatial + 1:
        ch = arr[..., :3] if arr.shape[-1] >= 3 else arr
        first = ch[..., 0]
        if not all(np.array_equal(first, ch[..., i]) for i in range(1, ch.shape[-1])):
            raise ValueError(f"{path}: colour mask whose channels differ; save label masks as one "
                             "channel of integer label values")
        arr = first
    if arr.ndim != n_spatial:
        raise ValueError(f"{path}: a mask must have {n_spatial} spatial axes, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{path}: mask holds non-integer values; labels must be whole numbers")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.size and arr.dtype.kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0:
            raise ValueError(f"{path}: mask holds negative label values (min {lo})")
        if hi == 255:
            counts = np.bincount(arr.ravel(), minlength=256)
            if counts[1:255].sum() == 0:  # only 0 and 255: a binary mask
                return (arr == 255).astype(np.uint8)
        if hi < 256 and arr.dtype != np.uint8:
            arr = arr.astype(np.uint8)
    return arr


def load_label(path: Union[str, Path]) -> np.ndarray:
    """Read a label mask as integer labels (0/255 masks become 0/1; multi-class values are kept)."""
    from ..io.image_io import read_image

    img = read_image(path)
    return label_array(img.array, len(img.spacing), path)
