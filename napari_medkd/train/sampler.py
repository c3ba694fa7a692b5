"""Random training patches (2D slices of volumes for 2D models) with foreground over-sampling.

With ``labelled_share`` set and both labelled and unlabelled cases present, every batch holds a fixed
share of labelled samples (``round(batch * share)``, at least one of each kind), as the semi-supervised
recipes ask (methods.md §2.2: half labelled, half unlabelled, cycled loaders); without it samples are
drawn over all cases alike.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.augment import augment, intensity_jitter
from ..data.prepare import PreparedCase
from ..data.slices import centred_pads, sample_patch


class PatchSampler:
    """Random patches (2D slices of volumes for 2D models) with foreground over-sampling."""

    def __init__(self, cases: Sequence[PreparedCase], model_dims: int, patch_size: int, fg_prob: float,
                 slice_axis: int = 0, do_augment: bool = True, seed: int = 0,
                 labelled_share: Optional[float] = None):
        if not cases:
            raise ValueError("no training cases to sample from")
        if labelled_share is not None and not 0.0 < float(labelled_share) < 1.0:
            raise ValueError(f"labelled_share must lie strictly between 0 and 1, got {labelled_share}")
        self.labelled_share = None if labelled_share is None else float(labelled_share)
        self.cases = list(cases)
        self.model_dims = model_dims
        self.patch = patch_size
        self.fg_prob = fg_prob
        self.axis = slice_axis
        self.do_augment = do_augment
        self.rng = np.random.default_rng(seed)
        self.extras: Optional[List[np.ndarray]] = None   # per case (K, *spatial), e.g. cached teacher logits
        self.extra_key = "extra"
        self._index_slices()

    def _index_slices(self) -> None:
        self._slices: List[Tuple[int, int]] = []
        self._fg_slices: List[Tuple[int, int]] = []
        self._by_group: Dict[bool, List[Tuple[int, int]]] = {True: [], False: []}
        for ci, c in enumerate(self.cases):
            if c.image.ndim - 1 == 3 and self.model_dims == 2:
                for si in range(c.image.shape[1 + self.axis]):
                    self._slices.append((ci, si))
                    self._by_group[c.label is not None].append((ci, si))
                    if c.label is not None and np.take(c.label, si, axis=self.axis).any():
                        self._fg_slices.append((ci, si))
            else:
                self._slices.append((ci, -1))
                self._by_group[c.label is not None].append((ci, -1))

    @property
    def n_labelled(self) -> int:
        return sum(c.label is not None for c in self.cases)

    def pad_to_patch(self) -> None:
        """Zero-pad every case (label 0, FOV off) to at least the patch size in the sampled axes, centred,
        exactly as :func:`sample_patch` pads a short image, so patches are drawn as before and arrays
        computed per case afterwards (the teacher cache) see the padded input, not a blank."""
        import dataclasses

        out = []
        for c in self.cases:
            spatial = c.image.shape[1:]
            sliced = len(spatial) == 3 and self.model_dims == 2  # slices along self.axis are never padded
            pads = centred_pads(spatial, [s if sliced and a == self.axis else self.patch
                                          for a, s in enumerate(spatial)])
            if not any(sum(p) for p in pads):
                out.append(c)
                continue
            out.append(dataclasses.replace(
                c, image=np.pad(c.image, [(0, 0)] + pads),
                label=None if c.label is None else np.pad(c.label, pads),
                fov=None if c.fov is None else np.pad(c.fov, pads)))
        self.cases = out
        self._index_slices()

    def set_extras(self, arrays: Sequence[np.ndarray], key: str) -> None:
        """Per-case channel-first arrays cropped and flipped/turned with each patch (never jittered),
        returned in each batch under ``key``."""
        if len(arrays) != len(self.cases):
            raise ValueError(f"{len(arrays)} extra arrays for {len(self.cases)} cases")
        for a, c in zip(arrays, self.cases):
            if a.shape[1:] != c.image.shape[1:]:
                raise ValueError(f"extra array of shape {a.shape} does not fit image {c.image.shape}")
        self.extras, self.extra_key = list(arrays), key

    def _groups(self, batch_size: int) -> List[Optional[bool]]:
        """Per sample: True = draw a labelled case, False = an unlabelled one, None = any case."""
        if self.labelled_share is None or not self._by_group[True] or not self._by_group[False] or batch_size < 2:
            return [None] * batch_size
        n_l = min(batch_size - 1, max(1, int(round(batch_size * self.labelled_share))))
        return [True] * n_l + [False] * (batch_size - n_l)

    def _pick(self, group: Optional[bool] = None) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
        if group is False:
            pool = self._by_group[False]
        elif self._fg_slices and self.rng.random() < self.fg_prob:
            pool = self._fg_slices
        else:
            pool = self._slices if group is None else self._by_group[True]
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
        for group in self._groups(batch_size):
            img, lbl, extra = self._pick(group)
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
