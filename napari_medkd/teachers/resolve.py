"""Open a teacher by what it is: the registered adapter whose ``detect(path)`` accepts it (in their
``order``), a ``python:NAME`` module registered in this process, or an ``nn.Module`` given directly."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

from torch import nn

from ..registry import TEACHERS
from .base import Teacher, TeacherError
from .options import TeacherOptions
from .torch_module import PREFIX, register_module

Source = Union[str, Path, nn.Module, Teacher]


def teacher_kind(source: Union[str, Path]) -> str:
    """The adapter for ``source`` (``run``, ``onnx``, ``torchscript``, ``monai_bundle``, ``module``)."""
    if str(source).startswith(PREFIX):
        return "module"
    path = Path(source).expanduser()
    ranked = sorted(TEACHERS.names(), key=lambda n: TEACHERS.meta(n).get("order", 50))
    for name in ranked:
        detect = TEACHERS.meta(name).get("detect")
        if detect is not None and detect(path):
            return name
    if not path.exists():
        raise TeacherError(f"teacher {path} does not exist")
    kinds = "; ".join(TEACHERS.meta(n).get("description", n) for n in ranked if TEACHERS.meta(n).get("detect"))
    raise TeacherError(f"{path} is not a teacher medkd can open. A teacher is one of: {kinds}")


def open_teacher(source: Source, *, preprocess: Optional[Dict[str, Any]] = None,
                 taps: Optional[Dict[str, str]] = None, device: Any = "cpu", threads: Optional[int] = None) -> Teacher:
    """The :class:`Teacher` of ``source``; ``preprocess`` and ``taps`` are the user's options (see
    ``options.py``), ``device`` where its torch parts run."""
    if isinstance(source, Teacher):
        return source
    if isinstance(source, nn.Module):
        source = register_module(source)
    opts = TeacherOptions(dict(preprocess or {}), dict(taps or {}), device, threads)
    kind = teacher_kind(source)
    target = str(source) if kind == "module" else Path(source).expanduser()
    return TEACHERS.get(kind)(target, opts)


def suggested_taps(teacher: Teacher, side: int = 64) -> Dict[str, str]:
    """Feature taps to offer the user (``--teacher-taps``) for a teacher that has none named: ONNX tensors or
    module paths at H/4, H/2 and the bottleneck, from the shapes of one probe (``suggest.py``)."""
    from .suggest import suggest_module_taps

    dims, in_ch = teacher.dims, int(teacher.card.in_channels)
    if teacher.kind == "onnx":
        import onnx

        from .onnx_graph import suggest_onnx_taps

        return suggest_onnx_taps(onnx.load(teacher.source), in_ch, dims, side)
    net = getattr(teacher.module, "net", None)
    if teacher.kind in ("monai_bundle", "module") and isinstance(net, nn.Module):
        return suggest_module_taps(net, in_ch, dims, side)
    return {}


def open_as_model(source: Source, device: Any = "cpu"):
    """Any teacher source as a ``train.run_model.LoadedModel`` (its module and card), so what predicts with a
    trained model (``inference.predict_files.predict_image``) predicts with a teacher from a file alike."""
    from ..train.run_model import LoadedModel

    t = open_teacher(source, device=device)
    return LoadedModel(t.module, t.card, Path(t.source))
