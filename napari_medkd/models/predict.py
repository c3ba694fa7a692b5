"""The one grid predictor: a model's logits and labels on whole images and volumes, for torch modules
(training validation, the teacher cache, ``medkd predict``, Compare), onnxruntime sessions
(``medkd infer``, Live) and the feature taps of the analysis widgets alike.

A model is a ``run(batch) -> logits`` callable for a ``(B, C, *spatial)`` batch whose sizes are
multiples of the model's size divisor. 2D images of up to ``MAX_WHOLE_2D`` squared pixels (padded, no
side over ``MAX_SIDE_2D``: a 1 x 5000 strip too) run whole, zero-padded centred to the divisor (split
before/after as MONAI's sliding window pads); larger ones are tiled with overlap and Gaussian blending
(MONAI ``sliding_window_inference``). A 2D model on a volume runs slice by
slice along ``slice_axis`` in batches (labels are taken per batch, so whole-volume logits are not held
when only labels are wanted); a 3D model runs a 3D sliding window of up to ``ROI_3D`` per side.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

MAX_WHOLE_2D = 1024   # 2D images of up to this size squared (padded area) run in one go
MAX_SIDE_2D = 16384   # ... if no side is longer than this
ROI_3D = 96           # 3D sliding-window size per side
OVERLAP = 0.25

Run = Callable[[np.ndarray], np.ndarray]


def pad_center(x: np.ndarray, div: int, n: int) -> Tuple[np.ndarray, Tuple[slice, ...]]:
    """Zero-pad the last ``n`` axes to multiples of ``div``, split before/after as MONAI's sliding window
    does; returns the padded array and the index that crops a result back."""
    pads, crop = [], []
    for s in x.shape[x.ndim - n:]:
        diff = (-s) % div
        pads.append((diff // 2, diff - diff // 2))
        crop.append(slice(diff // 2, diff // 2 + s))
    if any(a or b for a, b in pads):
        x = np.pad(x, [(0, 0)] * (x.ndim - n) + pads)
    return x, (Ellipsis,) + tuple(crop)


def as_labels(logits: np.ndarray) -> np.ndarray:
    """``argmax`` over axis 0 (first class on ties), as running comparisons: for the few classes of a
    segmentation model this is several times faster than ``argmax(0)`` on large arrays."""
    k = logits.shape[0]
    labels = np.zeros(logits.shape[1:], np.uint8 if k <= 256 else np.uint16)
    if k == 2:
        np.greater(logits[1], logits[0], out=labels, casting="unsafe")
        return labels
    best = np.array(logits[0], copy=True)
    for c in range(1, k):
        better = logits[c] > best
        labels[better] = c
        np.maximum(best, logits[c], out=best)
    return labels


def slice_batches(image: np.ndarray, slice_axis: int, batch_size: int = 8,
                  indices: Optional[Sequence[int]] = None) -> Iterator[Tuple[List[int], np.ndarray]]:
    """``(slice indices, (B, C, a, b))`` batches of the slices of a ``(C, *volume)`` image along numpy
    spatial axis ``slice_axis`` (all of them, or ``indices``), not yet padded."""
    vol = np.moveaxis(image, 1 + slice_axis, 0)           # (S, C, a, b), a view
    idx = list(range(vol.shape[0])) if indices is None else [int(i) for i in indices]
    for s0 in range(0, len(idx), batch_size):
        chunk = idx[s0:s0 + batch_size]
        yield chunk, np.ascontiguousarray(vol[chunk])


@dataclass
class GridPredictor:
    """Slicing, padding, sliding windows and batching around one ``run(batch)`` callable."""
    run: Run
    model_dims: int = 2
    size_divisor: int = 16
    slice_axis: int = 0              # numpy spatial axis a 2D model cuts volumes along
    batch_size: int = 8
    max_whole: int = MAX_WHOLE_2D
    roi_3d: int = ROI_3D
    overlap: float = OVERLAP

    def check(self, image: np.ndarray) -> None:
        if image.ndim - 1 not in (2, 3):
            raise ValueError(f"expected a channel-first 2D or 3D image, got shape {image.shape}")
        if self.model_dims == 3 and image.ndim == 3:
            raise ValueError("a 3D model cannot segment a 2D image")

    def _roi(self, spatial: Sequence[int], cap: int) -> Tuple[int, ...]:
        div = self.size_divisor
        return tuple(min(cap, int(math.ceil(s / div) * div)) for s in spatial)

    def window(self, x: np.ndarray, roi: Tuple[int, ...]) -> np.ndarray:
        """MONAI sliding window (Gaussian blending, constant padding) over a ``(B, C, *spatial)`` batch."""
        import torch
        from monai.inferers import sliding_window_inference

        def predictor(t):
            return torch.from_numpy(np.asarray(self.run(t.numpy()), dtype=np.float32))

        with torch.inference_mode():
            out = sliding_window_inference(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), roi,
                                           sw_batch_size=self.batch_size, predictor=predictor,
                                           overlap=self.overlap, mode="gaussian", padding_mode="constant")
        return out.numpy()

    def fits_whole(self, spatial: Sequence[int]) -> bool:
        """Whether a 2D image of this size runs in one go: by its padded area, so a long strip (1 x 5000)
        is not cut into dozens of mostly-padding windows."""
        padded = [int(math.ceil(s / self.size_divisor) * self.size_divisor) for s in spatial]
        return max(padded) <= MAX_SIDE_2D and padded[0] * padded[1] <= self.max_whole ** 2

    def batch_2d(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(B, K, a, b)`` of a batch of 2D images ``(B, C, a, b)``."""
        if self.fits_whole(x.shape[2:]):
            xp, crop = pad_center(x, self.size_divisor, 2)
            return np.asarray(self.run(xp))[crop]
        return self.window(x, self._roi(x.shape[2:], self.max_whole))

    def slice_batches(self, image: np.ndarray, indices: Optional[Sequence[int]] = None
                      ) -> Iterator[Tuple[List[int], np.ndarray]]:
        return slice_batches(image, self.slice_axis, self.batch_size, indices)

    def logits(self, image: np.ndarray) -> np.ndarray:
        """Logits ``(K, *spatial)`` float32 of a preprocessed channel-first image ``(C, *spatial)``."""
        self.check(image)
        if self.model_dims == 3:
            return self.window(image[None], self._roi(image.shape[1:], self.roi_3d))[0]
        if image.ndim == 3:
            return self.batch_2d(image[None])[0]
        outs = [self.batch_2d(x) for _, x in self.slice_batches(image)]
        return np.moveaxis(np.concatenate(outs, 0), 0, 1 + self.slice_axis)  # (K, ..., S at slice_axis, ...)

    def labels(self, image: np.ndarray) -> np.ndarray:
        """Labels ``(*spatial)``; a 2D model on a volume takes the argmax per batch of slices."""
        self.check(image)
        if self.model_dims == 3 or image.ndim == 3:
            return as_labels(self.logits(image))
        outs = [as_labels(np.moveaxis(self.batch_2d(x), 1, 0)) for _, x in self.slice_batches(image)]
        return np.moveaxis(np.concatenate(outs, 0), 0, self.slice_axis)


@contextlib.contextmanager
def torch_run(model, device=None, amp: bool = False) -> Iterator[Run]:
    """A ``run`` for a torch module: eval mode (the previous mode is restored on exit), inference mode,
    on ``device`` (default: where the model's parameters are), autocast when ``amp`` on CUDA."""
    import torch

    param = next(iter(model.parameters()), None)  # none in an ONNX teacher (onnxruntime runs it): the CPU
    if device is None:
        device = param.device if param is not None else "cpu"
    device = torch.device(device)
    use_amp = bool(amp and device.type == "cuda")

    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.ascontiguousarray(batch, dtype=np.float32), device=device)
        with torch.inference_mode(), torch.autocast(device.type, enabled=use_amp):
            return model(x).float().cpu().numpy()

    was_training = model.training
    model.eval()
    try:
        yield run
    finally:
        model.train(was_training)


def grid_predictor(model, run: Run, slice_axis: int = 0, **kw) -> GridPredictor:
    """A :class:`GridPredictor` with the torch ``model``'s dimensions and size divisor."""
    return GridPredictor(run, int(getattr(model, "spatial_dims", 2)), int(getattr(model, "size_divisor", 16)),
                         int(slice_axis), **kw)


def predict_logits(model, image: np.ndarray, *, device=None, slice_axis: int = 0, batch_size: int = 8,
                   max_whole: int = MAX_WHOLE_2D, overlap: float = OVERLAP, amp: bool = False) -> np.ndarray:
    """Logits ``(K, *spatial)`` float32 of a torch model on a channel-first image ``(C, *spatial)``."""
    with torch_run(model, device, amp) as run:
        return grid_predictor(model, run, slice_axis, batch_size=batch_size, max_whole=max_whole,
                              overlap=overlap).logits(image)


def predict_labels(model, image: np.ndarray, fov: Optional[np.ndarray] = None, *, device=None,
                   slice_axis: int = 0, batch_size: int = 8, max_whole: int = MAX_WHOLE_2D,
                   overlap: float = OVERLAP, amp: bool = False) -> np.ndarray:
    """Labels ``(*spatial)`` of a torch model (0 outside ``fov`` when given)."""
    with torch_run(model, device, amp) as run:
        labels = grid_predictor(model, run, slice_axis, batch_size=batch_size, max_whole=max_whole,
                                overlap=overlap).labels(image)
    if fov is not None:
        labels[~fov.astype(bool)] = 0
    return labels
