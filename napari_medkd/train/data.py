"""Training data in memory: preprocessed cases, train/validation split, patch batches.

The same ``prepare_case`` (read -> optional resampling -> ``preprocess_image``) serves training,
evaluation and prediction, so what a model sees at inference is what it saw in training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..config import DataConfig
from ..data.augment import augment, intensity_jitter
from ..data.datasets import Case, DatasetSpec, load_dataset, load_label
from ..data.preprocess import PreprocessConfig, preprocess_image, resample_to_spacing
from ..data.slices import sample_patch
from ..io.image_io import MedicalImage, read_image


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


class PatchSampler:
    """Random patches (2D slices of volumes for 2D models) with foreground over-sampling."""

    def __init__(self, cases: Sequence[PreparedCase], model_dims: int, patch_size: int, fg_prob: float,
                 slice_axis: int = 0, do_augment: bool = True, seed: int = 0):
        if not cases:
            raise ValueError("no training cases to sample from")
        self.cases = list(cases)
        self.model_dims = model_dims
        self.patch = patch_size
        self.fg_prob = fg_prob
        self.axis = slice_axis
        self.do_augment = do_augment
        self.rng = np.random.default_rng(seed)
        self.extras: Optional[List[np.ndarray]] = None   # per case (K, *spatial), e.g. cached teacher logits
        self.extra_key = "extra"
        self._slices: List[Tuple[int, int]] = []
        self._fg_slices: List[Tuple[int, int]] = []
        for ci, c in enumerate(self.cases):
            if c.image.ndim - 1 == 3 and model_dims == 2:
                for si in range(c.image.shape[1 + self.axis]):
                    self._slices.append((ci, si))
                    if c.label is not None and np.take(c.label, si, axis=self.axis).any():
                        self._fg_slices.append((ci, si))
            else:
                self._slices.append((ci, -1))

    def set_extras(self, arrays: Sequence[np.ndarray], key: str) -> None:
        """Per-case channel-first arrays cropped and flipped/turned with each patch (never jittered),
        returned in each batch under ``key``."""
        if len(arrays) != len(self.cases):
            raise ValueError(f"{len(arrays)} extra arrays for {len(self.cases)} cases")
        for a, c in zip(arrays, self.cases):
            if a.shape[1:] != c.image.shape[1:]:
                raise ValueError(f"extra array of shape {a.shape} does not fit image {c.image.shape}")
        self.extras, self.extra_key = list(arrays), key

    def _pick(self) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
        pool = self._fg_slices if (self._fg_slices and self.rng.random() < self.fg_prob) else self._slices
        ci, si = pool[self.rng.integers(len(pool))]
        c = self.cases[ci]
        extra = self.extras[ci] if self.extras is not None else None
        if si < 0:
            return c.image, c.label, extra
        img = np.take(c.image, si, axis=1 + self.axis)
        lbl = np.take(c.label, si, axis=self.axis) if c.label is not None else None
        extra = np.take(extra, si, axis=1 + self.axis) if extra is not None else None
        return img, lbl, extra

    def sample(self, batch_size: int) -> Dict[str, np.ndarray]:
        images, labels, labelled, extras = [], [], [], []
        for _ in range(batch_size):
            img, lbl, extra = self._pick()
            has = lbl is not None
            if lbl is None:
                lbl = np.zeros(img.shape[1:], np.int64)
            c = img.shape[0]
            if extra is not None:  # crop and turn together; jitter the image channels only
                img = np.concatenate([img, extra.astype(img.dtype)], 0)
            ip, lp = sample_patch(img, lbl, self.patch, fg_prob=self.fg_prob if has else 0.0, rng=self.rng)
            if self.do_augment:
                ip, lp = augment(ip, lp, self.rng, intensity=None if extra is not None else (0.1, 0.1))
                if extra is not None:
                    ip = np.concatenate([intensity_jitter(ip[:c], self.rng), ip[c:]], 0)
            if extra is not None:
                ip, ep = ip[:c], ip[c:]
                extras.append(np.ascontiguousarray(ep, dtype=np.float32))
            images.append(np.ascontiguousarray(ip, dtype=np.float32))
            labels.append(np.ascontiguousarray(lp, dtype=np.int64))
            labelled.append(has)
        batch = {"image": np.stack(images), "label": np.stack(labels), "labelled": np.array(labelled)}
        if extras:
            batch[self.extra_key] = np.stack(extras)
        return batch

    def get_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def load_spec(cfg: DataConfig) -> DatasetSpec:
    return load_dataset(cfg.root, class_names=cfg.class_names)
