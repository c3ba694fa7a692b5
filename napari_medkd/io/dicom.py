"""DICOM series: list the series in a folder, read one, and write a volume as a series.

Exported series are int16 slices (a linear RescaleSlope/RescaleIntercept when the values are not
integers in int16 range) carrying ImagePositionPatient, ImageOrientationPatient, PixelSpacing and
SliceThickness, so that :func:`read_image` on the folder gives back the spacing, origin and direction.
A left-handed direction (determinant -1) cannot be stated in DICOM; such volumes are written with
the slice order reversed (same voxels in space, right-handed direction).
"""
from __future__ import annotations

import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

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


def _header(file: str):
    """A slice's header (GDCM), or None if it cannot be parsed."""
    import SimpleITK as sitk

    info = sitk.ImageFileReader()
    info.SetFileName(file)
    info.SetImageIO("GDCMImageIO")
    try:
        info.ReadImageInformation()
    except RuntimeError:
        return None
    return info


def _floats(text: str) -> Optional[np.ndarray]:
    try:
        return np.array([float(v) for v in text.split("\\")], float)
    except ValueError:
        return None


def slice_offsets(files: Sequence[str]) -> Optional[np.ndarray]:
    """Each slice's position along the slice normal (ImagePositionPatient projected on the row x column
    of ImageOrientationPatient), in mm; None where a slice lacks the tags (nothing to check)."""
    offsets = []
    for f in files:
        info = _header(f)
        pos = _floats(_tag(info, "0020|0032")) if info is not None else None
        iop = _floats(_tag(info, "0020|0037")) if info is not None else None
        if pos is None or iop is None or pos.size != 3 or iop.size != 6:
            return None
        offsets.append(float(np.dot(pos, np.cross(iop[:3], iop[3:]))))
    return np.asarray(offsets)


def _stray_dicom_files(folder: Path, series: Sequence[DicomSeries]) -> List[str]:
    """Files of ``folder`` that start like DICOM (``DICM`` at byte 128) but are in no series: slices
    GDCM could not parse."""
    listed = {os.path.basename(f) for s in series for f in s.files}
    stray = []
    for f in sorted(folder.iterdir()):
        if f.name in listed or not f.is_file() or f.name.upper() == "DICOMDIR":
            continue
        with open(f, "rb") as fh:
            head = fh.read(132)
        if (head[128:132] == b"DICM" or f.suffix.lower() == ".dcm") and _header(str(f)) is None:
            stray.append(f.name)
    return stray


def irregular_slices(files: Sequence[str], offsets: np.ndarray) -> Optional[str]:
    """Why the slice positions are not evenly spaced (naming the slices), or None."""
    if len(offsets) < 3:
        return None
    gaps = np.abs(np.diff(offsets))
    step = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - step) > max(0.01 * step, 1e-3))
    if not bad.size:
        return None
    i = int(bad[0])
    a, b = os.path.basename(files[i]), os.path.basename(files[i + 1])
    if gaps[i] < 1e-6:
        return f"slices {a} and {b} lie at the same position (a duplicate slice)"
    missing = int(round(gaps[i] / step)) - 1 if step > 0 else 0
    why = f" (about {missing} slice(s) missing)" if missing > 0 else ""
    return (f"slices {a} and {b} are {gaps[i]:g} mm apart where the series' spacing is {step:g} mm{why}; "
            f"{bad.size} irregular gap(s) in {len(files)} slices")


def check_series_geometry(folder: Path, pick: DicomSeries, series: Sequence[DicomSeries]) -> None:
    """Refuse a series whose slices are unevenly spaced, or a folder holding a corrupt slice: read
    anyway, ITK would stretch the spacing over the gap (11 slices at 2.75 mm instead of 12 at 2.5)."""
    stray = _stray_dicom_files(folder, series)
    if stray:
        raise ImageReadError(f"{folder}: {', '.join(stray[:5])}{' ...' if len(stray) > 5 else ''} look(s) like "
                             f"DICOM but cannot be read (corrupt or truncated slice?); repair or remove it "
                             f"({len(stray)} file(s)), or the series would be read with a slice missing")
    offsets = slice_offsets(pick.files)
    why = irregular_slices(pick.files, offsets) if offsets is not None else None
    if why:
        raise ImageReadError(f"{folder}: DICOM series {pick.uid} has irregular slice spacing: {why}; "
                             "the volume's geometry would be wrong")


def describe_series(series: Sequence[DicomSeries]) -> str:
    """One line per series, as `medkd inspect` lists them: index, UID, slices, size, spacing, description."""
    return "\n".join(f"  {i}: {s.uid}  '{s.description}'  {s.n_files} files" for i, s in enumerate(series))


def _series_row(i: int, s: DicomSeries) -> str:
    """``i  UID  slices  size  spacing  description`` (size and spacing in x, y, z order)."""
    info = _header(s.files[0])
    size = tuple(info.GetSize()[:2]) if info is not None else ("?", "?")
    spacing = list(info.GetSpacing()[:2]) if info is not None else [math.nan, math.nan]
    offsets = slice_offsets(s.files)
    step = float(np.median(np.abs(np.diff(offsets)))) if offsets is not None and len(offsets) > 1 else math.nan
    note = ""
    if offsets is not None and irregular_slices(s.files, offsets):
        note = "  [irregular slice spacing]"
    size_s = "x".join(str(v) for v in size + (s.n_files,))
    spacing_s = "x".join(f"{v:.3g}" for v in spacing + [step])
    return f"{i:>3}  {s.uid:<64}  {s.n_files:>6}  {size_s:>14}  {spacing_s:>16}  {s.description}{note}"


def inspect_dicom_folder(folder: PathLike) -> str:
    """The series of ``folder`` as a table (index, UID, slices, size, spacing in mm, description): what
    `medkd inspect` prints, and the indices ``series_uid`` accepts."""
    folder = Path(folder)
    series = list_dicom_series(folder)
    if not series:
        raise ImageReadError(f"{folder}: no DICOM series found in this folder")
    head = f"{'#':>3}  {'series UID':<64}  {'slices':>6}  {'size (x,y,z)':>14}  {'spacing (mm)':>16}  description"
    lines = [f"{folder}: {len(series)} DICOM series", head] + [_series_row(i, s) for i, s in enumerate(series)]
    stray = _stray_dicom_files(folder, series)
    if stray:
        lines.append(f"unreadable DICOM file(s): {', '.join(stray)}")
    return "\n".join(lines)


def choose_series(folder: Path, series: Sequence[DicomSeries], choice: Optional[str]) -> DicomSeries:
    """The series ``choice`` names (its UID, or its index in :func:`list_dicom_series`); the only one
    when ``choice`` is None; an error listing them when there are several and none is chosen."""
    if choice is None:
        if len(series) == 1:
            return series[0]
        raise ImageReadError(f"{folder}: {len(series)} DICOM series found; choose one by UID or index "
                             f"(medkd: --series; `medkd inspect {folder}` describes them):\n"
                             + describe_series(series))
    by_uid = [s for s in series if s.uid == str(choice)]
    if by_uid:
        return by_uid[0]
    if str(choice).isdigit() and int(choice) < len(series):
        return series[int(choice)]
    raise ImageReadError(f"{folder}: no DICOM series with UID or index {choice}; found:\n" + describe_series(series))


def read_dicom_series(folder: PathLike, series_uid: Optional[str] = None) -> MedicalImage:
    """Read one series of ``folder``: ``series_uid`` (a UID or an index), else the only one. Refuses
    several series without a choice, a corrupt slice and unevenly spaced slices."""
    import SimpleITK as sitk

    folder = Path(folder)
    series = list_dicom_series(folder)
    if not series:
        raise ImageReadError(f"{folder}: no DICOM series found in this folder")
    pick = choose_series(folder, series, series_uid)
    check_series_geometry(folder, pick, series)
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
