"""A TorchScript file (``torch.jit.save``) as a teacher.

Its card comes from the archive's extra files: ``medkd_card.json`` (``export.torchscript_export`` writes
the run's model card there), else MONAI's ``metadata.json`` and ``inference.json`` (``ckpt_export`` puts
the bundle's configuration there: classes, channels, dimensions, preprocessing, licence), else from a probe
of the network and the user's ``--teacher-preprocess``. A compiled network runs its submodules without
Python, so forward hooks never fire inside it: a TorchScript teacher gives logits only, and only methods
that read the teacher's outputs can use it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import torch

from ..card import ModelCard
from ..registry import TEACHERS
from .base import Teacher, TeacherError, TeacherNet, freeze, probe_classes
from .bundle_config import bundle_preprocess, licence_of, network_format
from .options import TeacherOptions, build_card
from .run_folder import is_torchscript_archive

EXTRA_FILES = ("medkd_card.json", "metadata.json", "inference.json")
NO_TAPS = ("a TorchScript file cannot give intermediate features (forward hooks do not reach compiled code); "
           "--teacher-taps is ignored and only output-only methods can run")


def is_torchscript(path: Path) -> bool:
    return path.is_file() and is_torchscript_archive(path)


def _facts(extra: Dict[str, bytes], net, opts: TeacherOptions, notes: List[str]) -> Dict[str, Any]:
    """in_channels, dims, num_classes, size_divisor, class_names, preprocess (and the base card, if any)."""
    if extra.get("medkd_card.json"):
        card = ModelCard.from_checkpoint(extra["medkd_card.json"].decode("utf-8"))
        return {"in_channels": card.in_channels, "dims": int(card.model_dims or 2), "num_classes": card.num_classes,
                "size_divisor": int(card.size_divisor or 16), "class_names": card.class_names,
                "preprocess": card.preprocess, "base": card, "name": card.model_name}
    meta = json.loads(extra.get("metadata.json") or b"{}")
    facts: Dict[str, Any] = {"size_divisor": 16, "class_names": None, "preprocess": {}, "base": None,
                             **network_format(meta), "licence": licence_of(meta)}
    if extra.get("inference.json"):
        facts["preprocess"], more = bundle_preprocess(json.loads(extra["inference.json"]))
        notes += more
    else:
        notes.append("no model card or bundle configuration inside: preprocessing is what --teacher-preprocess "
                     "says (else the student's data settings are used)")
    user = opts.preprocess
    facts["in_channels"] = int(user.get("in_channels", facts.get("in_channels", 1)))
    facts["dims"] = int(user.get("model_dims", facts.get("dims", 2)))
    if "num_classes" not in facts:
        facts["num_classes"] = probe_classes(net, facts["in_channels"], facts["dims"])
    if "size_divisor" not in user:
        notes.append("input sizes padded to multiples of 16 (--teacher-preprocess size_divisor=N to change)")
    return facts


@TEACHERS.register("torchscript", detect=is_torchscript, order=30, description="a TorchScript file (torch.jit.save)")
def open_torchscript(path: Path, opts: TeacherOptions) -> Teacher:
    extra = {name: "" for name in EXTRA_FILES}
    try:
        net = torch.jit.load(str(path), map_location=torch.device(opts.device or "cpu"), _extra_files=extra)
    except Exception as exc:  # noqa: BLE001
        raise TeacherError(f"{path}: torch cannot load this TorchScript file ({type(exc).__name__}: "
                           f"{str(exc).strip()[:300]})") from exc
    freeze(net)
    notes: List[str] = [NO_TAPS] if opts.taps else []
    f = _facts({k: v for k, v in extra.items() if v}, net, opts, notes)
    card = build_card(f.get("name") or path.name, in_channels=f["in_channels"], num_classes=f["num_classes"],
                      dims=f["dims"], size_divisor=f["size_divisor"], class_names=f["class_names"],
                      preprocess=f["preprocess"], opts=opts, base=f["base"])
    module = TeacherNet(net, card.in_channels, card.num_classes, int(card.model_dims or 2), int(card.size_divisor or 16))
    return Teacher("torchscript", str(path), module, card, files=(path,), notes=notes, licence=f.get("licence", ""))
