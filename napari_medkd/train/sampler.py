"""Random training patches (2D slices of volumes for 2D models) with foreground over-sampling."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.augment import augment, intensity_jitter
from ..data.prepare import PreparedCase
from ..data.slices import sample_patch


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
