"""The ``Teacher`` interface: what distillation needs from a frozen model, whatever file it came in.

A :class:`Teacher` holds

- ``module``: a torch ``nn.Module`` with the face the distillation task already uses for a medkd model:
  ``forward(x) -> logits (B, K, *spatial)`` (a torch tensor on ``x``'s device), ``tap_paths()`` (tap
  name -> module path, read by ``models.taps.FeatureTaps``), ``spatial_dims`` and ``size_divisor``. A
  run folder's teacher is the medkd model itself (today's object, so its numbers do not change); a
  foreign network sits in a :class:`TeacherNet`; an ONNX session in ``onnx_file.OnnxNet``, whose
  chosen internal tensors pass through identity modules so the same forward hooks catch them;
- ``card``: a :class:`~napari_medkd.card.ModelCard` with its classes, input channels, dimensions, size
  divisor and the preprocessing it expects (only the keys known: from its card, ONNX metadata, bundle
  transforms or the user's ``--teacher-preprocess``);
- ``files``: the files that make it (hashed for the output cache and the student's provenance), its
  licence where known, and ``notes``: what was assumed or could not be mapped, for the user to read.

Adapters (one module each in this package, ``@TEACHERS.register(name, detect=..., order=...)``) build
it; ``teachers.open.open_teacher`` picks one by what the path is.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..card import ModelCard

#: keys of ``--teacher-preprocess`` that describe the model rather than its input
MODEL_KEYS = ("size_divisor", "class_names", "model_dims", "in_channels")


class TeacherError(ValueError):
    """A teacher that cannot be opened or cannot do what was asked of it; the message says why and how."""


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def first_output(out: Any, key: Optional[str] = None) -> torch.Tensor:
    """The logits among a network's outputs: a tensor as is, the first of a list/tuple (deep supervision),
    ``out[key]`` (or the first value) of a dict."""
    if isinstance(out, dict):
        return out[key] if key is not None else next(iter(out.values()))
    if isinstance(out, (list, tuple)):
        return out[0]
    return out


def probe_classes(net, in_channels: int, dims: int, side: int = 64, key: Optional[str] = None) -> int:
    """The output channels of a network on one ``1 x in_channels x side^dims`` probe of zeros."""
    param = next(iter(net.parameters()), None)
    x = torch.zeros((1, int(in_channels)) + (side,) * int(dims), device=param.device if param is not None else "cpu")
    with torch.no_grad():
        out = first_output(net(x), key)
    if out.dim() != 2 + int(dims):
        raise TeacherError(f"the network gave an output of shape {tuple(out.shape)} for a {tuple(x.shape)} input; "
                           "a segmentation teacher gives (batch, classes, *spatial)")
    return int(out.shape[1])


def module_taps(net: nn.Module, taps: Dict[str, str], hint: str) -> Dict[str, str]:
    """The user's taps (tap name -> module path) of a torch network, checked: each a module of ``net`` under a
    name that can be a tap; else a refusal naming them, with ``hint`` on where to find module paths."""
    names = dict(net.named_modules())
    bad = {t: p for t, p in taps.items() if p not in names or t == "logits" or not str(t).isidentifier()}
    if bad:
        raise TeacherError(f"no module for the tap(s) {bad} in {type(net).__name__}; {hint}")
    return dict(taps)


class TeacherNet(nn.Module):
    """A foreign torch network (a MONAI bundle's, a TorchScript file's, one given in Python) behind the face of
    a medkd model: ``forward`` gives logits, ``tap_paths`` maps tap names to its modules (``net.<path>``)."""

    def __init__(self, net: nn.Module, in_channels: int, num_classes: int, spatial_dims: int, size_divisor: int,
                 taps: Optional[Dict[str, str]] = None, output_key: Optional[str] = None):
        super().__init__()
        self.net = net
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        self.spatial_dims, self._size_divisor = int(spatial_dims), int(size_divisor)
        self.output_key = output_key
        self._taps = {k: (f"net.{v}" if v else "net") for k, v in (taps or {}).items()}

    @property
    def size_divisor(self) -> int:
        return self._size_divisor

    def tap_paths(self) -> Dict[str, str]:
        return {**self._taps, "logits": ""}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return first_output(self.net(x), self.output_key).float()


def sha256_of(paths: Iterable[Path], chunk: int = 1 << 22) -> str:
    """SHA-256 of the files' contents in order (a folder: its files, sorted by relative path)."""
    h = hashlib.sha256()
    for path in paths:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(chunk), b""):
                    h.update(block)
    return h.hexdigest()


def sha256_of_tensors(module: nn.Module) -> str:
    """SHA-256 of a module's class, parameters and buffers (a teacher given in Python has no file)."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in list(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class Teacher:
    kind: str                                   # the adapter: run | onnx | torchscript | monai_bundle | module
    source: str                                 # what was given: a path, or "python:NAME"
    module: nn.Module
    card: ModelCard
    files: Tuple[Path, ...] = ()
    licence: str = ""
    notes: List[str] = field(default_factory=list)
    content_hash: Optional[str] = None          # set for teachers without files (a module given in Python)

    # -- outputs ------------------------------------------------------------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, *spatial)`` of a preprocessed batch, without gradients, on ``x``'s device."""
        with torch.no_grad():
            return self.module(x)

    def features(self, x: torch.Tensor, names: Sequence[str]) -> Dict[str, torch.Tensor]:
        """The named taps (and ``logits``) of one batch, without gradients."""
        from ..models.taps import run_with_taps

        missing = sorted(set(names) - set(self.taps) - {"logits"})
        if missing:
            raise TeacherError(f"{self.describe()} has no tap(s) {missing}; it has {self.taps or 'none'}")
        with torch.no_grad():
            return run_with_taps(self.module, x, names)

    @property
    def taps(self) -> List[str]:
        """The intermediate features it can give (names of ``models.base.TAP_NAMES`` or the user's)."""
        return sorted(n for n in self.module.tap_paths() if n != "logits")

    @property
    def has_parts(self) -> bool:
        """Whether it splits into ``encode``/``decode`` (a medkd model), as GKD's terms need."""
        return callable(getattr(self.module, "encode", None)) and callable(getattr(self.module, "decode", None))

    @property
    def dims(self) -> int:
        return int(self.card.model_dims or getattr(self.module, "spatial_dims", 2))

    # -- identity -----------------------------------------------------------------------------------
    def describe(self) -> str:
        return f"the {self.kind} teacher {self.source}"

    def file_hash(self) -> str:
        if self.content_hash is None:
            self.content_hash = sha256_of(self.files) if self.files else sha256_of_tensors(self.module)
        return self.content_hash

    def fingerprint(self) -> str:
        """What its outputs depend on besides the input: its files' contents and how it is run."""
        facts = {"kind": self.kind, "sha256": self.file_hash(), "dims": self.dims,
                 "size_divisor": int(getattr(self.module, "size_divisor", 16))}
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()

    def provenance(self) -> Dict[str, Any]:
        """What the student's model card records about it (and its ONNX metadata carries on)."""
        source = self.source if self.source.startswith("python:") else str(Path(self.source).expanduser().resolve())
        return {"format": self.kind, "source": source, "sha256": self.file_hash(),
                "preprocess": dict(self.card.preprocess or {}),
                "class_names": {str(k): v for k, v in self.card.class_names.items()},
                "model": self.card.model_name, "licence": self.licence or "unknown"}

    def summary(self) -> str:
        """Several lines for ``medkd teacher-info`` and the CLI's start."""
        c = self.card
        pre = ", ".join(f"{k}={v}" for k, v in sorted((c.preprocess or {}).items())) or "unknown (give --teacher-preprocess)"
        lines = [f"teacher: {self.kind} {self.source}", f"  classes: {c.class_names}",
                 f"  input: {c.in_channels} channel(s), {self.dims}D, sizes multiple of "
                 f"{getattr(self.module, 'size_divisor', '?')}", f"  preprocessing: {pre}",
                 f"  feature taps: {', '.join(self.taps) or 'none (output-only methods)'}",
                 f"  sha256: {self.file_hash()}", f"  licence: {self.licence or 'unknown'}"]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])
