"""A torch ``nn.Module`` given in Python as a teacher (the library API).

    from napari_medkd.teachers import register_module
    source = register_module(my_net, "my_net")   # -> "python:my_net", usable as distill.teacher

The module lives in this process only (a run configuration can name it, but another process cannot
open it: a resumed run must register it again under the same name). A medkd model (a ``SegModel``) is used
as it is, with all its taps and its ``encode``/``decode``; any other network sits in a
:class:`~.base.TeacherNet`, its facts from the options (``teacher_preprocess``: ``in_channels``,
``model_dims``, ``class_names``, ``size_divisor`` and the preprocessing) or a probe, its taps the module
paths the user names (``teacher_taps``; ``suggest.suggest_module_taps`` proposes some). The module is
frozen (eval mode, no gradients) when it is opened.
"""
from __future__ import annotations

import re
from typing import Dict, Optional

from torch import nn

from ..registry import TEACHERS
from .base import Teacher, TeacherError, TeacherNet, freeze, module_taps, probe_classes
from .options import TeacherOptions, build_card

PREFIX = "python:"
_LIVE: Dict[str, nn.Module] = {}


def register_module(module: nn.Module, name: Optional[str] = None) -> str:
    """Make ``module`` openable as the teacher ``"python:NAME"`` in this process; returns that string."""
    if not isinstance(module, nn.Module):
        raise TeacherError(f"a Python teacher must be a torch nn.Module, got {type(module).__name__}")
    name = name or f"{type(module).__name__}-{id(module):x}"
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise TeacherError(f"teacher name {name!r}: use letters, digits, '_', '-' and '.'")
    _LIVE[name] = module
    return PREFIX + name


@TEACHERS.register("module", detect=None, order=90, description="a torch nn.Module given in Python")
def open_module(source: str, opts: TeacherOptions) -> Teacher:
    name = str(source)[len(PREFIX):]
    if name not in _LIVE:
        raise TeacherError(f"no Python teacher '{name}' in this process; register it with "
                           f"napari_medkd.teachers.register_module(module, {name!r}) (a resumed run too)")
    net = freeze(_LIVE[name]).to(opts.device or "cpu")
    user = opts.preprocess
    if callable(getattr(net, "tap_paths", None)) and hasattr(net, "size_divisor"):  # a medkd model
        in_ch, dims, div = int(net.in_channels), int(getattr(net, "spatial_dims", 2)), int(net.size_divisor)
        k, module = int(net.num_classes), net
    else:
        in_ch, dims = int(user.get("in_channels", 1)), int(user.get("model_dims", 2))
        div, k = int(user.get("size_divisor", 16)), probe_classes(net, int(user.get("in_channels", 1)), dims)
        module = TeacherNet(net, in_ch, k, dims, div, taps=module_taps(
            net, opts.taps, "napari_medkd.teachers.suggest.suggest_module_taps(net, ...) proposes module paths"))
    card = build_card(type(net).__name__, in_channels=in_ch, num_classes=k, dims=dims, size_divisor=div,
                      class_names=None, preprocess={}, opts=opts)
    notes = [] if user else ["its preprocessing is what teacher_preprocess says (else the student's data settings)"]
    return Teacher("module", str(source), module, card, notes=notes)
