"""What the user may say about a teacher its file does not: ``--teacher-preprocess KEY=VALUE`` and
``--teacher-taps NAME=TENSOR_OR_MODULE`` (``distill.teacher_preprocess`` / ``distill.teacher_taps``).

Preprocessing keys are those of ``data.prepare.PreprocessConfig`` (``modality``, ``rgb_mode``, ``ct_window``,
``percentiles``, ``target_spacing``, ``slice_axis``); model keys are :data:`~.base.MODEL_KEYS`
(``size_divisor``, ``class_names``, ``model_dims``, ``in_channels``). Values are YAML
(``ct_window=[-160,240]``, ``class_names={0: background, 1: hippocampus}``). What the user gives wins
over what the file says.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

import yaml

from ..card import ModelCard
from ..data.prepare import PreprocessConfig
from .base import MODEL_KEYS, TeacherError

PREPROCESS_KEYS = tuple(f.name for f in dataclasses.fields(PreprocessConfig))


@dataclass
class TeacherOptions:
    preprocess: Dict[str, Any] = field(default_factory=dict)   # PREPROCESS_KEYS and MODEL_KEYS
    taps: Dict[str, str] = field(default_factory=dict)          # tap name -> tensor name or module path
    device: Any = "cpu"
    threads: Optional[int] = None                               # onnxruntime threads (default: torch's)


def parse_pairs(items: Optional[Sequence[str]], what: str) -> Dict[str, Any]:
    """``["modality=MR", "ct_window=[-100, 200]"]`` -> ``{"modality": "MR", "ct_window": [-100, 200]}``."""
    out: Dict[str, Any] = {}
    for item in items or ():
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise TeacherError(f"{what}: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise TeacherError(f"{what}: the value of {key.strip()!r} is not valid YAML ({exc})") from None
    return out


def check_preprocess(options: Dict[str, Any]) -> Dict[str, Any]:
    """The user's teacher options, checked: unknown keys and bad values refused, preprocessing values
    normalised as ``PreprocessConfig`` holds them (only the keys given)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(PREPROCESS_KEYS) - set(MODEL_KEYS))
    if unknown:
        raise TeacherError(f"unknown teacher option(s) {unknown}; known: {sorted(PREPROCESS_KEYS + MODEL_KEYS)}")
    pre = {k: v for k, v in options.items() if k in PREPROCESS_KEYS}
    try:
        full = PreprocessConfig.from_dict(pre).to_dict()
    except (TypeError, ValueError) as exc:
        raise TeacherError(f"teacher preprocessing {pre}: {exc}") from None
    out = {k: full[k] for k in pre}
    for key in ("size_divisor", "model_dims", "in_channels"):
        if key in options:
            try:
                out[key] = int(options[key])
            except (TypeError, ValueError):
                raise TeacherError(f"teacher option {key} must be a whole number, got {options[key]!r}") from None
    if "class_names" in options:
        names = options["class_names"]
        if isinstance(names, (list, tuple)):
            names = dict(enumerate(names))
        if not isinstance(names, dict):
            raise TeacherError(f"teacher option class_names must map label values to names, got {names!r}")
        out["class_names"] = {int(k): str(v) for k, v in names.items()}
    return out


def build_card(name: str, *, in_channels: int, num_classes: int, dims: int, size_divisor: int,
               class_names: Optional[Dict[int, str]], preprocess: Dict[str, Any], opts: TeacherOptions,
               base: Optional[ModelCard] = None) -> ModelCard:
    """The teacher's card: what its file says (``base`` or the facts given), overridden by the user's options."""
    user = check_preprocess(opts.preprocess)
    pre = {**(preprocess or {}), **{k: v for k, v in user.items() if k in PREPROCESS_KEYS}}
    k = int(num_classes)
    names = user.get("class_names") or class_names or {i: ("background" if i == 0 else f"class {i}") for i in range(k)}
    if len(names) != k:
        raise TeacherError(f"{name}: {len(names)} class names {names} for a model with {k} output channels")
    card = base if base is not None else ModelCard(model_name=name, in_channels=int(in_channels), num_classes=k)
    return dataclasses.replace(card, in_channels=int(user.get("in_channels", in_channels)), num_classes=k,
                               class_names=dict(names), preprocess=pre,
                               model_dims=int(user.get("model_dims", dims)),
                               size_divisor=int(user.get("size_divisor", size_divisor)))
