"""npe2 readers: NIfTI / MetaImage / NRRD files and DICOM series folders -> napari layers.

Geometry convention (tested in ``tests/test_plugin_io.py``): a layer's *world* coordinates are
SimpleITK's physical coordinates, in numpy axis order. With SimpleITK's spacing ``s``, origin ``o``
and direction ``D`` (all reversed to numpy order) the layer gets

- ``scale = s`` and ``translate = o`` (readable: they are the spacing and the origin), and
- ``affine`` = the rotation ``D`` *about the origin* (``x -> D (x - o) + o``; identity for
  axis-aligned images),

so that napari's ``world = affine(translate + scale * index) = o + D (s * index)``, which is
SimpleITK's ``TransformIndexToPhysicalPoint``. The full geometry is kept in
``metadata["medkd_geometry"]`` for the writer and the widgets.

napari's built-in reader also claims some of these extensions. In code, open with
``viewer.open(path, plugin="napari-medkd")`` (napari 0.9's ``viewer.open`` defaults to the built-in
reader). In the GUI, File > Open and drag-and-drop ask which reader to use unless one is preferred:
:func:`prefer_medkd_reader` (or napari's "remember this choice") makes napari-medkd the preferred
reader for these extensions; ``_reader_offer`` offers that once. A file that cannot be read gives an
error notification naming it (:func:`read_paths`), never a traceback toast.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .io.suffixes import VOLUME_EXTENSIONS, is_volume, stem_of

MEDICAL_SUFFIXES = VOLUME_EXTENSIONS  # the one table, napari_medkd/io/suffixes.py (napari.yaml lists them)
LABEL_PARENTS = ("labelstr", "labelsts")
LABEL_MARKERS = ("_mask", "_seg", "_label")

PathLike = Union[str, os.PathLike]
LayerData = Tuple[Any, Dict[str, Any], str]


# -- geometry -------------------------------------------------------------------------------
def geometry_to_layer_kwargs(spacing: Sequence[float], origin: Sequence[float],
                             direction: Sequence[float]) -> Dict[str, Any]:
    """SimpleITK (x, y, z) geometry -> napari ``scale``, ``translate`` and ``affine`` (numpy order)."""
    n = len(spacing)
    d_itk = np.asarray(direction, dtype=float).reshape(n, n)
    d_np = d_itk[::-1, ::-1]
    o_np = np.asarray(origin, dtype=float)[::-1]
    affine = np.eye(n + 1)
    affine[:n, :n] = d_np
    affine[:n, n] = o_np - d_np @ o_np
    return {"scale": tuple(float(v) for v in spacing[::-1]), "translate": tuple(float(v) for v in o_np),
            "affine": affine}


def layer_kwargs_to_geometry(scale: Sequence[float], translate: Sequence[float],
                             affine: Optional[np.ndarray] = None) -> Dict[str, List[float]]:
    """Inverse of :func:`geometry_to_layer_kwargs` for any layer: spacing/origin/direction (x, y, z)."""
    n = len(scale)
    a = np.eye(n + 1) if affine is None else np.asarray(affine, dtype=float)
    lin, shift = a[:n, :n], a[:n, n]
    norms = np.linalg.norm(lin, axis=0)
    norms[norms == 0] = 1.0
    d_np = lin / norms                                   # columns: unit axis directions
    s_np = np.asarray(scale, dtype=float) * norms
    o_np = lin @ np.asarray(translate, dtype=float) + shift
    return {"spacing": [float(v) for v in s_np[::-1]], "origin": [float(v) for v in o_np[::-1]],
            "direction": [float(v) for v in d_np[::-1, ::-1].ravel()]}


#: SimpleITK's physical axes run right->left, anterior->posterior, inferior->superior (LPS)
_LPS = (("R", "L"), ("A", "P"), ("I", "S"))


def anatomical_axis_labels(direction: Sequence[float], n: int) -> Optional[Tuple[str, ...]]:
    """napari axis labels (numpy order) naming where each axis points, e.g. ``("I→S", "A→P", "R→L")``
    for an axis-aligned volume; None for 2D images (a photo has no anatomical frame)."""
    if n != 3:
        return None
    d = np.asarray(direction, dtype=float).reshape(n, n)
    labels = []
    for k in range(n):                 # numpy axis k is SimpleITK axis n-1-k: direction column n-1-k
        col = d[:, n - 1 - k]
        m = int(np.argmax(np.abs(col)))
        a, b = _LPS[m]
        labels.append(f"{a}→{b}" if col[m] > 0 else f"{b}→{a}")
    return tuple(labels)


def image_layer_data(img, name: str, layer_type: str = "image", source: str = "") -> LayerData:
    """A ``MedicalImage`` -> napari layer-data tuple with its geometry."""
    geo = img.geometry()
    kwargs = geometry_to_layer_kwargs(img.spacing, img.origin, img.direction)
    data = img.array
    meta = {"medkd_geometry": geo, "source": source or str(img.path or "")}
    attrs: Dict[str, Any] = {"name": name, **kwargs, "metadata": meta}
    axes = anatomical_axis_labels(img.direction, len(img.spacing))
    if axes:
        attrs["axis_labels"] = axes
    if layer_type == "labels":
        data = as_label_array(data)
    elif data.ndim == img.ndim_spatial + 1 and data.shape[-1] in (3, 4):
        attrs["rgb"] = True
    return data, attrs, layer_type


def as_label_array(data: np.ndarray) -> np.ndarray:
    """Integer labels; refuses a float map that is not integer-valued."""
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.integer):
        return data
    if data.dtype == bool:
        return data.astype(np.uint8)
    rounded = np.rint(data)
    if not np.allclose(rounded, data):
        raise ValueError("a label map must hold integer values")
    return rounded.astype(np.uint8 if rounded.min() >= 0 and rounded.max() < 256 else np.int32)


# -- naming ---------------------------------------------------------------------------------
def strip_suffix(name: str) -> str:
    return stem_of(name)


def looks_like_labels(path: PathLike) -> bool:
    """``labelsTr/`` (or ``labelsTs/``) parent or ``_mask``/``_seg``/``_label`` in the file name."""
    p = Path(path)
    if p.parent.name.lower() in LABEL_PARENTS:
        return True
    stem = strip_suffix(p.name).lower()
    return any(m in stem for m in LABEL_MARKERS)


def _is_medical_file(path: PathLike) -> bool:
    return is_volume(path)


def _looks_like_dicom_file(f: Path) -> bool:
    if f.suffix.lower() == ".dcm":
        return True
    if f.suffix:
        return False
    try:
        with open(f, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_folder(path: PathLike, max_files: int = 20) -> bool:
    """A folder holding ``.dcm`` files or extension-less files with the DICM preamble."""
    p = Path(path)
    if not p.is_dir():
        return False
    seen = 0
    for f in sorted(p.iterdir()):
        if not f.is_file():
            continue
        if _looks_like_dicom_file(f):
            return True
        seen += 1
        if seen >= max_files:
            break
    return False


# -- npe2 entry points ----------------------------------------------------------------------
def get_reader(path: Union[PathLike, List[PathLike]]) -> Optional[Callable[..., List[LayerData]]]:
    """npe2 reader contribution: a reader function for supported paths, else None."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths:
        return None
    for p in paths:
        if not (_is_medical_file(p) or is_dicom_folder(p) or str(p).lower().endswith(".dcm")):
            return None
    return read_paths


#: what a reader returns when it handled the paths but has no layer for them (npe2's null-layer
#: sentinel: napari then adds nothing and shows no traceback; our error notification says why)
NO_LAYERS: List[Any] = [(None,)]


def read_paths(path: Union[PathLike, List[PathLike]]) -> List[LayerData]:
    """Layers of every path that reads; each one that does not gets an error notification naming the
    file and the reason (never an uncaught exception with a traceback toast)."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    out: List[LayerData] = []
    folders = []
    for p in paths:
        try:
            if Path(p).is_dir() or str(p).lower().endswith(".dcm"):
                folder = Path(p) if Path(p).is_dir() else Path(p).parent  # a .dcm file opens its series
                if folder not in folders:
                    folders.append(folder)
                    out.extend(read_dicom_folder(folder))
            else:
                out.append(read_file(p))
        except Exception as exc:  # noqa: BLE001 - every reader error becomes a clear notification
            _notify_error(f"napari-medkd could not open {Path(p).name}: {exc} ({p})")
    if out:
        from ._reader_offer import offer_reader_preference

        offer_reader_preference()
    return out or NO_LAYERS


def _notify_error(message: str) -> None:
    try:
        from napari.utils.notifications import show_error
    except ImportError:  # no napari: a script calling the reader gets the error itself
        raise ValueError(message) from None
    show_error(message)


def layer_name(path: PathLike, kind: str) -> str:
    """The file's stem; a labels file whose stem names no mask gets " labels" (Decathlon's
    ``imagesTr/case.nii.gz`` and ``labelsTr/case.nii.gz`` open as "case" and "case labels")."""
    stem = strip_suffix(Path(path).name)
    if kind == "labels" and not any(m in stem.lower() for m in LABEL_MARKERS):
        return f"{stem} labels"
    return stem


def read_file(path: PathLike, layer_type: Optional[str] = None) -> LayerData:
    from .io.image_io import read_image

    img = read_image(path)
    kind = layer_type or ("labels" if looks_like_labels(path) else "image")
    return image_layer_data(img, layer_name(path, kind), kind, source=str(path))


def read_dicom_folder(path: PathLike) -> List[LayerData]:
    """One image layer per DICOM series in the folder."""
    from .io.dicom import list_dicom_series
    from .io.image_io import read_image

    series = list_dicom_series(path)
    if not series:
        raise ValueError(f"{path}: no DICOM series found")
    out = []
    for s in series:
        uid = _series_uid(s)
        img = read_image(path, series_uid=uid)
        name = Path(path).name if len(series) == 1 else f"{Path(path).name} [{_series_label(s, uid)}]"
        out.append(image_layer_data(img, name, "image", source=str(path)))
    return out


def _series_uid(s: Any) -> Optional[str]:
    if isinstance(s, str):
        return s
    if isinstance(s, dict):
        return s.get("series_uid") or s.get("uid")
    return getattr(s, "series_uid", None) or getattr(s, "uid", None)


def _series_label(s: Any, uid: Optional[str]) -> str:
    desc = (s.get("description") if isinstance(s, dict) else getattr(s, "description", None)) or ""
    return desc or (uid or "")[-12:]


def prefer_medkd_reader(*_) -> None:
    """Make napari-medkd napari's preferred reader for the medical extensions (a user setting)."""
    from ._reader_offer import prefer_medkd_reader as prefer

    prefer()
