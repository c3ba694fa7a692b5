"""Segment images, folders, volumes and DICOM series with an exported student in onnxruntime.

The ONNX file's metadata (written by ``export.onnx_export``) gives the preprocessing; images go
through ``train.data.prepare_image`` (the training code path), so inference sees what training saw.
2D models: whole images up to 1024 x 1024 (padded to the size divisor), larger ones tiled with
overlap and Gaussian blending; volumes slice by slice in batches. 3D models: 3D sliding window.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..card import ModelCard
from ..data.prepare import PreprocessConfig, labels_to_source_grid, resample_to_spacing
from ..io.image import MedicalImage

MAX_WHOLE_2D = 1024   # 2D images up to this size run in one go
ROI_3D = 96           # 3D sliding-window size (as in torch_predict)


class OnnxModelError(ValueError):
    """The ONNX file is missing, unreadable, not from napari-medkd, or does not fit the input."""


@dataclass
class SegmentResult:
    labels: np.ndarray        # in the source image's grid
    seconds: float
    ms_per_slice: float
    n_slices: int


@dataclass
class SliceResult:
    labels: np.ndarray        # 2D
    ms: float


@dataclass
class InferResult:
    source: Path
    output: Path
    shape: Tuple[int, ...]
    labels_present: List[int]
    seconds: float
    ms_per_slice: float


@dataclass
class IntensityStats:
    """Whole-volume normalisation (MR / grey): clip to [lo, hi], then (x - mean) / std."""
    lo: float
    hi: float
    mean: float
    std: float


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (hyper-threads counted once)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        base = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add((base.joinpath("physical_package_id").read_text().strip(), base.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(c)))
    return max(1, len(cores))


def default_providers() -> List[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail] or avail


def _pad_center(x: np.ndarray, div: int, n: int) -> Tuple[np.ndarray, Tuple[slice, ...]]:
    """Pad the last ``n`` axes to multiples of ``div``, split before/after as MONAI's sliding window does."""
    pads, crop = [], []
    for s in x.shape[x.ndim - n:]:
        diff = (-s) % div
        pads.append((diff // 2, diff - diff // 2))
        crop.append(slice(diff // 2, diff // 2 + s))
    if any(a or b for a, b in pads):
        x = np.pad(x, [(0, 0)] * (x.ndim - n) + pads)
    return x, (Ellipsis,) + tuple(crop)


def _as_labels(logits: np.ndarray) -> np.ndarray:
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


class OrtSegmenter:
    """An exported napari-medkd model in an onnxruntime session."""

    def __init__(self, onnx_path, providers: Optional[Sequence[str]] = None, threads: Optional[int] = None):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise OnnxModelError(f"ONNX model {self.path} does not exist" if not self.path.exists()
                                 else f"ONNX model {self.path} is not a file")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or physical_cores())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=list(providers or default_providers()))
        except Exception as exc:  # noqa: BLE001 - say whether it is ONNX at all
            raise OnnxModelError(self._diagnose(exc)) from exc
        props = self.session.get_modelmeta().custom_metadata_map
        if "medkd_version" not in props or "preprocess" not in props:
            raise OnnxModelError(f"{self.path} is an ONNX model but has no napari-medkd metadata (class names, "
                                 "preprocessing); export it with `medkd export` / napari_medkd.export.export_onnx")
        try:
            self.card = ModelCard.from_onnx_props(props)
            self.pcfg = PreprocessConfig.from_dict(self.card.preprocess)
        except (KeyError, ValueError, TypeError) as exc:
            raise OnnxModelError(f"{self.path}: napari-medkd metadata is incomplete or damaged: {exc}") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        ch = inp.shape[1] if len(inp.shape) > 1 else None
        if len(inp.shape) != 2 + self.model_dims or (isinstance(ch, int) and ch != self.in_channels):
            raise OnnxModelError(f"{self.path}: the graph input {inp.name} has shape {inp.shape}, but the metadata "
                                 f"says {self.in_channels} channel(s) and {self.model_dims} spatial dims")
        self.providers = self.session.get_providers()
        self._cache: Optional[Dict[str, Any]] = None

    def _diagnose(self, exc: Exception) -> str:
        import onnx

        try:
            proto = onnx.load(str(self.path), load_external_data=False)
            parsed = len(proto.graph.node) > 0
        except Exception as parse_exc:  # noqa: BLE001
            return f"{self.path} is not an ONNX model (it cannot be parsed: {type(parse_exc).__name__})"
        if not parsed:
            return f"{self.path} is not an ONNX model (no graph in it)"
        return f"{self.path}: onnxruntime cannot load this ONNX model: {str(exc).strip()[:400]}"

    # -- metadata ---------------------------------------------------------------------------------
    @property
    def class_names(self) -> Dict[int, str]:
        return self.card.class_names

    @property
    def in_channels(self) -> int:
        return self.card.in_channels

    @property
    def num_classes(self) -> int:
        return self.card.num_classes

    @property
    def model_dims(self) -> int:
        return self.card.model_dims

    @property
    def size_divisor(self) -> int:
        return self.card.size_divisor

    @property
    def slice_axis(self) -> int:
        return self.pcfg.slice_axis

    # -- raw inference ----------------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for one batch ``(B, C, *spatial)`` whose sizes are multiples of ``size_divisor``."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0]

    def _window(self, x: np.ndarray, roi: Tuple[int, ...], batch_size: int) -> np.ndarray:
        import torch
        from monai.inferers import sliding_window_inference

        def predictor(t):
            return torch.from_numpy(self.run(t.numpy()))

        with torch.inference_mode():
            out = sliding_window_inference(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), roi,
                                           sw_batch_size=batch_size, predictor=predictor, overlap=0.25,
                                           mode="gaussian", padding_mode="constant")
        return out.numpy()

    def _predict_batch_2d(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        div = self.size_divisor
        if max(x.shape[2:]) <= MAX_WHOLE_2D:
            xp, crop = _pad_center(x, div, 2)
            return self.run(xp)[crop]
        roi = tuple(min(MAX_WHOLE_2D, int(math.ceil(s / div) * div)) for s in x.shape[2:])
        return self._window(x, roi, batch_size)

    def _check_channels(self, image_cf: np.ndarray, what: str = "image") -> None:
        if image_cf.ndim - 1 not in (2, 3):
            raise ValueError(f"expected a channel-first 2D or 3D {what}, got shape {image_cf.shape}")
        if image_cf.shape[0] != self.in_channels:
            raise ValueError(f"{self.path.name} expects {self.in_channels} input channel(s), but the {what} has "
                             f"{image_cf.shape[0]} (shape {image_cf.shape}); check the image type (grey vs RGB)")

    def predict_logits(self, image_cf: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Logits ``(K, *spatial)`` for a preprocessed channel-first image ``(C, *spatial)``."""
        self._check_channels(image_cf)
        img_dims = image_cf.ndim - 1
        if self.model_dims == 3:
            if img_dims != 3:
                raise ValueError(f"{self.path.name} is a 3D model; it cannot segment a 2D image")
            div = self.size_divisor
            roi = tuple(min(ROI_3D, int(math.ceil(s / div) * div)) for s in image_cf.shape[1:])
            return self._window(image_cf[None], roi, batch_size)[0]
        if img_dims == 2:
            return self._predict_batch_2d(image_cf[None], batch_size)[0]
        ax = 1 + self.slice_axis
        vol = np.moveaxis(image_cf, ax, 0)                 # (S, C, a, b)
        outs = [self._predict_batch_2d(vol[s:s + batch_size], batch_size) for s in range(0, len(vol), batch_size)]
        return np.moveaxis(np.concatenate(outs, 0), 0, ax)  # (K, ..., S at slice_axis, ...)

    def predict_labels(self, image_cf: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Labels ``(*spatial)`` of a preprocessed image; a 2D model on a volume takes the argmax per
        batch of slices, so the whole-volume logits are never held in memory."""
        self._check_channels(image_cf)
        if self.model_dims == 3 or image_cf.ndim == 3:
            return _as_labels(self.predict_logits(image_cf, batch_size))
        ax = 1 + self.slice_axis
        vol = np.moveaxis(image_cf, ax, 0)                 # (S, C, a, b)
        outs = [_as_labels(np.moveaxis(self._predict_batch_2d(vol[s:s + batch_size], batch_size), 1, 0))
                for s in range(0, len(vol), batch_size)]   # each (B, a, b)
        return np.moveaxis(np.concatenate(outs, 0), 0, self.slice_axis)

    # -- images -----------------------------------------------------------------------------------
    def _prepare(self, img: MedicalImage) -> Tuple[np.ndarray, MedicalImage]:
        from ..data.prepare import prepare_image

        image_cf, work = prepare_image(img, self.pcfg)
        self._check_channels(image_cf, f"image {img.path}" if img.path else "image")
        return image_cf, work

    def segment(self, img: MedicalImage) -> SegmentResult:
        """Labels for ``img`` in its own grid (resampled back if the model works at another spacing)."""
        t0 = time.perf_counter()
        image_cf, work = self._prepare(img)
        labels = labels_to_source_grid(self.predict_labels(image_cf), work, img)
        dt = time.perf_counter() - t0
        n = image_cf.shape[1 + self.slice_axis] if image_cf.ndim == 4 else 1
        return SegmentResult(labels, dt, 1000.0 * dt / n, n)

    def prepare_volume(self, img: MedicalImage) -> int:
        """Preprocess ``img`` once (whole-volume normalisation) for :meth:`segment_slice_index`;
        returns the number of slices along ``slice_axis`` in the source grid (1 for a 2D image)."""
        image_cf, work = self._prepare(img)
        self._cache = {"img": img, "image": image_cf, "work": work, "labels": None}
        return int(np.shape(img.array)[self.slice_axis]) if img.ndim_spatial == 3 else 1

    def segment_slice_index(self, index: int) -> SliceResult:
        """Segment slice ``index`` (source grid, along ``slice_axis``) of the prepared volume."""
        if self._cache is None:
            raise RuntimeError("call prepare_volume(img) before segment_slice_index()")
        t0 = time.perf_counter()
        c = self._cache
        img, work, image_cf = c["img"], c["work"], c["image"]
        if img.ndim_spatial == 2 or self.model_dims == 3:  # whole image / 3D context: segment once, then slice
            if c["labels"] is None:
                c["labels"] = labels_to_source_grid(_as_labels(self.predict_logits(image_cf)), work, img)
            labels = c["labels"] if img.ndim_spatial == 2 else np.take(c["labels"], index, axis=self.slice_axis)
            return SliceResult(labels, 1000.0 * (time.perf_counter() - t0))
        ax = self.slice_axis
        n_src = np.shape(img.array)[ax]
        if not 0 <= index < n_src:
            raise IndexError(f"slice {index} is outside 0..{n_src - 1}")
        sitk_ax = img.ndim_spatial - 1 - ax           # spacing is in SimpleITK (x, y, z) order
        j = index if work is img else int(round(index * img.spacing[sitk_ax] / work.spacing[sitk_ax]))
        j = min(max(j, 0), image_cf.shape[1 + ax] - 1)
        labels = _as_labels(self.predict_logits(np.take(image_cf, j, axis=1 + ax)))
        if work is not img:
            plane = [s for i, s in enumerate(work.spacing) if i != sitk_ax]
            src_plane = [s for i, s in enumerate(img.spacing) if i != sitk_ax]
            tmp = MedicalImage(labels, plane, (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
            back = resample_to_spacing(tmp, src_plane, is_label=True).array
            shape = [s for i, s in enumerate(np.shape(img.array)[:3]) if i != ax]
            labels = np.zeros(shape, labels.dtype)
            sl = tuple(slice(0, min(a, b)) for a, b in zip(shape, back.shape))
            labels[sl] = back[sl]
        return SliceResult(labels, 1000.0 * (time.perf_counter() - t0))

    def normalisation_stats(self, img: MedicalImage) -> Optional[IntensityStats]:
        """Whole-volume MR/grey normalisation statistics for :meth:`segment_slice` (None for CT/RGB)."""
        if self.pcfg.modality not in ("MR", "grey"):
            return None
        if self.pcfg.target_spacing and img.ndim_spatial == len(self.pcfg.target_spacing):
            img = resample_to_spacing(img, self.pcfg.target_spacing, is_label=False)  # as prepare_image does
        arr = np.asarray(img.array, dtype=np.float32)
        if arr.ndim == img.ndim_spatial + 1:
            arr = arr[..., :3].mean(axis=-1)
        lo, hi = np.percentile(arr, self.pcfg.percentiles)
        clipped = np.clip(arr, lo, hi)
        return IntensityStats(float(lo), float(hi), float(clipped.mean()), float(clipped.std()))

    def segment_slice(self, slice_2d_raw: np.ndarray, stats: Optional[IntensityStats] = None) -> SliceResult:
        """Segment one raw 2D slice (grey ``(y, x)`` or RGB ``(y, x, 3)``), taken to be at the model's spacing.

        Without ``stats`` the slice is normalised alone (exact for 2D-image models); with ``stats`` from
        :meth:`normalisation_stats` of its volume it is normalised as the whole volume would be.
        """
        from ..data.prepare import prepare_image

        t0 = time.perf_counter()
        raw = np.asarray(slice_2d_raw)
        if self.model_dims != 2:
            raise ValueError(f"{self.path.name} is a 3D model; segment whole volumes with segment()")
        if stats is not None and self.pcfg.modality in ("MR", "grey"):
            a = raw[..., :3].astype(np.float32).mean(-1) if raw.ndim == 3 else raw.astype(np.float32)
            std = stats.std if stats.std > 1e-8 else 1.0
            image_cf = ((np.clip(a, stats.lo, stats.hi) - stats.mean) / std).astype(np.float32)[None]
        else:
            img = MedicalImage(raw, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
            image_cf, _ = prepare_image(img, PreprocessConfig.from_dict({**self.pcfg.to_dict(), "target_spacing": None}))
        self._check_channels(image_cf, "slice")
        labels = _as_labels(self.predict_logits(image_cf))
        return SliceResult(labels, 1000.0 * (time.perf_counter() - t0))


def output_targets(inputs: Sequence[Path], src: Path, output: Path) -> List[Path]:
    """Where each input's mask goes: ``output`` itself for one input and a file name, else ``output/<mask_name>``."""
    from .predict_files import mask_name

    single = len(inputs) == 1 and not (src.is_dir() and inputs[0] != src) and output.suffix != ""
    return [output] if single else [output / mask_name(f) for f in inputs]


def infer_path(onnx_path, input, output, overwrite: bool = False, segmenter: Optional[OrtSegmenter] = None,
               on_result=None) -> List[InferResult]:
    """Segment a 2D image, a folder of images, a volume or a DICOM series folder; write masks with the
    source geometry. No file is overwritten unless ``overwrite``; all targets are checked first."""
    from ..io.image_io import read_image, write_mask
    from .predict_files import list_inputs

    seg = segmenter or OrtSegmenter(onnx_path)
    src, out = Path(input), Path(output)
    inputs = list_inputs(src)
    targets = output_targets(inputs, src, out)
    seen: Dict[Path, Path] = {}
    for f, t in zip(inputs, targets):
        if t in seen:
            raise FileExistsError(f"{seen[t]} and {f} would both be written to {t}; segment them separately")
        seen[t] = f
    if not overwrite:
        clash = [str(t) for t in targets if t.exists()]
        if clash:
            raise FileExistsError(f"{', '.join(clash[:5])}{' ...' if len(clash) > 5 else ''} exist(s); "
                                  "pass overwrite=True (--overwrite) to replace")
    results = []
    for f, t in zip(inputs, targets):
        img = read_image(f)
        res = seg.segment(img)
        write_mask(res.labels, t, reference=img, overwrite=overwrite)
        r = InferResult(f, t, tuple(res.labels.shape), sorted(int(v) for v in np.unique(res.labels)), res.seconds,
                        res.ms_per_slice)
        results.append(r)
        if on_result is not None:
            on_result(r)
    return results
