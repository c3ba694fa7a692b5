"""An ONNX graph's internal tensors as feature taps: find them, expose them as extra outputs, suggest them.

- :func:`module_tensor`: the tensor a torch module became: the output of the last node exported inside that
  module's scope. Both torch exporters keep the scope: the TorchScript exporter in node names
  (``/down_2/convs/conv_1/adn/A/LeakyRelu``), the dynamo exporter in the node metadata
  ``pkg.torch.onnx.name_scopes``. So a medkd ONNX file, whose metadata names its model, gives that
  model's taps (``models/*.py`` ``TAPS``), and a user may name a module path instead of a tensor.
- :func:`resolve_taps`: tap name -> tensor name, from tensor names or module paths the user gives.
- :func:`with_outputs`: the model with chosen tensors added as graph outputs (onnxruntime keeps a graph
  output as it is, so no optimisation fuses it away).
- :func:`onnx_records` / :func:`suggest_onnx_taps`: every float tensor's shape for a fixed probe input
  (ONNX shape inference), and the encoder/decoder/bottleneck tensors ``suggest.suggest_from_shapes`` picks.
"""
from __future__ import annotations

import ast
from typing import Dict, List, Optional, Sequence

from .base import TeacherError
from .suggest import Record, suggest_from_shapes

SCOPE_KEY = "pkg.torch.onnx.name_scopes"


def node_scopes(node) -> List[str]:
    """The module paths a node was exported inside (outermost first; "" = the model itself)."""
    for prop in node.metadata_props:
        if prop.key == SCOPE_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
            return [str(s) for s in scopes[:-1]] if isinstance(scopes, list) else []
    if node.name.startswith("/"):
        parts = node.name.strip("/").split("/")[:-1]
        return [".".join(parts[:i]) for i in range(len(parts) + 1)]
    return []


def module_tensor(proto, path: str) -> Optional[str]:
    """The output of the last node exported inside module ``path`` (its output tensor), or None."""
    found = None
    for node in proto.graph.node:
        if path in node_scopes(node) and node.output:
            found = node.output[0]
    return found


def tensor_names(proto) -> List[str]:
    return [o for node in proto.graph.node for o in node.output if o]


def resolve_taps(proto, wanted: Dict[str, str]) -> Dict[str, str]:
    """Tap name -> tensor name for ``wanted`` (each a tensor name or a module path); refuses, naming them,
    the ones that are neither and the names that cannot be a tap."""
    names = set(tensor_names(proto))
    out, bad = {}, []
    for tap, target in wanted.items():
        if not str(tap).isidentifier() or tap == "logits":
            raise TeacherError(f"'{tap}' cannot name a feature tap (use a name such as enc_mid, bottleneck)")
        tensor = target if target in names else module_tensor(proto, str(target))
        if tensor is None:
            bad.append(f"{tap}={target}")
        else:
            out[tap] = tensor
    if bad:
        raise TeacherError(f"the ONNX graph has no tensor or module named in {bad}; `medkd teacher-info FILE` "
                           "lists suggested tensors")
    return out


def with_outputs(proto, tensors: Sequence[str]) -> bytes:
    """The serialised model with ``tensors`` appended to its graph outputs (the original is not changed)."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    have = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            have.add(name)
    return model.SerializeToString()


def onnx_records(proto, in_channels: int, dims: int, side: int = 64) -> List[Record]:
    """(tensor, shape) of every node output in graph order for a ``1 x C x side^dims`` input, by ONNX
    shape inference (tensors whose shape it cannot settle are left out)."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    inp = model.graph.input[0]
    dim_values = [1, int(in_channels)] + [side] * dims
    shape = inp.type.tensor_type.shape
    if len(shape.dim) != len(dim_values):
        raise TeacherError(f"the ONNX input {inp.name} has {len(shape.dim)} axes, expected {len(dim_values)}")
    for d, v in zip(shape.dim, dim_values):
        d.Clear()
        d.dim_value = v
    del model.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - some graphs defeat shape inference: no suggestions then
        raise TeacherError(f"ONNX shape inference failed on this graph ({type(exc).__name__}: {exc}); "
                           "name the tensors yourself (--teacher-taps NAME=TENSOR)") from exc
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and tt.HasField("shape"):
            dims_ = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            if None not in dims_:
                shapes[vi.name] = tuple(int(v) for v in dims_)
    return [(o, shapes[o]) for o in tensor_names(proto) if o in shapes]


def suggest_onnx_taps(proto, in_channels: int, dims: int, side: int = 64) -> Dict[str, str]:
    """Tap name -> tensor name: the encoder/decoder tensors at H/4 (and H/2) and the bottleneck."""
    return suggest_from_shapes(onnx_records(proto, in_channels, dims, side), side, dims)


def medkd_model_taps(proto, model_name: str) -> Dict[str, str]:
    """The taps of the registered medkd model ``model_name`` an ONNX file was exported from: its ``TAPS``
    module paths found in the graph (tap -> tensor); ``{}`` for a model medkd does not know."""
    from ..registry import MODELS

    if not model_name or model_name not in MODELS:
        return {}
    try:
        taps = dict(getattr(MODELS.get(model_name), "TAPS", None) or _built_taps(model_name))
    except Exception:  # noqa: BLE001 - a factory that needs arguments: no default taps
        return {}
    out = {}
    for tap, path in taps.items():
        tensor = module_tensor(proto, path) if path else None
        if tensor is not None:
            out[tap] = tensor
    return out


def _built_taps(model_name: str) -> Dict[str, str]:
    """The ``TAPS`` of a model built with its defaults, without touching torch's random state."""
    import torch

    from ..models.factory import build_model

    with torch.random.fork_rng(devices=[]):
        return dict(build_model(model_name).TAPS)
