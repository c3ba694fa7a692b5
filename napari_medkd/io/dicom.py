"""DICOM series: list the series in a folder, read one, and write a volume as a series.

Exported series are int16 slices (a linear RescaleSlope/RescaleIntercept when the values are not
integers in int16 range) carrying ImagePositionPatient, ImageOrientationPatient, PixelSpacing and
SliceThickness, so that :func:`read_image` on the folder gives back the spacing, origin and direction.
A left-handed direction (determinant -1) cannot be stated in DICOM; such volumes are written with
the slice order reversed (same voxels in space, right-handed direction).
"""
from __future__ import annotations

import os
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from .atomic import staging_dir
from .image import ImageReadError, ImageWriteError, MedicalImage, PathLike, image_from_sitk
from .image import sitk_reason as _sitk_reason


@dataclass
class DicomSeries:
    uid: str
    description: str
    n_files: int
    files: Tuple[str, ...]


def _tag(reader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def list_dicom_series(folder: PathLike) -> List[DicomSeries]:
    """The DICOM series in ``folder`` (not its sub-folders), files in slice order; [] if none."""
    import SimpleITK as sitk

    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder (a DICOM series is read from its folder)")
    reader = sitk.ImageSeriesReader()
    out = []
    for uid in reader.GetGDCMSeriesIDs(str(folder)):
        files = tuple(reader.GetGDCMSeriesFileNames(str(folder), uid))
        if not files:
            continue
        info = sitk.ImageFileReader()
        info.SetFileName(files[0])
        try:
            info.ReadImageInformation()
            description = _tag(info, "0008|103e")
        except RuntimeError:
            description = ""
        out.append(DicomSeries(uid, description, len(files), files))
    return out


def read_dicom_series(folder: PathLike, series_uid: Optional[str] = None) -> MedicalImage:
    """Read one series of ``folder``: ``series_uid``, else the only one, else the one with most slices
    (with a warning)."""
    import SimpleITK as sitk

    folder = Path(folder)
    series = list_dicom_series(folder)
    if not series:
        raise ImageReadError(f"{folder}: no DICOM series found in this folder")
    if series_uid is not None:
        chosen = [s for s in series if s.uid == series_uid]
        if not chosen:
            raise ImageReadError(f"{folder}: no DICOM series with UID {series_uid}; found "
                                 f"{', '.join(s.uid for s in series)}")
        pick = chosen[0]
    else:
        pick = max(series, key=lambda s: s.n_files)
        if len(series) > 1:
            warnings.warn(f"{folder}: {len(series)} DICOM series found; reading {pick.uid} "
                          f"('{pick.description}', {pick.n_files} files, the most slices); "
                          f"pass series_uid= to choose another", UserWarning, stacklevel=3)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(pick.files))
    try:
        img = reader.Execute()
    except RuntimeError as e:
        raise ImageReadError(f"{folder}: DICOM series {pick.uid} is unreadable: {_sitk_reason(e, folder)}") from e
    return image_from_sitk(img, folder)


def _ds(v: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    s = f"{float(v):.10g}"
    return "0" if s == "-0" else s


def _to_int16(arr: np.ndarray, where: Path) -> Tuple[np.ndarray, float, float]:
    """Pixel data and (slope, intercept) with value = stored int16 * slope + intercept: int16 data
    as is, or float64 data that GDCM scales into int16 with that slope and intercept."""
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "fiu":
        raise ImageWriteError(f"{where}: cannot write dtype {arr.dtype} as DICOM")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ImageWriteError(f"{where}: the volume holds NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    integral = arr.dtype.kind in "iu" or bool((arr == np.round(arr)).all())
    if integral and lo >= -32768 and hi <= 32767:
        return np.round(arr).astype(np.int16), 1.0, 0.0
    slope = float(_ds((hi - lo) / 65000.0)) or 1.0  # GDCM stores (value - intercept) / slope as int16
    intercept = float(_ds((hi + lo) / 2.0))
    return arr.astype(np.float64), slope, intercept


def _uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def _sitk_volume(volume: MedicalImage, data: np.ndarray):
    """The SimpleITK image of ``data`` and its 3x3 direction, with the slice order reversed when the
    direction is left-handed (DICOM's slice normal is row x column)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(data)
    img.SetSpacing(volume.spacing)
    img.SetOrigin(volume.origin)
    img.SetDirection(volume.direction)
    d = np.asarray(volume.direction, float).reshape(3, 3)
    if np.linalg.det(d) < 0:  # DICOM's slice normal is row x column: reverse the slices
        last = img.TransformIndexToPhysicalPoint((0, 0, data.shape[0] - 1))
        img = sitk.GetImageFromArray(data[::-1].copy())
        img.SetSpacing(volume.spacing)
        img.SetOrigin(last)
        d = d.copy()
        d[:, 2] *= -1
    img.SetDirection(tuple(d.ravel()))
    return img, d


def _series_tags(volume: MedicalImage, d: np.ndarray, data: np.ndarray, slope: float, intercept: float, *,
                 uid: str, modality: str, description: str, date: str, clock: str) -> List[Tuple[str, str]]:
    """The (tag, value) pairs shared by every slice of the series."""
    study, frame = _uid(), _uid()
    series_tags = [
        ("0008|0008", "DERIVED\\SECONDARY"), ("0008|0021", date), ("0008|0031", clock),
        ("0008|0060", modality), ("0008|103e", description[:64]), ("0020|000d", study), ("0020|000e", uid),
        ("0020|0052", frame), ("0020|0011", "1"),
        ("0020|0037", "\\".join(_ds(v) for v in (d[0, 0], d[1, 0], d[2, 0], d[0, 1], d[1, 1], d[2, 1]))),
        ("0018|0050", _ds(volume.spacing[2])), ("0018|0088", _ds(volume.spacing[2])),
        ("0028|1052", _ds(intercept)), ("0028|1053", _ds(slope)), ("0028|1054", "US"),
    ]
    if data.dtype != np.int16:
        series_tags += [("0028|0100", "16"), ("0028|0101", "16"), ("0028|0102", "15"), ("0028|0103", "1")]
    return series_tags


def _check_no_clash(folder: Path, names: List[str], overwrite: bool) -> None:
    """Raise ``FileExistsError`` if a target file exists and ``overwrite`` is false."""
    if not overwrite:
        clash = [n for n in names if (folder / n).exists()]
        if clash:
            raise FileExistsError(f"{folder / clash[0]}: file exists ({len(clash)} in all); pass overwrite=True")


def _write_slice(writer, img, i: int, series_tags: List[Tuple[str, str]], date: str, clock: str,
                 target: Path, final: Path) -> None:
    """Write slice ``i`` of ``img`` with the series tags and its own tags to ``target`` (a staged file
    that will become ``final``)."""
    sl = img[:, :, i]
    for key, value in series_tags:
        sl.SetMetaData(key, value)
    sl.SetMetaData("0008|0012", date)
    sl.SetMetaData("0008|0013", clock)
    sl.SetMetaData("0008|0018", _uid())
    sl.SetMetaData("0020|0013", str(i + 1))
    sl.SetMetaData("0020|0032", "\\".join(_ds(v) for v in img.TransformIndexToPhysicalPoint((0, 0, i))))
    writer.SetFileName(str(target))
    try:
        writer.Execute(sl)
    except RuntimeError as e:
        raise ImageWriteError(f"{final}: DICOM writing failed: {_sitk_reason(e, target)}") from e


def _write_staged(img, names: List[str], series_tags: List[Tuple[str, str]], date: str, clock: str,
                  folder: Path) -> None:
    """Write every slice into a staging folder next to ``folder``, then move them all into place."""
    import SimpleITK as sitk

    with staging_dir(folder, prefix=".medkd-dicom-") as tmp:
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for i, name in enumerate(names):
            _write_slice(writer, img, i, series_tags, date, clock, tmp / name, folder / name)
        for name in names:
            os.replace(tmp / name, folder / name)


def write_dicom_series(volume: MedicalImage, folder: PathLike, *, description: str = "napari-medkd export",
                       series_uid: Optional[str] = None, modality: str = "OT", overwrite: bool = False) -> None:
    """Write a 3D single-channel ``volume`` as one DICOM file per slice into ``folder``.

    Several series can share a folder (file names carry the series UID). Files appear only once all
    slices are written. Raises :class:`ImageWriteError` for non-3D or multichannel volumes and
    ``FileExistsError`` if a target file exists and ``overwrite`` is false.
    """
    folder = Path(folder)
    arr = np.asarray(volume.array)
    if volume.ndim_spatial != 3 or arr.ndim != 3:
        raise ImageWriteError(f"{folder}: DICOM export needs a 3D single-channel volume, got shape {arr.shape}")
    data, slope, intercept = _to_int16(arr, folder)
    img, d = _sitk_volume(volume, data)
    uid = series_uid or _uid()
    now = time.localtime()
    date, clock = time.strftime("%Y%m%d", now), time.strftime("%H%M%S", now)
    series_tags = _series_tags(volume, d, data, slope, intercept, uid=uid, modality=modality,
                               description=description, date=date, clock=clock)
    stem = uid.replace(".", "")[-12:]
    names = [f"{stem}_{i:04d}.dcm" for i in range(data.shape[0])]
    _check_no_clash(folder, names, overwrite)
    _write_staged(img, names, series_tags, date, clock, folder)
