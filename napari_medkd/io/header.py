"""Read an image's header only: size and geometry without the pixel data.

The fast path of data set validation (:mod:`napari_medkd.data.validate`): SimpleITK's
``ReadImageInformation`` with the ImageIO named by the suffix (letting ITK probe every ImageIO
doubles the time). The rules of :func:`read_image` apply: 2D bitmaps get unit geometry, a file ITK
cannot parse but Pillow can (GIF, grey+alpha PNG) is read whole as :func:`read_image` would.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

from .image import ImageReadError, PathLike
from .image import sitk_reason as _sitk_reason
from .image_io import _missing_data_file, read_image
from .suffixes import BITMAP_EXTENSIONS, FORMAT_NAMES, SUPPORTED_EXTENSIONS, suffix_of

_IMAGE_IO = {".nii": "NiftiImageIO", ".nii.gz": "NiftiImageIO", ".mha": "MetaImageIO", ".mhd": "MetaImageIO",
             ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO", ".png": "PNGImageIO", ".jpg": "JPEGImageIO",
             ".jpeg": "JPEGImageIO", ".tif": "TIFFImageIO", ".tiff": "TIFFImageIO", ".bmp": "BMPImageIO"}


@dataclass
class ImageHeader:
    """What a header says: size in SimpleITK (x, y[, z]) order and the geometry in that order."""

    path: str
    size: Tuple[int, ...]
    spacing: Tuple[float, ...]
    origin: Tuple[float, ...]
    direction: Tuple[float, ...]
    components: int = 1

    @property
    def shape(self) -> Tuple[int, ...]:
        """The spatial shape in numpy order, as ``read_image(path).array.shape`` starts."""
        return tuple(reversed(self.size))


def _unit_geometry(path: Path, size, components: int) -> ImageHeader:
    n = len(size)
    eye = tuple(float(i == j) for i in range(n) for j in range(n))
    return ImageHeader(str(path), tuple(size), (1.0,) * n, (0.0,) * n, eye, components)


def _sitk_info(path: Path, io_name: str):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if io_name:
        reader.SetImageIO(io_name)
    reader.ReadImageInformation()
    return reader


def _info_any_io(path: Path, ext: str):
    """The header reader: the suffix's ImageIO first, then ITK's own probing (a mis-named or corrupt
    file: a forced ImageIO may report a size of 0 where probing refuses the file)."""
    try:
        info = _sitk_info(path, _IMAGE_IO.get(ext, ""))
        if 0 not in info.GetSize():
            return info
    except RuntimeError:
        pass
    return _sitk_info(path, "")


def _from_full_read(path: Path) -> ImageHeader:
    img = read_image(path)
    size = tuple(reversed(img.array.shape[: img.ndim_spatial]))
    return ImageHeader(str(path), size, img.spacing, img.origin, img.direction, img.channels)


def read_header(path: PathLike) -> ImageHeader:
    """The header of an image file. Raises :class:`ImageReadError` naming the file and the reason."""
    p = Path(path)
    ext = suffix_of(p)
    if not p.is_file():
        raise ImageReadError(f"{p}: {'not a file' if p.exists() else 'no such file'}")
    if ext not in SUPPORTED_EXTENSIONS:
        raise ImageReadError(f"{p}: unsupported file type '{ext or p.name}'")
    if p.stat().st_size == 0:
        raise ImageReadError(f"{p}: empty file (0 bytes)")
    if ext == ".gif":
        return _from_full_read(p)
    problem = _missing_data_file(p) if ext in (".mhd", ".nhdr") else None
    if problem:
        raise ImageReadError(f"{p}: unreadable {FORMAT_NAMES[ext]} file: {problem}")
    try:
        info = _info_any_io(p, ext)
    except RuntimeError as e:
        if ext in BITMAP_EXTENSIONS:  # e.g. grey+alpha PNG: Pillow reads it (read_image's rule)
            return _from_full_read(p)
        raise ImageReadError(f"{p}: not a readable {FORMAT_NAMES[ext]} file (corrupt, truncated or another "
                             f"format): {_sitk_reason(e, p)}") from e
    size, comps = tuple(int(v) for v in info.GetSize()), int(info.GetNumberOfComponents())
    if len(size) not in (2, 3):
        raise ImageReadError(f"{p}: {len(size)}D images are not supported (only 2D and 3D)")
    if ext in BITMAP_EXTENSIONS:
        return _unit_geometry(p, size, comps)
    return ImageHeader(str(p), size, tuple(info.GetSpacing()), tuple(info.GetOrigin()), tuple(info.GetDirection()),
                       comps)
