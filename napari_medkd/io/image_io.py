"""Read and write medical images with their geometry (SimpleITK underneath).

Axis conventions: ``MedicalImage.array`` is in numpy order ((z, y, x) or (y, x), colour last);
``spacing``/``origin``/``direction`` are in SimpleITK order (x, y[, z]), direction flattened row-major.

2D bitmap formats (PNG, JPEG, TIFF, BMP, GIF) get unit geometry (spacing 1, origin 0, identity):
their DPI tags describe print size, not anatomy. Writing to them keeps no geometry.

Writes are atomic and verified: the file (and, for ``.mhd``, its ``.raw`` data file) is written into a
hidden temporary folder beside the target, read back (SimpleITK only prints a short write, e.g. on a full
disk), then moved into place with ``os.replace`` (the ``.raw`` first, the header last), so an error
never leaves a partial file at the target; it names the target and the cause (no space left, ...).
"""
from __future__ import annotations

import gzip
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import named_error, staging_dir, write_error_of
from .image import ImageReadError, ImageWriteError, MedicalImage, PathLike, image_from_sitk
from .image import sitk_reason as _sitk_reason
from .paths import not_a_regular_file
from .suffixes import BITMAP_EXTENSIONS, SUPPORTED_EXTENSIONS, WRITE_EXTENSIONS, is_supported
from .suffixes import FORMAT_NAMES as _FORMAT
from .suffixes import suffix_of as _suffix

__all__ = ["ImageReadError", "ImageWriteError", "MedicalImage", "PathLike", "image_from_sitk", "is_supported",
           "read_image", "write_image", "write_mask"]


def _missing_data_file(p: Path) -> Optional[str]:
    """The data file a detached header (.mhd, .nhdr) names, if it is missing."""
    with open(p, "rb") as f:
        head = f.read(8192).decode("latin-1")
    m = re.search(r"^\s*(?:ElementDataFile\s*=|data ?file\s*:)\s*(\S+)\s*$", head, re.M | re.I)
    if not m or m.group(1).upper() in ("LOCAL", "LIST") or "%" in m.group(1):
        return None
    data = p.parent / m.group(1)
    return None if data.exists() else f"its data file {data.name} is missing"


# -- reading ----------------------------------------------------------------------------------------
def read_image(path: PathLike, series_uid: Optional[str] = None) -> MedicalImage:
    """Read an image file or a DICOM series folder; see the module docstring for geometry rules.

    2D RGBA/grey+alpha images lose their alpha channel; multichannel 3D images are refused.
    Raises :class:`ImageReadError` (naming the path and the reason) for anything unreadable.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: no such file or folder")
    if p.is_dir():
        from .dicom import read_dicom_series

        return read_dicom_series(p, series_uid)
    problem = not_a_regular_file(p, "image")  # a FIFO, a device, a link to /dev/zero
    if problem:
        raise ImageReadError(problem)
    ext = _suffix(p)
    if ext not in SUPPORTED_EXTENSIONS:
        raise ImageReadError(f"{p}: unsupported file type '{ext or p.name}'; supported: "
                             f"{', '.join(SUPPORTED_EXTENSIONS)} or a DICOM series folder")
    if p.stat().st_size == 0:
        raise ImageReadError(f"{p}: empty file (0 bytes)")
    if ext == ".gif":
        return _read_with_pil(p, ext)
    import SimpleITK as sitk

    problem = {".nii": _nifti_problem, ".nii.gz": _nifti_problem, ".mhd": _missing_data_file,
               ".nhdr": _missing_data_file}.get(ext, lambda _: None)(p)
    if problem:
        raise ImageReadError(f"{p}: unreadable {_FORMAT[ext]} file: {problem}")
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as e:
        if ext in BITMAP_EXTENSIONS:  # e.g. grey+alpha PNG, which ITK cannot read
            return _read_with_pil(p, ext, f"SimpleITK: {_sitk_reason(e, p)}")
        raise ImageReadError(f"{p}: not a readable {_FORMAT[ext]} file (corrupt, truncated or another "
                             f"format): {_sitk_reason(e, p)}") from e
    return image_from_sitk(img, p, bitmap=ext in BITMAP_EXTENSIONS)



def _read_with_pil(p: Path, ext: str, why: str = "") -> MedicalImage:
    """2D bitmaps ITK cannot read (GIF, grey+alpha, ...) with Pillow: the first frame, grey or RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            if getattr(im, "n_frames", 1) > 1:
                warnings.warn(f"{p}: {im.n_frames} frames; reading the first", UserWarning, stacklevel=3)
            im.seek(0)
            if im.mode == "P":
                im = im.convert("L" if _grey_palette(im) else "RGB")
            if im.mode in ("LA", "La", "1"):
                im = im.convert("L")
            elif im.mode not in ("L", "I", "I;16", "F"):
                im = im.convert("RGB")
            arr = np.array(im)
    except Image.DecompressionBombError as e:  # a header claiming, say, 60000 x 60000 pixels
        raise ImageReadError(f"{p}: refused: the {_FORMAT[ext]} header claims more pixels than an image may "
                             f"have ({e})") from e
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        reason = "; ".join(r for r in (why, f"Pillow: {e}") if r)
        raise ImageReadError(f"{p}: not a readable {_FORMAT[ext]} file (corrupt, truncated or another "
                             f"format): {reason}") from e
    return MedicalImage(arr, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), str(p))


def _grey_palette(im) -> bool:
    pal = np.asarray(im.getpalette() or [], np.int32)
    pal = pal[: len(pal) // 3 * 3].reshape(-1, 3)
    return bool(len(pal)) and bool((pal == pal[:, :1]).all())


def _nifti_problem(p: Path) -> Optional[str]:
    """ITK zero-fills truncated NIfTI data silently; check the data length against the header."""
    opener = gzip.open if p.name.lower().endswith(".gz") else open
    try:
        with opener(p, "rb") as f:
            head = f.read(540)
            if len(head) < 348:
                return f"header is {len(head)} bytes, a NIfTI header needs 348"
            for endian in "<>":
                size = struct.unpack(endian + "i", head[:4])[0]
                if size == 348:
                    dims = struct.unpack(endian + "8h", head[40:56])
                    bitpix = struct.unpack(endian + "h", head[72:74])[0]
                    offset = int(struct.unpack(endian + "f", head[108:112])[0])
                    break
                if size == 540:
                    bitpix = struct.unpack(endian + "h", head[12:14])[0]
                    dims = struct.unpack(endian + "8q", head[16:80])
                    offset = struct.unpack(endian + "q", head[168:176])[0]
                    break
            else:
                return None  # not NIfTI at all: let ITK say so
            n = dims[0] if 0 < dims[0] <= 7 else 0
            need = max(offset, 348) + int(np.prod([max(d, 1) for d in dims[1:n + 1]])) * bitpix // 8
            have = len(head)
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                have += len(chunk)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        return f"compressed data is truncated or damaged ({e})"
    if have < need:
        return f"truncated: {have} bytes of data, the header needs {need}"
    return None


# -- writing ----------------------------------------------------------------------------------------
def _as_labels(mask: np.ndarray, path: Path) -> np.ndarray:
    if mask.size == 0:
        raise ImageWriteError(f"{path}: the mask is empty (shape {mask.shape})")
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8)
    if mask.dtype.kind not in "fiu":
        raise ImageWriteError(f"{path}: a mask must hold integer labels, got dtype {mask.dtype}")
    if mask.dtype.kind == "f" and not (np.isfinite(mask).all() and (mask == np.round(mask)).all()):
        raise ImageWriteError(f"{path}: the mask holds non-integer or non-finite values; labels must be integers")
    lo, hi = mask.min(), mask.max()
    if lo < 0 or hi > 65535:
        raise ImageWriteError(f"{path}: labels must lie in 0..65535, this mask holds {lo}..{hi}")
    return mask.astype(np.uint8 if hi <= 255 else np.uint16)


def _spatial_dims(arr: np.ndarray, ext: str, reference: Optional[MedicalImage]) -> int:
    if reference is not None:
        return reference.ndim_spatial
    if arr.ndim == 3 and ext in BITMAP_EXTENSIONS and arr.shape[-1] in (3, 4):
        return 2
    return arr.ndim


def _write(array, path: PathLike, reference: Optional[MedicalImage], overwrite: bool, mask: bool) -> Path:
    import SimpleITK as sitk

    p = Path(path)
    ext = _suffix(p)
    if ext not in WRITE_EXTENSIONS:
        raise ImageWriteError(f"{p}: cannot write '{ext or p.name}' files; use one of {', '.join(WRITE_EXTENSIONS)}")
    arr = np.asarray(array)
    nsp = _spatial_dims(arr, ext, reference)
    if reference is not None:
        ref_shape = tuple(np.shape(reference.array)[:nsp])
        if arr.ndim < nsp or arr.shape[:nsp] != ref_shape:
            raise ImageWriteError(f"{p}: shape {arr.shape} does not match the reference image "
                                  f"{reference.path or ''} of spatial shape {ref_shape}".replace("  ", " "))
    if nsp not in (2, 3) or arr.ndim not in ((nsp,) if mask else (nsp, nsp + 1)):
        what = "mask" if mask else "image"
        raise ImageWriteError(f"{p}: cannot write a {what} of shape {arr.shape} "
                              f"({'2D or 3D label maps' if mask else '2D/3D, optionally with channels last'})")
    if ext in BITMAP_EXTENSIONS and nsp != 2:
        raise ImageWriteError(f"{p}: {_FORMAT[ext]} holds 2D images only; this one is {nsp}D (use .nii.gz)")
    arr = _as_labels(arr, p) if mask else arr
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if p.is_dir():
        raise ImageWriteError(f"{p}: is a folder")
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p}: file exists; pass overwrite=True to replace it")
    try:
        img = sitk.GetImageFromArray(arr, isVector=arr.ndim == nsp + 1)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ImageWriteError(f"{p}: cannot convert an array of dtype {arr.dtype}: {e}") from e
    if reference is not None and ext not in BITMAP_EXTENSIONS:
        img.SetSpacing(reference.spacing)
        img.SetOrigin(reference.origin)
        try:
            img.SetDirection(reference.direction)
        except RuntimeError as e:
            raise ImageWriteError(f"{p}: invalid reference direction {reference.direction}") from e
    _atomic_write(img, p, overwrite, compress=ext in (".mha", ".nrrd", ".png", ".tif", ".tiff"))
    return p


def _read_back_problem(written: Path, img) -> Optional[str]:
    """Why the file just written is not ``img`` in full (truncated, unreadable, another size), or None."""
    import SimpleITK as sitk

    if not written.is_file() or written.stat().st_size == 0:
        return "nothing was written (0 bytes)"
    if _suffix(written) in (".nii", ".nii.gz"):
        problem = _nifti_problem(written)  # ITK zero-fills a truncated NIfTI file when reading it
        if problem:
            return problem
    try:
        back = sitk.ReadImage(str(written))
    except RuntimeError as e:
        return f"the written file does not read back: {_sitk_reason(e, written)}"
    if back.GetSize() != img.GetSize() or back.GetNumberOfComponentsPerPixel() != img.GetNumberOfComponentsPerPixel():
        return f"the written file reads back with size {back.GetSize()}, not {img.GetSize()}"
    return None


def _write_failed(p: Path, written: Path, detail: str) -> Exception:
    """The error for a failed write of ``p``: an ``OSError`` with the operating system's reason when a
    probe write finds one (no space left, file too large), else an :class:`ImageWriteError`."""
    cause = write_error_of(written) if written.parent.is_dir() else None
    if cause is not None and cause.errno is not None:
        err = named_error(cause, p)
        return type(err)(err.errno, f"{err.strerror} ({detail}); nothing was written", err.filename)
    return ImageWriteError(f"{p}: writing failed: {detail}; nothing was written")


def _atomic_write(img, p: Path, overwrite: bool, compress: bool) -> None:
    import SimpleITK as sitk

    with staging_dir(p.parent, target=p) as tmp:
        written = tmp / p.name
        try:
            sitk.WriteImage(img, str(written), useCompression=compress)
        except RuntimeError as e:
            raise _write_failed(p, written, _sitk_reason(e, written)) from e
        problem = _read_back_problem(written, img)
        if problem:
            raise _write_failed(p, written, problem)
        produced = sorted(tmp.iterdir(), key=lambda f: f.name == p.name)  # data files first, header last
        if not overwrite:
            clash = [str(p.parent / f.name) for f in produced if (p.parent / f.name).exists()]
            if clash:
                raise FileExistsError(f"{', '.join(clash)}: file exists; pass overwrite=True to replace it")
        for f in produced:
            try:
                os.replace(f, p.parent / f.name)
            except OSError as exc:
                raise named_error(exc, p.parent / f.name) from exc


def write_image(array, path: PathLike, reference: Optional[MedicalImage] = None,
                overwrite: bool = False) -> Path:
    """Write an image (dtype kept; channels last allowed) with ``reference``'s geometry; returns the path."""
    return _write(array, path, reference, overwrite, mask=False)


def write_mask(mask, path: PathLike, reference: Optional[MedicalImage] = None, overwrite: bool = False) -> Path:
    """Write a label map as uint8 (uint16 above 255) with ``reference``'s spacing, origin and direction.

    Label values are stored as they are (a binary PNG holds 0/1, not 0/255). Raises
    :class:`ImageWriteError` on a bad mask, format or shape mismatch, ``FileExistsError`` if the
    file exists and ``overwrite`` is false, an ``OSError`` naming the file and the cause when it cannot
    be written in full (a read-only folder, no space left, a file-size limit).
    """
    return _write(mask, path, reference, overwrite, mask=True)
