"""Preprocessing and its inverse, in one place: intensity normalisation, resampling, padding, reading
a case for training, the train/validation split, and mapping labels back to the source grid.

:func:`prepare_image` (resample -> :func:`preprocess_image`) is the one entry point training,
evaluation, ``medkd predict``, ``medkd infer``, Live and Compare call, so a model sees the same input
everywhere; :func:`labels_to_source_grid` is its inverse for label maps. Arrays come back
channel-first float32: 2D -> ``(C, y, x)``, 3D -> ``(C, z, y, x)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..config import DataConfig
from ..io.image import MedicalImage
from ..io.image_io import read_image
from .datasets import Case, DatasetSpec, load_dataset, load_label, normalize_modality

RGB_MODES = ("green", "rgb")


ZScoreStats = Tuple[float, float, float, float]   # (lo, hi, mean, std)


def zscore_stats(array: np.ndarray, percentiles: Sequence[float], max_samples: int = 1 << 22) -> ZScoreStats:
    """``(lo, hi, mean, std)`` of the MR / grey normalisation: the ``percentiles`` and the mean and std
    after clipping to them. Arrays over ``max_samples`` voxels are measured on an evenly strided
    subsample (a 512x512x100 volume: every 7th voxel), which changes the numbers by well under 1 % and
    makes whole-volume inference several times cheaper. The one place these statistics are computed:
    training, ``medkd predict``/``infer`` and Live's ``normalisation_stats`` all call it."""
    flat = np.asarray(array).astype(np.float32, copy=False).reshape(-1)
    sample = flat[:: int(np.ceil(flat.size / max_samples))] if flat.size > max_samples else flat
    lo, hi = np.percentile(sample, (float(percentiles[0]), float(percentiles[1])))
    clipped = np.clip(sample, lo, hi)
    return float(lo), float(hi), float(clipped.mean()), float(clipped.std())


def zscore_apply(x: np.ndarray, stats: ZScoreStats) -> np.ndarray:
    """Clip ``x`` to ``[lo, hi]``, then ``(x - mean) / std`` (std 0 -> 1); float32 out."""
    lo, hi, mean, std = stats
    out = np.clip(x.astype(np.float32, copy=False), np.float64(lo), np.float64(hi))
    out -= mean
    out /= std if std > 1e-8 else 1.0
    return out.astype(np.float32, copy=False)


def _zscore(x: np.ndarray, percentiles: Tuple[float, float], max_samples: int = 1 << 22) -> np.ndarray:
    """Clip to the percentiles, then z-score, with the statistics of :func:`zscore_stats`."""
    return zscore_apply(x, zscore_stats(x, percentiles, max_samples))


def normalize_intensity(array: np.ndarray, modality: str, *, ct_window: Sequence[float] = (-160.0, 240.0),
                        percentiles: Sequence[float] = (0.5, 99.5), rgb_mode: str = "green") -> np.ndarray:
    """Normalise one image and return it channel-first float32.

    CT: clip to ``ct_window`` and scale to [0, 1]. MR / grey: clip to ``percentiles`` then z-score over
    the whole image. RGB (``array`` is ``(..., 3)``): ``"green"`` -> the green channel alone, z-scored;
    ``"rgb"`` -> three channels, each z-scored. Grey input with modality RGB is treated as grey
    (``"rgb"`` repeats it to 3 channels so the channel count stays the same).
    """
    mod = normalize_modality(modality)
    a = np.asarray(array)
    pct = (float(percentiles[0]), float(percentiles[1]))
    if mod == "CT":
        lo, hi = float(ct_window[0]), float(ct_window[1])
        if not hi > lo:
            raise ValueError(f"CT window must be (low, high) with low < high, got {tuple(ct_window)}")
        out = (np.clip(a.astype(np.float32), lo, hi) - lo) / (hi - lo)
        return out[None].astype(np.float32)
    if mod in ("MR", "grey"):
        return _zscore(a, pct)[None]
    if rgb_mode not in RGB_MODES:
        raise ValueError(f"rgb_mode must be one of {RGB_MODES}, got '{rgb_mode}'")
    if a.ndim >= 3 and a.shape[-1] in (3, 4):
        chans = np.moveaxis(a[..., :3], -1, 0)
        if rgb_mode == "green":
            return _zscore(chans[1], pct)[None]
        return np.stack([_zscore(c, pct) for c in chans]).astype(np.float32)
    z = _zscore(a, pct)[None]  # grey image in an RGB set
    return np.repeat(z, 3, axis=0) if rgb_mode == "rgb" else z


@dataclass
class PreprocessConfig:
    modality: str = "grey"                       # CT | MR | RGB | grey
    rgb_mode: str = "green"                      # green | rgb
    ct_window: Tuple[float, float] = (-160.0, 240.0)
    percentiles: Tuple[float, float] = (0.5, 99.5)
    target_spacing: Optional[Tuple[float, ...]] = None  # SimpleITK (x, y[, z]) order; None = keep
    slice_axis: int = 0                          # numpy spatial axis along which 3D volumes are cut

    def __post_init__(self):
        self.modality = normalize_modality(self.modality)
        if self.rgb_mode not in RGB_MODES:
            raise ValueError(f"rgb_mode must be one of {RGB_MODES}, got '{self.rgb_mode}'")
        self.ct_window = tuple(float(v) for v in self.ct_window)
        self.percentiles = tuple(float(v) for v in self.percentiles)
        if len(self.ct_window) != 2 or len(self.percentiles) != 2:
            raise ValueError("ct_window and percentiles need two values each")
        if self.target_spacing is not None:
            self.target_spacing = tuple(float(v) for v in self.target_spacing)
            if any(v <= 0 for v in self.target_spacing):
                raise ValueError(f"target_spacing must be positive, got {self.target_spacing}")
        self.slice_axis = int(self.slice_axis)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        for k in ("ct_window", "percentiles", "target_spacing"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PreprocessConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing settings {sorted(unknown)} (known: {sorted(known)})")
        return cls(**{k: v for k, v in d.items() if v is not None or k == "target_spacing"})


def _n_spatial(img) -> int:
    return len(img.spacing)


def preprocess_image(img, cfg: PreprocessConfig) -> np.ndarray:
    """Normalise a :class:`MedicalImage` as ``cfg`` says; returns channel-first float32.

    Resampling to ``cfg.target_spacing`` is the caller's step (:func:`resample_to_spacing`), because
    the caller needs the resampled geometry to map predictions back.
    """
    arr = np.asarray(img.array)
    nsp = _n_spatial(img)
    is_vector = arr.ndim == nsp + 1
    if arr.ndim not in (nsp, nsp + 1):
        raise ValueError(f"{getattr(img, 'path', '') or 'image'}: array shape {arr.shape} does not fit "
                         f"{nsp} spatial axes")
    if is_vector and cfg.modality != "RGB":
        arr = arr[..., :3].astype(np.float32).mean(axis=-1)  # colour image, grey model: luminance
    out = normalize_intensity(arr, cfg.modality, ct_window=cfg.ct_window, percentiles=cfg.percentiles,
                              rgb_mode=cfg.rgb_mode)
    return np.ascontiguousarray(out, dtype=np.float32)


def resample_to_spacing(img, spacing: Sequence[float], is_label: bool = False):
    """Resample a :class:`MedicalImage` to ``spacing`` (SimpleITK x, y[, z] order), keeping origin and
    direction; linear interpolation for images, nearest neighbour for labels."""
    import SimpleITK as sitk

    from ..io.image import MedicalImage

    nsp = _n_spatial(img)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != nsp:
        raise ValueError(f"{getattr(img, 'path', '') or 'image'}: target spacing {spacing} has "
                         f"{len(spacing)} values, the image has {nsp} spatial axes")
    arr = np.asarray(img.array)
    is_vector = arr.ndim == nsp + 1
    src_dtype = arr.dtype
    if not is_label and arr.dtype.kind != "f":
        arr = arr.astype(np.float32)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    src = sitk.GetImageFromArray(arr, isVector=is_vector)
    src.SetSpacing(tuple(float(s) for s in img.spacing))
    src.SetOrigin(tuple(float(o) for o in img.origin))
    src.SetDirection(tuple(float(d) for d in np.asarray(img.direction).ravel()))
    old_size = np.array(src.GetSize(), dtype=float)
    new_size = [max(1, int(round(n))) for n in old_size * np.array(img.spacing, float) / np.array(spacing)]
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    out = sitk.Resample(src, new_size, sitk.Transform(nsp, sitk.sitkIdentity), interp, src.GetOrigin(), spacing,
                        src.GetDirection(), 0, src.GetPixelID())
    res = sitk.GetArrayFromImage(out)
    if is_label and res.dtype != src_dtype:
        res = res.astype(src_dtype)
    return MedicalImage(res, spacing, tuple(img.origin), tuple(np.asarray(img.direction).ravel()),
                        getattr(img, "path", None))


PadSpec = Tuple[Tuple[int, int], ...]


def pad_to_multiple(array: np.ndarray, k: int, n_spatial: Optional[int] = None, mode: str = "constant",
                    **kwargs) -> Tuple[np.ndarray, PadSpec]:
    """Pad the last ``n_spatial`` axes (default: all) at their end to a multiple of ``k``.

    Returns ``(padded, pad_spec)``; ``pad_spec`` holds ``(before, after)`` for those trailing axes, and
    :func:`crop_back` undoes it on any array whose trailing axes match (e.g. a label map).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = array.ndim if n_spatial is None else int(n_spatial)
    if not 0 <= n <= array.ndim:
        raise ValueError(f"n_spatial={n_spatial} for an array with {array.ndim} axes")
    spec = tuple((0, (-s) % k) for s in array.shape[array.ndim - n:])
    if not any(a for _, a in spec):
        return array, spec
    full = ((0, 0),) * (array.ndim - n) + spec
    return np.pad(array, full, mode=mode, **kwargs), spec


def crop_back(array: np.ndarray, pad_spec: PadSpec) -> np.ndarray:
    """Remove the padding ``pad_to_multiple`` added to the trailing axes."""
    n = len(pad_spec)
    if n > array.ndim:
        raise ValueError(f"pad spec for {n} axes but the array has {array.ndim}")
    sl = tuple(slice(b, array.shape[array.ndim - n + i] - a) for i, (b, a) in enumerate(pad_spec))
    return array[(Ellipsis,) + sl]


@dataclass
class PreparedCase:
    id: str
    image: np.ndarray              # channel-first float32 (C, *spatial)
    label: Optional[np.ndarray]    # (*spatial) int64, or None
    fov: Optional[np.ndarray]      # (*spatial) bool, or None
    reference: MedicalImage        # geometry of the (possibly resampled) image; array is not kept


def preprocess_config(cfg: DataConfig, spec: DatasetSpec) -> PreprocessConfig:
    return PreprocessConfig.from_dict({
        "modality": cfg.modality or spec.modality,
        "rgb_mode": cfg.rgb_mode,
        "ct_window": tuple(cfg.ct_window),
        "percentiles": tuple(cfg.percentiles),
        "target_spacing": tuple(cfg.target_spacing) if cfg.target_spacing else None,
        "slice_axis": cfg.slice_axis,
    })


def prepare_image(img: MedicalImage, pcfg: PreprocessConfig) -> Tuple[np.ndarray, MedicalImage]:
    if pcfg.target_spacing and img.ndim_spatial == len(pcfg.target_spacing):
        img = resample_to_spacing(img, pcfg.target_spacing, is_label=False)
    return preprocess_image(img, pcfg).astype(np.float32), img


def _read_mask(path, img: MedicalImage, pcfg: PreprocessConfig) -> np.ndarray:
    lbl = load_label(path)
    if pcfg.target_spacing and img.ndim_spatial == len(pcfg.target_spacing):
        src = read_image(path)
        src.array = lbl
        lbl = resample_to_spacing(src, pcfg.target_spacing, is_label=True).array
    return lbl


def prepare_case(case: Case, pcfg: PreprocessConfig) -> PreparedCase:
    raw = read_image(case.image)
    image, img = prepare_image(raw, pcfg)
    spatial = image.shape[1:]
    label = fov = None
    if case.label is not None:
        label = _read_mask(case.label, raw, pcfg).astype(np.int64)
        if label.shape != spatial:
            raise ValueError(f"{case.label}: mask shape {label.shape} differs from image shape {spatial}")
    if case.fov is not None:
        fov = _read_mask(case.fov, raw, pcfg) > 0
        if fov.shape != spatial:
            raise ValueError(f"{case.fov}: FOV shape {fov.shape} differs from image shape {spatial}")
    ref = MedicalImage(array=np.zeros((1,) * img.array.ndim, np.uint8), spacing=img.spacing, origin=img.origin,
                       direction=img.direction, path=str(case.image))
    return PreparedCase(case.id, image, label, fov, ref)


def split_train_val(cases: Sequence[Case], cfg: DataConfig, seed: int) -> Tuple[List[Case], List[Case]]:
    cases = [c for c in cases if c.split == "train"]
    if cfg.val_cases:
        wanted = set(cfg.val_cases)
        return [c for c in cases if c.id not in wanted], [c for c in cases if c.id in wanted]
    n_val = int(round(len(cases) * cfg.val_fraction))
    if cfg.val_fraction > 0 and len(cases) > 1:
        n_val = max(1, min(n_val, len(cases) - 1))
    else:
        n_val = 0
    order = np.random.default_rng(seed).permutation(len(cases))
    val = sorted(order[:n_val].tolist())
    return [c for i, c in enumerate(cases) if i not in val], [cases[i] for i in val]


def load_spec(cfg: DataConfig) -> DatasetSpec:
    """The data set of ``cfg.root``; a plain folder of scans gets its masks from ``cfg.labels_root``
    where there are any (``data/label_folder.py``)."""
    from .label_folder import attach_labels

    return attach_labels(load_dataset(cfg.root, class_names=cfg.class_names), cfg.labels_root)


def labels_to_source_grid(labels: np.ndarray, work: MedicalImage, img: MedicalImage) -> np.ndarray:
    """Labels computed on the resampled ``work`` grid, brought back (nearest neighbour) to ``img``'s grid."""
    if work is img:
        return labels
    tmp = MedicalImage(labels, work.spacing, work.origin, work.direction)
    back = resample_to_spacing(tmp, img.spacing, is_label=True).array
    out = np.zeros(np.shape(img.array)[: img.ndim_spatial], labels.dtype)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(out.shape, back.shape))
    out[sl] = back[sl]
    return out


def work_slice_index(index: int, src_spacing: float, work_spacing: float, n_work: int, clip: bool = True) -> int:
    """Source slice ``index`` -> the slice of the working grid (after :func:`resample_to_spacing`, which
    keeps the origin) nearest to it in physical space: ``floor(index * src_spacing / work_spacing + 0.5)``,
    i.e. rounded half up, as ITK's nearest-neighbour interpolation in :func:`labels_to_source_grid` rounds,
    so a slice segmented alone is the one the whole-volume mask takes. ``clip``: clamp to ``[0, n_work)``;
    else -1 for a source slice outside the working grid (where :func:`labels_to_source_grid` gives 0)."""
    pos = float(index) * float(src_spacing) / float(work_spacing)
    if not clip and not -0.5 <= pos < n_work - 0.5:
        return -1
    return int(min(max(int(np.floor(pos + 0.5)), 0), n_work - 1))


def plane_to_source_grid(labels: np.ndarray, work: MedicalImage, img: MedicalImage, axis: int) -> np.ndarray:
    """A 2D label plane of the working grid (a volume cut along numpy ``axis``) brought back to the
    plane of ``img``'s grid, as :func:`labels_to_source_grid` does for the whole volume."""
    if work is img:
        return labels
    sitk_ax = img.ndim_spatial - 1 - axis             # spacing is in SimpleITK (x, y, z) order
    plane = [s for i, s in enumerate(work.spacing) if i != sitk_ax]
    src_plane = [s for i, s in enumerate(img.spacing) if i != sitk_ax]
    shape = tuple(s for i, s in enumerate(np.shape(img.array)[: img.ndim_spatial]) if i != axis)
    ident = (1.0, 0.0, 0.0, 1.0)
    src = MedicalImage(np.broadcast_to(np.zeros((), np.uint8), shape), src_plane, (0.0, 0.0), ident)
    return labels_to_source_grid(labels, MedicalImage(labels, plane, (0.0, 0.0), ident), src)
