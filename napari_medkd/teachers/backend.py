"""How a frozen torch teacher runs in the distillation step (``distill.teacher_backend``).

The teacher's forward is most of a KD step's cost (the student's forward and backward are the rest), so it
can run through a faster backend than the torch module it came in:

- ``torch``: the module as it is (every method; GKD's terms need it, they call ``encode``/``decode``);
- ``torch_bf16``: the module under CPU bf16 autocast, channels-last (:class:`Bf16Net`);
- ``onnxruntime``: the module exported to ONNX in memory (TorchScript exporter, dynamic batch and sizes) and
  run by onnxruntime in fp32, its taps extra graph outputs (``onnx_file.OnnxNet``, found by module scope,
  ``onnx_graph.module_tensor``);
- ``onnxruntime_int8``: that graph statically quantised to int8 (QDQ, per-channel weights), calibrated on
  real training batches;
- ``cache``: the teacher's outputs read from the on-disk cache (``distill.cache_teacher``; output-only
  methods), so no teacher forward in the step at all;
- ``auto``: what ``benchmarks/bench_kd_step.py`` measured fastest with the torch teacher's masks (:func:`choose`):
  bf16 where the CPU has native bf16, else onnxruntime fp32.

A converted teacher is kept only after a check on real training batches (:func:`parity`): fp32 within
:data:`FP32_TOL` (relative to the largest value) on the logits and every tap; bf16 and int8, whose numbers
differ by design, a mean foreground Dice between their masks and the torch teacher's of at least
:data:`MIN_DICE`. A teacher that fails is run by the next backend in the list (``auto``: onnxruntime fp32)
or in torch, and the run's events say why.
"""
from __future__ import annotations

import copy
import io
import os
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

BACKENDS = ("auto", "torch", "torch_bf16", "onnxruntime", "onnxruntime_int8", "cache")
FP32_TOL = 1e-4      # max |fast - torch| / max |torch|, logits and every tap
MIN_DICE = 0.95      # mean foreground Dice of the fast teacher's masks against torch's (bf16, int8)


class Bf16Net(nn.Module):
    """A torch teacher run under CPU bf16 autocast on channels-last tensors (oneDNN's bf16 kernels, AMX where
    the CPU has it), on its own copy of the weights; logits in float32, its taps where the module has them."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.dims = int(getattr(net, "spatial_dims", 2))
        self.layout = torch.channels_last_3d if self.dims == 3 else torch.channels_last
        self.net = copy.deepcopy(net).to(memory_format=self.layout)
        self.in_channels, self.num_classes = net.in_channels, net.num_classes
        self.spatial_dims, self.size_divisor = self.dims, int(net.size_divisor)

    def tap_paths(self) -> Dict[str, str]:
        return {k: (f"net.{v}" if v else "net") for k, v in self.net.tap_paths().items() if k != "logits"} | {"logits": ""}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.net(x.contiguous(memory_format=self.layout)).float().contiguous()


def export_bytes(model: nn.Module, in_channels: int, opset: int = 17) -> bytes:
    """``model`` as a serialised ONNX graph (TorchScript exporter: module scopes in node names; dynamic batch
    and spatial sizes, traced at two distinct multiples of its size divisor). Torch's random state is kept."""
    div, dims = int(model.size_divisor), int(getattr(model, "spatial_dims", 2))
    sizes = (2, 3, 4)[-dims:]
    axes = {0: "batch", **{2 + i: n for i, n in enumerate(("depth", "height", "width")[-dims:])}}
    buf = io.BytesIO()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        x = torch.randn((2, int(in_channels)) + tuple(div * s for s in sizes))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=opset, input_names=["image"],
                              output_names=["logits"], dynamic_axes={"image": axes, "logits": axes})
    return buf.getvalue()


def quantize_bytes(data: bytes, batches: Sequence[np.ndarray]) -> bytes:
    """Static int8 QDQ (per-channel weights, MinMax) of a serialised graph, calibrated on ``batches``
    (one sample at a time); its graph outputs (the taps among them) keep their names."""
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader:
        def __init__(self):
            self.items = iter([{"image": b[i:i + 1].astype(np.float32)} for b in batches for i in range(len(b))])

        def get_next(self):
            return next(self.items, None)

    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
            with open(src, "wb") as fh:
                fh.write(data)
            quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
            with open(dst, "rb") as fh:
                return fh.read()
    finally:
        root.setLevel(level)


def onnx_teacher(model: nn.Module, in_channels: int, *, int8: bool = False,
                 calibration: Sequence[np.ndarray] = (), threads: Optional[int] = None) -> nn.Module:
    """An ``OnnxNet`` running ``model`` (a medkd model or any module with ``tap_paths``) in onnxruntime, every
    tap of the module whose tensor the graph has as an extra output; int8 when asked (calibrated on
    ``calibration``)."""
    import onnx

    from .onnx_file import OnnxNet
    from .onnx_graph import module_tensor, with_outputs

    proto = onnx.load_from_string(export_bytes(model, in_channels))
    taps = {}
    for tap, path in model.tap_paths().items():
        tensor = module_tensor(proto, path) if tap != "logits" and path else None
        if tensor is not None:
            taps[tap] = tensor
    data = with_outputs(proto, list(taps.values()))
    if int8:
        data = quantize_bytes(data, calibration)
    return OnnxNet(data, taps, in_channels, model.num_classes, int(getattr(model, "spatial_dims", 2)),
                   int(model.size_divisor), threads=threads or torch.get_num_threads())


def _fg_dice(a: np.ndarray, b: np.ndarray, k: int) -> float:
    out = []
    for c in range(1, k):
        x, y = a == c, b == c
        s = x.sum() + y.sum()
        if s:
            out.append(2.0 * np.logical_and(x, y).sum() / s)
    return float(np.mean(out)) if out else 1.0


def parity(reference: nn.Module, fast: nn.Module, batches: Sequence[torch.Tensor], taps: Sequence[str]) -> Dict[str, float]:
    """The fast teacher against the torch one on ``batches``: largest relative difference of the logits and
    of each tap (max |d| / max |torch|), share of equal argmax pixels and mean foreground Dice of the masks."""
    from ..models.taps import run_with_taps

    rel: Dict[str, float] = {}
    equal = total = 0
    dice: List[float] = []
    with torch.no_grad():
        for x in batches:
            ref, got = run_with_taps(reference, x, taps), run_with_taps(fast, x, taps)
            for name in list(taps) + ["logits"]:
                r, g = ref[name].float(), got[name].float()
                d = float((r - g).abs().max() / r.abs().max().clamp_min(1e-12)) if r.shape == g.shape else float("inf")
                rel[name] = max(rel.get(name, 0.0), d)
            a, b = ref["logits"].argmax(1).numpy(), got["logits"].argmax(1).numpy()
            equal, total = equal + int((a == b).sum()), total + a.size
            dice.append(_fg_dice(a, b, int(ref["logits"].shape[1])))
    return {"max_rel_diff": max(rel.values()), **{f"rel_diff.{k}": v for k, v in rel.items()},
            "argmax_agreement": equal / max(total, 1), "dice_agreement": float(np.mean(dice))}


def accepted(backend: str, check: Dict[str, float]) -> bool:
    """Whether a converted teacher's ``parity`` is good enough for ``backend``."""
    if backend == "onnxruntime":
        return check["max_rel_diff"] <= FP32_TOL
    return check["dice_agreement"] >= MIN_DICE


def native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16; Linux ``/proc/cpuinfo``), where torch's
    bf16 kernels are fast; elsewhere bf16 autocast on CPU is emulated and slow."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose(requested: str, *, device: str, is_torch: bool, needs_parts: bool, cached: bool,
           bf16: Optional[bool] = None) -> List[str]:
    """The backends to try, in order (the first whose check passes is used; torch when none does).
    ``auto``: the cache when the outputs are cached; the module itself for a teacher that is not a torch module
    (an ONNX file already runs in onnxruntime), on a GPU, or for methods that run its parts; else, as measured
    fastest on 2 CPU cores (``benchmarks/results/kd_step_cpu``), bf16 autocast where the CPU has native bf16
    (``bf16``, default :func:`native_bf16`), then onnxruntime fp32. An explicit choice that cannot apply gives
    torch the same way."""
    if requested not in BACKENDS:
        raise ValueError(f"distill.teacher_backend must be one of {BACKENDS}, got {requested!r}")
    if cached:
        return ["cache"]
    if requested == "cache" or not is_torch or needs_parts or not str(device).startswith("cpu"):
        return ["torch"]
    if requested != "auto":
        return [requested]
    return ["torch_bf16", "onnxruntime"] if (native_bf16() if bf16 is None else bf16) else ["onnxruntime"]


def build_fast(teacher: nn.Module, backends: Sequence[str], batches: Sequence[torch.Tensor], taps: Sequence[str],
               threads: Optional[int] = None) -> Tuple[Optional[nn.Module], Dict[str, object]]:
    """``(module, facts)``: the teacher converted for the first of ``backends`` that converts and whose
    :func:`parity` on ``batches`` is :func:`accepted` (None for ``torch``/``cache``, or when none passes: the
    torch module runs, and ``facts['fallback']`` says why); facts: the backend used, its parity, the seconds."""
    backends = [backends] if isinstance(backends, str) else list(backends)
    failed: List[Dict[str, object]] = []
    told = {}
    for backend in backends:
        told = {"fallback": "; ".join(str(f["why"]) for f in failed), "attempts": failed} if failed else {}
        if backend in ("torch", "cache"):
            return None, {"backend": backend, **told}
        fast, facts = _convert(teacher, backend, batches, taps, threads)
        if fast is not None:
            return fast, {**facts, **told}
        failed.append(facts)
    told = {"fallback": "; ".join(str(f["why"]) for f in failed), "attempts": failed}
    return None, {"backend": "torch", "requested": backends, **told}


def _convert(teacher, backend, batches, taps, threads) -> Tuple[Optional[nn.Module], Dict[str, object]]:
    import time

    t0 = time.time()
    try:
        if backend == "torch_bf16":
            fast: nn.Module = Bf16Net(teacher)
        else:
            fast = onnx_teacher(teacher, int(teacher.in_channels), int8=backend == "onnxruntime_int8",
                                calibration=[b.numpy() for b in batches[:2]], threads=threads)
        missing = sorted(set(taps) - set(fast.tap_paths()))
        if missing:
            raise ValueError(f"the converted teacher has no tap(s) {missing}")
        check = parity(teacher, fast, batches[2:] or batches, taps)
    except Exception as exc:  # noqa: BLE001 - a teacher that does not convert runs in torch
        return None, {"backend": backend, "why": f"{backend}: {type(exc).__name__}: {exc}"[:300]}
    facts = {"backend": backend, "seconds": round(time.time() - t0, 2), **{k: round(v, 8) for k, v in check.items()}}
    if not accepted(backend, check):
        limit = f"max relative difference {FP32_TOL}" if backend == "onnxruntime" else f"Dice agreement {MIN_DICE}"
        return None, {**facts, "why": f"{backend} differs from the torch teacher beyond {limit} on real batches "
                                      f"({check['max_rel_diff']:.3g} relative, Dice {check['dice_agreement']:.4f})"}
    return fast, facts
