"""Static int8 quantisation (QDQ, per-channel weights) of an exported model, calibrated on real images.

Static quantisation calibrates activation ranges on real preprocessed images (the training
preprocessing, via ``onnx_export.sample_inputs``); for conv nets it is faster and more faithful than
dynamic quantisation. The result is compared with the fp32 model: mask agreement, Dice of the int8
masks against the fp32 masks and, where labels are known, Dice of both against the ground truth.
There is no accuracy threshold (it is reported); a file onnxruntime cannot load is an error.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..io.atomic import atomic_path

from .onnx_export import Sample, sample_inputs


QUANTIZATION = "int8 static QDQ, per-channel weights, MinMax calibration"   # the card's ``quantization``


class QuantizeError(RuntimeError):
    pass


@dataclass
class QuantReport:
    path: Path
    n_calibration: int
    n_images: int
    mask_agreement: float          # equal argmax voxels, int8 vs fp32
    dice_vs_fp32: float            # mean foreground Dice of int8 masks against fp32 masks
    dice_fp32: Optional[float]     # mean foreground Dice against ground truth (None without labels)
    dice_int8: Optional[float]
    size_mb: float
    fp32_size_mb: float
    seconds: float

    @property
    def dice_change(self) -> Optional[float]:
        return None if self.dice_fp32 is None or self.dice_int8 is None else self.dice_int8 - self.dice_fp32

    def format(self) -> str:
        gt = "" if self.dice_change is None else (
            f"; Dice vs ground truth fp32 {self.dice_fp32:.4f} -> int8 {self.dice_int8:.4f} ({self.dice_change:+.4f})")
        return (f"quantised {self.path} ({self.fp32_size_mb:.2f} -> {self.size_mb:.2f} MB, calibrated on "
                f"{self.n_calibration} input(s), {self.seconds:.1f} s); int8 vs fp32 on {self.n_images} input(s): mask "
                f"agreement {100 * self.mask_agreement:.3f} %, Dice {self.dice_vs_fp32:.4f}{gt}")


class _Reader:
    """onnxruntime CalibrationDataReader over preprocessed samples, one image (or slice) at a time."""

    def __init__(self, input_name: str, samples: Sequence[Sample]):
        self._items = iter([{input_name: s.x[i:i + 1]} for s in samples for i in range(len(s.x))])

    def get_next(self):
        return next(self._items, None)


def _labels(sess, name: str, s: Sample) -> np.ndarray:
    from ..data.prepare import crop_back

    return crop_back(sess.run(None, {name: s.x})[0].argmax(1), s.pad)


def _mean_dice(preds: List[np.ndarray], truths: List[np.ndarray], k: int) -> float:
    from ..metrics.overlap import dice_per_class

    return float(np.mean([dice_per_class(p, t, k).mean() for p, t in zip(preds, truths)]))


def _quantize_static(model_in: str, tmp: str, reader: _Reader) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    root_log = logging.getLogger()
    level = root_log.level
    root_log.setLevel(logging.ERROR)  # the quantiser warns on the root logger about 1-D (norm) weights
    try:
        quantize_static(model_in, tmp, reader, quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, calibration_providers=["CPUExecutionProvider"])
    finally:
        root_log.setLevel(level)


def _copy_props(src: Path, tmp: str, card) -> None:
    """Give the quantised file ``tmp`` the source file's properties and its card, marked as quantised."""
    import onnx

    proto = onnx.load(tmp)
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props})
    props.update(dataclasses.replace(card, quantization=QUANTIZATION).to_onnx_props())
    onnx.helper.set_model_props(proto, props)
    onnx.save_model(proto, tmp, save_as_external_data=False)


def _check_paths(src: Path, out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    if out.resolve() == src.resolve():
        raise ValueError(f"{out}: the quantised copy must not replace its source")


def _quantize_file(src: Path, tmp: str, pre: str, reader: _Reader) -> None:
    """Shape pre-processing (an optimisation only, skipped when it fails), then static quantisation."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), pre, skip_symbolic_shape=True)
        model_in = pre
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation only
        model_in = str(src)
    _quantize_static(model_in, tmp, reader)


def _compare(fp32, tmp: str, out: Path, evals: Sequence[Sample]):
    """(fp32 masks, int8 masks, ground truths) of ``evals``; the int8 file must load in onnxruntime."""
    import onnxruntime as ort

    try:
        q = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise QuantizeError(f"{out}: the quantised model does not load in onnxruntime: {exc}") from exc
    p32, p8, truths = [], [], []
    for s in evals:
        p32.append(_labels(fp32.session, fp32.input_name, s))
        p8.append(_labels(q, fp32.input_name, s))
        truths.append(s.label)
    return p32, p8, truths


def _report(out: Path, src: Path, calib, evals, p32, p8, truths, k: int, t0: float) -> QuantReport:
    agree = float(sum((a == b).sum() for a, b in zip(p32, p8)) / sum(a.size for a in p32))
    have_gt = all(t is not None for t in truths)
    return QuantReport(out, sum(len(s.x) for s in calib), sum(len(s.x) for s in evals), agree,
                       _mean_dice(p8, p32, k), _mean_dice(p32, truths, k) if have_gt else None,
                       _mean_dice(p8, truths, k) if have_gt else None, out.stat().st_size / 2 ** 20,
                       src.stat().st_size / 2 ** 20, time.perf_counter() - t0)


def quantize_int8(onnx_path, out_path, calibration_images: Optional[Sequence] = None, overwrite: bool = False,
                  n_calibration: int = 8, eval_images: Optional[Sequence] = None) -> QuantReport:
    """Write a static int8 QDQ copy of ``onnx_path`` to ``out_path`` and compare it with the fp32 model.

    Calibration: ``calibration_images`` (paths) or up to ``n_calibration`` training images of the data set
    named in the file's metadata; evaluation: ``eval_images`` or up to 3 test images (with labels).
    """
    from ..inference.ort_infer import OrtSegmenter

    t0 = time.perf_counter()
    src, out = Path(onnx_path), Path(out_path)
    _check_paths(src, out, overwrite)
    fp32 = OrtSegmenter(src, providers=["CPUExecutionProvider"])
    card, div = fp32.card, fp32.size_divisor
    calib = sample_inputs(card, div, calibration_images, n=n_calibration, splits=("train", "test"))
    evals = sample_inputs(card, div, eval_images, n=3, splits=("test", "train")) if (
        eval_images or not calibration_images) else calib
    with atomic_path(out, overwrite=overwrite) as tmp:
        pre = tmp + ".pre.onnx"
        try:
            _quantize_file(src, tmp, pre, _Reader(fp32.input_name, calib))
            _copy_props(src, tmp, card)
            p32, p8, truths = _compare(fp32, tmp, out, evals)
        finally:
            for junk in (pre, pre + ".data"):
                if os.path.exists(junk):
                    os.unlink(junk)
    return _report(out, src, calib, evals, p32, p8, truths, fp32.num_classes, t0)
