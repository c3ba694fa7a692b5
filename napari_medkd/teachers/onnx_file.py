"""An ONNX file as a teacher, run by onnxruntime.

Its card comes from the metadata ``medkd export`` writes (classes, channels, dimensions, size divisor,
preprocessing); a foreign file gives what its graph says (input channels and rank, output channels) and
the user the rest (``--teacher-preprocess``). Feature taps are internal tensors added as extra graph
outputs: the ones the user names (``--teacher-taps enc_mid=TENSOR_OR_MODULE``), else, for a medkd export,
its model's own taps found by module scope (``onnx_graph``). Inside the torch code the session is an
``nn.Module`` (:class:`OnnxNet`) whose taps pass through identity modules, so the distillation task's
forward hooks catch them as they catch a torch teacher's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ..card import ONNX_REQUIRED, ModelCard
from ..registry import TEACHERS
from .base import Teacher, TeacherError
from .onnx_graph import medkd_model_taps, resolve_taps, with_outputs
from .options import TeacherOptions, build_card


class OnnxNet(nn.Module):
    """An onnxruntime session with the face of a medkd model (``forward`` -> logits, ``tap_paths``)."""

    def __init__(self, model_bytes: bytes, taps: Dict[str, str], in_channels: int, num_classes: int,
                 spatial_dims: int, size_divisor: int, threads: Optional[int] = None, device=None):
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if str(device or "cpu").startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(model_bytes, opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.logits_name = self.session.get_outputs()[0].name
        self.tap_tensors = dict(taps)
        self.tap_modules = nn.ModuleDict({name: nn.Identity() for name in taps})
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        self.spatial_dims, self._size_divisor = int(spatial_dims), int(size_divisor)

    @property
    def size_divisor(self) -> int:
        return self._size_divisor

    def tap_paths(self) -> Dict[str, str]:
        return {**{name: f"tap_modules.{name}" for name in self.tap_tensors}, "logits": ""}

    def run(self, batch: np.ndarray, names: Optional[List[str]] = None) -> List[np.ndarray]:
        names = names or [self.logits_name]
        return self.session.run(names, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = list(self.tap_tensors)
        outs = self.run(x.detach().float().cpu().numpy(), [self.logits_name] + [self.tap_tensors[t] for t in taps])
        for name, out in zip(taps, outs[1:]):
            self.tap_modules[name](torch.from_numpy(out).to(x.device))  # the hooks of FeatureTaps see it here
        return torch.from_numpy(outs[0]).to(x.device)


def is_onnx(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".onnx"


def _load(path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise TeacherError(f"{path} is not an ONNX model it can read ({type(exc).__name__}: {exc})") from exc


def _graph_facts(proto, path: Path, opts: TeacherOptions) -> Dict[str, Optional[int]]:
    """Input channels and dimensions from the graph input; output channels from the graph output."""
    shape = proto.graph.input[0].type.tensor_type.shape.dim
    out_shape = proto.graph.output[0].type.tensor_type.shape.dim

    def value(d):
        return int(d.dim_value) if d.HasField("dim_value") else None

    if len(shape) not in (4, 5):
        raise TeacherError(f"{path}: the graph input has {len(shape)} axes; a segmentation teacher takes "
                           "(batch, channels, [depth,] height, width)")
    return {"in_channels": value(shape[1]), "dims": len(shape) - 2,
            "num_classes": value(out_shape[1]) if len(out_shape) > 1 else None}


def _card(proto, path: Path, opts: TeacherOptions, notes: List[str]) -> ModelCard:
    props = {p.key: p.value for p in proto.metadata_props}
    facts = _graph_facts(proto, path, opts)
    if all(k in props for k in ONNX_REQUIRED):
        base = ModelCard.from_onnx_props(props)
        return build_card(base.model_name, in_channels=base.in_channels, num_classes=base.num_classes,
                          dims=int(base.model_dims or facts["dims"]), size_divisor=int(base.size_divisor or 16),
                          class_names=base.class_names, preprocess=base.preprocess, opts=opts, base=base)
    user = opts.preprocess
    in_ch = facts["in_channels"] or user.get("in_channels")
    if not in_ch:
        raise TeacherError(f"{path}: the graph does not fix its input channels; give --teacher-preprocess in_channels=N")
    k = facts["num_classes"] or _probe_classes(proto, int(in_ch), facts["dims"])
    notes.append("an ONNX file without medkd metadata: its preprocessing is what --teacher-preprocess says "
                 "(else the student's data settings are used)")
    if "size_divisor" not in user:
        notes.append("input sizes padded to multiples of 16 (--teacher-preprocess size_divisor=N to change)")
    return build_card(path.name, in_channels=int(in_ch), num_classes=int(k), dims=facts["dims"], size_divisor=16,
                      class_names=None, preprocess={}, opts=opts)


def _probe_classes(proto, in_channels: int, dims: int) -> int:
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros((1, in_channels) + (64,) * dims, np.float32)
    return int(sess.run(None, {sess.get_inputs()[0].name: x})[0].shape[1])


@TEACHERS.register("onnx", detect=is_onnx, order=20, description="an .onnx file (onnxruntime)")
def open_onnx(path: Path, opts: TeacherOptions) -> Teacher:
    proto = _load(path)
    notes: List[str] = []
    card = _card(proto, path, opts, notes)
    taps = resolve_taps(proto, opts.taps) if opts.taps else medkd_model_taps(proto, card.model_name)
    data = with_outputs(proto, list(taps.values())) if taps else proto.SerializeToString()
    try:
        net = OnnxNet(data, taps, card.in_channels, card.num_classes, int(card.model_dims or 2),
                      int(card.size_divisor or 16), threads=opts.threads, device=opts.device)
    except Exception as exc:  # noqa: BLE001
        raise TeacherError(f"{path}: onnxruntime cannot load this model: {str(exc).strip()[:300]}") from exc
    props = {p.key: p.value for p in proto.metadata_props}
    return Teacher("onnx", str(path), net, card, files=(path,), notes=notes,
                   licence=props.get("licence") or props.get("license") or "")
