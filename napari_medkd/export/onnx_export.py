"""Export a trained student to ONE self-contained ``.onnx`` file, checked against torch before it is kept.

The file carries what inference needs in its ``metadata_props``: the run's :class:`~napari_medkd.card.ModelCard`
(``card.to_onnx_props()``, keys :data:`METADATA_KEYS`), so
``napari_medkd.inference.ort_infer.OrtSegmenter`` rebuilds the training preprocessing
(``PreprocessConfig`` + ``train.data.prepare_image``) from the file alone.

The check runs onnxruntime and torch on real, preprocessed images (by default up to 3 test images
of the run's data set) and refuses the file (``ExportCheckError``, nothing left behind) when the
largest logit difference exceeds ``atol`` or the argmax masks agree on less than ``min_agreement``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..card import ONNX_KEYS, ModelCard
from ..io.atomic import atomic_path, is_write_error, write_error_of

METADATA_KEYS = ONNX_KEYS
EXPORTERS = ("auto", "dynamo", "torchscript")


class ExportCheckError(RuntimeError):
    """The exported file failed the ONNX checker or the onnxruntime-vs-torch parity check."""


@dataclass
class ExportReport:
    path: Path
    exporter: str            # "dynamo" | "torchscript"
    max_abs_diff: float
    mask_agreement: float
    n_images: int
    size_mb: float
    seconds: float

    def format(self) -> str:
        head = f"exported {self.path} ({self.size_mb:.2f} MB) with the {self.exporter} exporter in {self.seconds:.1f} s"
        if not self.n_images:
            return head + "; NOT checked against torch (check=False)"
        return (f"{head}; onnxruntime vs torch on {self.n_images} image(s): max |logit diff| "
                f"{self.max_abs_diff:.2e}, mask agreement {100 * self.mask_agreement:.4f} %")


@dataclass
class Sample:
    """One preprocessed input batch ``x`` (B, C, *spatial), padded at the end by ``pad``."""
    name: str
    x: np.ndarray
    pad: Tuple[Tuple[int, int], ...]
    label: Optional[np.ndarray] = None   # (B, *spatial unpadded) int, when known


# -- samples ---------------------------------------------------------------------------------------
def _center_crop(arr: np.ndarray, n_spatial: int, max_size: int) -> np.ndarray:
    sl = [slice(None)] * (arr.ndim - n_spatial)
    for s in arr.shape[arr.ndim - n_spatial:]:
        c = min(s, max_size)
        sl.append(slice((s - c) // 2, (s - c) // 2 + c))
    return arr[tuple(sl)]


def _to_sample(name: str, image: np.ndarray, label: Optional[np.ndarray], model_dims: int, div: int,
               slice_axis: int, n_slices: int = 3) -> Sample:
    from ..data.prepare import pad_to_multiple

    img_dims = image.ndim - 1
    if model_dims == 2 and img_dims == 3:  # a few slices of the volume
        n = image.shape[1 + slice_axis]
        idx = sorted({int(round(f * (n - 1))) for f in np.linspace(0.25, 0.75, n_slices)})
        x = np.moveaxis(np.take(image, idx, axis=1 + slice_axis), 1 + slice_axis, 0)       # (B, C, a, b)
        label = None if label is None else np.moveaxis(np.take(label, idx, axis=slice_axis), slice_axis, 0)
    elif model_dims == img_dims:
        x = image[None]
        label = None if label is None else label[None]
    else:
        raise ValueError(f"{name}: a {model_dims}D model cannot run on a {img_dims}D image")
    max_size = 1024 if model_dims == 2 else 128
    x = _center_crop(x, model_dims, max_size)
    label = None if label is None else _center_crop(label, model_dims, max_size)
    x, pad = pad_to_multiple(np.ascontiguousarray(x, dtype=np.float32), div, n_spatial=model_dims)
    return Sample(name, x, pad, label)


def sample_inputs(card: ModelCard, size_divisor: int, sample_images: Optional[Sequence] = None,
                  n: int = 3, splits: Sequence[str] = ("test", "train")) -> List[Sample]:
    """Real preprocessed inputs: ``sample_images`` (paths; no labels), or up to ``n`` cases of
    ``card.data_root`` from the first of ``splits`` that has any, with their labels.
    Volumes give a few slices for 2D models."""
    from ..data.datasets import load_dataset
    from ..data.prepare import PreprocessConfig
    from ..io.image_io import read_image
    from ..data.prepare import prepare_case, prepare_image

    pcfg = PreprocessConfig.from_dict(card.preprocess)
    dims = int(card.model_dims or 2)
    out: List[Sample] = []
    if sample_images:
        for p in sample_images:
            image, _ = prepare_image(read_image(p), pcfg)
            out.append(_to_sample(str(p), image, None, dims, size_divisor, pcfg.slice_axis))
        return out
    root = card.data_root
    if not root or not Path(root).exists():
        raise ExportCheckError(f"no sample images: the run's data set {root!r} is not available; "
                               "pass sample_images=[...] (real images) for the parity check")
    spec = load_dataset(root)
    cases = next((c for c in (spec.split(name) for name in splits) if c), spec.cases)
    for case in cases[:n]:
        prep = prepare_case(case, pcfg)
        out.append(_to_sample(str(case.image), prep.image, prep.label, dims, size_divisor, pcfg.slice_axis))
    if not out:
        raise ExportCheckError(f"no sample images found in {root}")
    return out


# -- export ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints, warnings and registration log lines."""
    names = ["torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export", "torch._dynamo",
             "onnxscript"]
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, lv in levels.items():
            logging.getLogger(n).setLevel(lv)


def _example(model, in_channels: int):
    import torch

    div, dims = int(model.size_divisor), int(getattr(model, "spatial_dims", 2))
    sizes = (2, 3, 4) if dims == 3 else (3, 4)  # distinct sizes and batch > 1, so none is specialised
    param = next(model.parameters(), None)
    device = param.device if param is not None else "cpu"
    return torch.randn((2, in_channels) + tuple(div * s for s in sizes), device=device), div, dims


def _export_dynamo(model, x, div: int, dims: int, path: str, opset: int) -> None:
    import torch

    Dim = torch.export.Dim
    shapes: Dict[int, Any] = {0: Dim("batch", min=1, max=4096)}
    for ax, name in zip(range(2, 2 + dims), ("depth", "height", "width")[-dims:]):
        shapes[ax] = div * Dim(f"{name}_over_{div}", min=1, max=8192)   # padded sizes are multiples of div
    with _quiet():
        torch.onnx.export(model, (x,), path, dynamo=True, external_data=False, dynamic_shapes=(shapes,),
                          opset_version=opset, input_names=["image"], output_names=["logits"], verbose=False)


def _export_torchscript(model, x, dims: int, path: str, opset: int) -> None:
    import torch

    axes = {0: "batch", **{2 + i: n for i, n in enumerate(("depth", "height", "width")[-dims:])}}
    with _quiet():
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=opset, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": axes, "logits": axes})


def parity(model, onnx_path: str, samples: Sequence[Sample]) -> Tuple[float, float]:
    """(largest |torch - onnxruntime| logit, fraction of equal argmax voxels) over ``samples``."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    param = next(model.parameters(), None)
    device = param.device if param is not None else "cpu"
    max_diff, equal, total = 0.0, 0, 0
    with torch.inference_mode():
        for s in samples:
            ref = model(torch.from_numpy(s.x).to(device)).float().cpu().numpy()
            got = sess.run(None, {name: s.x})[0]
            if got.shape != ref.shape:
                raise ExportCheckError(f"{s.name}: onnxruntime gave logits of shape {got.shape}, torch {ref.shape}")
            max_diff = max(max_diff, float(np.nanmax(np.abs(ref - got))) if np.isfinite(got).all() else np.inf)
            equal += int((ref.argmax(1) == got.argmax(1)).sum())
            total += ref.shape[0] * int(np.prod(ref.shape[2:]))
    return max_diff, equal / max(total, 1)


def _check_target(out: Path, exporter: str, overwrite: bool) -> None:
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got '{exporter}'")
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"{out}: the output file must end in .onnx")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")


def _os_error_behind(exc: BaseException, tmp: str) -> Optional[OSError]:
    """The ``OSError`` behind an exporter's failure: in its chain of causes, or (a full disk, a file-size
    limit the exporter reported as something else) what a probe write to ``tmp`` meets now."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        if is_write_error(seen, (tmp,)):
            return seen  # type: ignore[return-value]
        seen = seen.__cause__ or seen.__context__
    return write_error_of(tmp)


def _check_writable(tmp: str) -> None:
    """Fail in a moment, not after a minute of exporting, when the output cannot be written at all."""
    problem = write_error_of(tmp)
    if problem is not None:
        raise problem  # atomic_path names the output file
    os.truncate(tmp, 0)


def _run_exporters(model, x, div: int, dims: int, tmp: str, opset: int, exporter: str, model_name) -> str:
    """Export with ``exporter`` (``auto``: dynamo, then TorchScript); the name of the one that worked.
    An ``OSError`` (no space left, a file-size limit) ends the export at once: the next exporter would
    meet it too."""
    errors = []
    _check_writable(tmp)
    for name in (("dynamo", "torchscript") if exporter == "auto" else (exporter,)):
        try:
            if name == "dynamo":
                _export_dynamo(model, x, div, dims, tmp, opset)
            else:
                _export_torchscript(model, x, dims, tmp, opset)
            return name
        except Exception as exc:  # noqa: BLE001 - fall back, report both if all fail
            os_error = _os_error_behind(exc, tmp)
            if os_error is not None:
                raise os_error from exc
            errors.append(f"{name}: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}")
    raise ExportCheckError(f"could not export {model_name} to ONNX: " + "; ".join(errors))


def _write_card(tmp: str, out: Path, card: ModelCard, div: int, source_run: str, used: str) -> None:
    """Store the card (with the export's facts) in the file's ``metadata_props``; run the ONNX checker."""
    import onnx

    from .. import __version__

    proto = onnx.load(tmp)
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(dataclasses.replace(card, size_divisor=div, source_run=source_run,
                                     exporter=used, medkd_version=__version__).to_onnx_props())
    onnx.helper.set_model_props(proto, props)
    onnx.save_model(proto, tmp, save_as_external_data=False)
    try:
        onnx.checker.check_model(tmp, full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise ExportCheckError(f"{out}: the exported graph fails the ONNX checker: {exc}") from exc


def _checked_parity(model, tmp: str, out: Path, samples: Sequence[Sample], atol: float,
                    min_agreement: float) -> Tuple[float, float]:
    max_diff, agreement = parity(model, tmp, samples) if samples else (float("nan"), float("nan"))
    if samples and not (max_diff <= atol and agreement >= min_agreement):
        raise ExportCheckError(
            f"{out}: onnxruntime and torch disagree on {len(samples)} real image(s): max |logit diff| "
            f"{max_diff:.3g} (allowed {atol:g}), mask agreement {agreement:.6f} (needed {min_agreement}); "
            "the file was not written")
    return max_diff, agreement


def export_onnx(run_dir_or_loaded, out_path, *, opset: int = 18, check: bool = True,
                sample_images: Optional[Sequence] = None, overwrite: bool = False, atol: float = 1e-4,
                min_agreement: float = 0.9999, exporter: str = "auto") -> ExportReport:
    """Export the run's model (``load_run_model``) to ``out_path`` (a single ``.onnx`` file)."""
    from ..train.run_model import LoadedModel, load_run_model

    t0 = time.perf_counter()
    out = Path(out_path)
    _check_target(out, exporter, overwrite)
    lm = run_dir_or_loaded if isinstance(run_dir_or_loaded, LoadedModel) else load_run_model(run_dir_or_loaded)
    model, card = lm.model, lm.card
    was_training = model.training
    model.eval()
    try:
        with atomic_path(out, overwrite=overwrite) as tmp:
            x, div, dims = _example(model, int(card.in_channels))
            samples = sample_inputs(card, div, sample_images) if check else []
            used = _run_exporters(model, x, div, dims, tmp, opset, exporter, card.model_name)
            _write_card(tmp, out, card, div, str(lm.checkpoint.parent), used)
            max_diff, agreement = _checked_parity(model, tmp, out, samples, atol, min_agreement)
    finally:
        model.train(was_training)
    return ExportReport(out, used, max_diff, agreement, len(samples), out.stat().st_size / 2 ** 20,
                        time.perf_counter() - t0)
