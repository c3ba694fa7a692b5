"""Capture named intermediate features with forward hooks (torchdistill style).

    with FeatureTaps(model, ["enc_low", "dec_low"]) as taps:
        logits = model(x)
    feats = taps.features          # {"enc_low": Tensor, "dec_low": Tensor, "logits": Tensor}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import torch
from torch import nn


@dataclass(frozen=True)
class TapInfo:
    """What one named tap gives: its channel count and stride (input size / tap size; 1 for logits)."""
    channels: int
    stride: int


def _resolve(model: nn.Module, path: str) -> nn.Module:
    if path == "":
        return model
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise KeyError(f"{type(model).__name__} has no module at '{path}'") from exc


class FeatureTaps:
    """Context manager registering forward hooks on a model's named taps."""

    def __init__(self, model: nn.Module, names: Iterable[str], paths: Optional[Dict[str, str]] = None):
        self.model = model
        self.paths = dict(paths if paths is not None else model.tap_paths())
        self.names = list(dict.fromkeys(names))
        missing = [n for n in self.names if n not in self.paths]
        if missing:
            raise KeyError(f"{type(model).__name__} has no tap(s) {missing}; it has {sorted(self.paths)}")
        self.features: Dict[str, torch.Tensor] = {}
        self._handles = []

    def __enter__(self) -> "FeatureTaps":
        self.features = {}
        for name in self.names:
            module = _resolve(self.model, self.paths[name])
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str):
        def fn(_module, _inp, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            self.features[name] = out

        return fn

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def run_with_taps(model: nn.Module, x: torch.Tensor, names: Iterable[str]) -> Dict[str, torch.Tensor]:
    """Run ``model(x)`` and return the requested taps plus ``logits``."""
    names = list(names)
    with FeatureTaps(model, [n for n in names if n != "logits"]) as taps:
        logits = model(x)
    feats = dict(taps.features)
    feats["logits"] = logits
    return feats
