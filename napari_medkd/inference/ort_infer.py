"""Segment images, folders, volumes and DICOM series with an exported student in onnxruntime.

The ONNX file's metadata (written by ``export.onnx_export``) gives the preprocessing; images go
through ``train.data.prepare_image`` (the training code path), so inference sees what training saw.
Prediction is the grid predictor of ``models.predict`` (the one torch uses too) around the session:
whole 2D images of up to 1024 x 1024 pixels (any shape: a 1 x 5000 strip too) padded centred to the size
divisor, larger ones tiled with overlap and Gaussian blending; volumes slice by slice in batches; 3D
models: 3D sliding window.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..card import ModelCard
from ..data.prepare import (PreprocessConfig, labels_to_source_grid, plane_to_source_grid, resample_to_spacing,
                            work_slice_index, zscore_apply, zscore_stats)
from ..io.image import MedicalImage
from ..models.predict import GridPredictor


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

    def grid(self, batch_size: int = 8) -> GridPredictor:
        """The grid predictor (slicing, padding, sliding windows) around :meth:`run`."""
        return GridPredictor(self.run, self.model_dims, self.size_divisor, self.slice_axis, batch_size)

    def _check_channels(self, image_cf: np.ndarray, what: str = "image") -> None:
        if image_cf.ndim - 1 not in (2, 3):
            raise ValueError(f"expected a channel-first 2D or 3D {what}, got shape {image_cf.shape}")
        if image_cf.shape[0] != self.in_channels:
            raise ValueError(f"{self.path.name} expects {self.in_channels} input channel(s), but the {what} has "
                             f"{image_cf.shape[0]} (shape {image_cf.shape}); check the image type (grey vs RGB)")
        if self.model_dims == 3 and image_cf.ndim == 3:
            raise ValueError(f"{self.path.name} is a 3D model; it cannot segment a 2D image")

    def predict_logits(self, image_cf: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Logits ``(K, *spatial)`` for a preprocessed channel-first image ``(C, *spatial)``."""
        self._check_channels(image_cf)
        return self.grid(batch_size).logits(image_cf)

    def predict_labels(self, image_cf: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Labels ``(*spatial)`` of a preprocessed image; a 2D model on a volume takes the argmax per
        batch of slices, so the whole-volume logits are never held in memory."""
        self._check_channels(image_cf)
        return self.grid(batch_size).labels(image_cf)

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
                c["labels"] = labels_to_source_grid(self.predict_labels(image_cf), work, img)
            labels = c["labels"] if img.ndim_spatial == 2 else np.take(c["labels"], index, axis=self.slice_axis)
            return SliceResult(labels, 1000.0 * (time.perf_counter() - t0))
        ax = self.slice_axis
        n_src, n_work = np.shape(img.array)[ax], image_cf.shape[1 + ax]
        if not 0 <= index < n_src:
            raise IndexError(f"slice {index} is outside 0..{n_src - 1}")
        sitk_ax = img.ndim_spatial - 1 - ax           # spacing is in SimpleITK (x, y, z) order
        j = index if work is img else work_slice_index(index, img.spacing[sitk_ax], work.spacing[sitk_ax],
                                                       n_work, clip=False)
        if j < 0:  # beyond the working grid: the whole-volume mask is empty there too
            shape = [s for i, s in enumerate(np.shape(img.array)[:3]) if i != ax]
            return SliceResult(np.zeros(shape, np.uint8 if self.num_classes <= 256 else np.uint16),
                               1000.0 * (time.perf_counter() - t0))
        labels = self.predict_labels(np.take(image_cf, j, axis=1 + ax))
        labels = plane_to_source_grid(labels, work, img, ax)
        return SliceResult(labels, 1000.0 * (time.perf_counter() - t0))

    def normalisation_stats(self, img: MedicalImage) -> Optional[IntensityStats]:
        """Whole-volume MR/grey normalisation statistics for :meth:`segment_slice` (None for CT/RGB):
        exactly those ``prepare_image`` uses (``data.prepare.zscore_stats``, same resampling)."""
        if self.pcfg.modality not in ("MR", "grey"):
            return None
        if self.pcfg.target_spacing and img.ndim_spatial == len(self.pcfg.target_spacing):
            img = resample_to_spacing(img, self.pcfg.target_spacing, is_label=False)  # as prepare_image does
        arr = np.asarray(img.array)
        if arr.ndim == img.ndim_spatial + 1:
            arr = arr[..., :3].astype(np.float32).mean(axis=-1)  # as preprocess_image does
        return IntensityStats(*zscore_stats(arr, self.pcfg.percentiles))

    def segment_slice(self, slice_2d_raw: np.ndarray, stats: Optional[IntensityStats] = None) -> SliceResult:
        """Segment one raw 2D slice (grey ``(y, x)`` or RGB ``(y, x, 3)``), taken to be at the model's spacing.

        Without ``stats`` the slice is normalised alone (exact for 2D-image models); with ``stats`` from
        :meth:`normalisation_stats` of its volume it is normalised as the whole volume is.
        """
        from ..data.prepare import prepare_image

        t0 = time.perf_counter()
        raw = np.asarray(slice_2d_raw)
        if self.model_dims != 2:
            raise ValueError(f"{self.path.name} is a 3D model; segment whole volumes with segment()")
        if stats is not None and self.pcfg.modality in ("MR", "grey"):
            a = raw[..., :3].astype(np.float32).mean(-1) if raw.ndim == 3 else raw
            image_cf = zscore_apply(a, (stats.lo, stats.hi, stats.mean, stats.std))[None]
        else:
            img = MedicalImage(raw, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
            image_cf, _ = prepare_image(img, PreprocessConfig.from_dict({**self.pcfg.to_dict(), "target_spacing": None}))
        self._check_channels(image_cf, "slice")
        labels = self.predict_labels(image_cf)
        return SliceResult(labels, 1000.0 * (time.perf_counter() - t0))


def infer_path(onnx_path, input, output, overwrite: bool = False, segmenter: Optional[OrtSegmenter] = None,
               on_result=None, series: Optional[str] = None, skip_existing: bool = False) -> List[InferResult]:
    """Segment a 2D image, a folder of images, a volume or a DICOM series folder (``series``: which
    series, by UID or index); write masks with the source geometry. All targets are checked first: none
    is overwritten unless ``overwrite``, existing ones are kept with ``skip_existing``. Every file of a
    folder is tried; :class:`~napari_medkd.inference.batch.BatchError` lists the failures at the end."""
    return infer_batch(onnx_path, input, output, overwrite, segmenter, on_result, series, skip_existing).results


def infer_batch(onnx_path, input, output, overwrite: bool = False, segmenter: Optional[OrtSegmenter] = None,
                on_result=None, series: Optional[str] = None, skip_existing: bool = False):
    """:func:`infer_path`, returning the batch's :class:`~napari_medkd.inference.batch.BatchReport`."""
    from ..io.image_io import read_image, write_mask
    from .batch import run_batch

    seg = segmenter or OrtSegmenter(onnx_path)

    def one(f: Path, t: Path) -> InferResult:
        img = read_image(f, series_uid=series)
        res = seg.segment(img)
        write_mask(res.labels, t, reference=img, overwrite=overwrite)
        return InferResult(f, t, tuple(res.labels.shape), sorted(int(v) for v in np.unique(res.labels)),
                           res.seconds, res.ms_per_slice)

    return run_batch(Path(input), Path(output), one, overwrite=overwrite, skip_existing=skip_existing,
                     on_result=on_result)
