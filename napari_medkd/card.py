"""The model card: what a trained or exported model is, and what inference needs to know about it.

One :class:`ModelCard` is written by the training engine, kept in the checkpoint's ``"meta"`` entry
(:meth:`ModelCard.to_checkpoint` / :meth:`ModelCard.from_checkpoint`, JSON) and in an exported
``.onnx`` file's ``metadata_props`` (:meth:`ModelCard.to_onnx_props` / :meth:`ModelCard.from_onnx_props`,
string values under the keys of :data:`ONNX_KEYS`). Everything else reads its typed fields.

``preprocess`` is the dict form of ``data.prepare.PreprocessConfig``; callers build the config with
``PreprocessConfig.from_dict(card.preprocess)`` (this module sits below ``data/`` and does not import it).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

# the ONNX property keys ("quantization" only in int8 copies; files exported before the card lack
# "teacher" and "method" and still load: only ONNX_REQUIRED must be there)
ONNX_KEYS = ("medkd_version", "model_name", "class_names", "in_channels", "num_classes", "model_dims",
             "preprocess", "spacing", "size_divisor", "source_run", "data_root", "exporter", "teacher", "method",
             "teacher_info")
ONNX_REQUIRED = ("medkd_version", "class_names", "in_channels", "num_classes", "model_dims", "preprocess",
                 "size_divisor")
CHECKPOINT_REQUIRED = ("model_name", "in_channels", "num_classes")


@dataclass
class ModelCard:
    model_name: str
    in_channels: int
    num_classes: int
    class_names: Dict[int, str] = field(default_factory=dict)
    preprocess: Dict[str, Any] = field(default_factory=dict)   # PreprocessConfig.to_dict()
    model_dims: Optional[int] = None        # 2 or 3; None only in checkpoints written before it was stored
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    spacing: Optional[List[float]] = None   # of the first training case, after preprocessing
    data_root: str = ""                     # the data set it was trained on
    size_divisor: Optional[int] = None      # set by the ONNX export
    teacher: str = ""                       # the teacher run it was distilled from, or ""
    method: str = ""                        # the distillation method, or ""
    teacher_info: Dict[str, Any] = field(default_factory=dict)  # the teacher's provenance: format, sha256,
    #                                         preprocessing, classes, licence (teachers.Teacher.provenance)
    source_run: str = ""                    # the run folder an ONNX file was exported from
    medkd_version: str = ""
    exporter: str = ""                      # "dynamo" | "torchscript" (ONNX only)
    quantization: Optional[str] = None      # how an int8 copy was quantised
    extra: Dict[str, Any] = field(default_factory=dict)   # unknown entries, kept for the round trip

    def __post_init__(self) -> None:
        self.class_names = {int(k): str(v) for k, v in (self.class_names or {}).items()}

    # -- checkpoint ("meta" entry, JSON) -----------------------------------------------------------
    def to_checkpoint(self) -> str:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return json.dumps({**self.extra, **d})

    @classmethod
    def from_checkpoint(cls, text: str) -> "ModelCard":
        """Read a checkpoint's ``"meta"`` JSON (also the plain dicts older checkpoints hold)."""
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError(f"the checkpoint's model description is a {type(d).__name__}, not a JSON object")
        missing = [k for k in CHECKPOINT_REQUIRED if k not in d]
        if missing:
            raise ValueError(f"the checkpoint's model description lacks {', '.join(map(repr, missing))}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        card = cls(**known, extra={k: v for k, v in d.items() if k not in names})
        card.in_channels, card.num_classes = int(card.in_channels), int(card.num_classes)
        card.model_kwargs = dict(card.model_kwargs or {})
        if card.model_dims is not None:
            card.model_dims = int(card.model_dims)
        card.data_root = "" if card.data_root is None else str(card.data_root)
        return card

    # -- ONNX metadata_props (all strings) ---------------------------------------------------------
    def to_onnx_props(self) -> Dict[str, str]:
        if self.size_divisor is None:
            raise ValueError("the model card has no size_divisor; it is set when the model is exported")
        props = {
            "medkd_version": self.medkd_version, "model_name": str(self.model_name),
            "class_names": json.dumps({str(k): v for k, v in self.class_names.items()}),
            "in_channels": str(int(self.in_channels)), "num_classes": str(int(self.num_classes)),
            "model_dims": str(int(self.model_dims or 2)), "preprocess": json.dumps(self.preprocess),
            "spacing": json.dumps(self.spacing), "size_divisor": str(int(self.size_divisor)),
            "source_run": self.source_run, "data_root": str(self.data_root or ""), "exporter": self.exporter,
            "teacher": self.teacher, "method": self.method, "teacher_info": json.dumps(self.teacher_info or {}),
        }
        if self.quantization is not None:
            props["quantization"] = self.quantization
        return props

    @classmethod
    def from_onnx_props(cls, props: Mapping[str, str]) -> "ModelCard":
        """Read the card from an ONNX file's ``metadata_props``; other properties are ignored."""
        missing = [k for k in ONNX_REQUIRED if k not in props]
        if missing:
            raise ValueError(f"the ONNX metadata lacks the {', '.join(map(repr, missing))} "
                             f"propert{'y' if len(missing) == 1 else 'ies'}")
        return cls(
            model_name=props.get("model_name", "?"), in_channels=int(props["in_channels"]),
            num_classes=int(props["num_classes"]), class_names=json.loads(props["class_names"]),
            preprocess=json.loads(props["preprocess"]), model_dims=int(props["model_dims"]),
            spacing=json.loads(props.get("spacing", "null")), data_root=props.get("data_root", ""),
            size_divisor=int(props["size_divisor"]), source_run=props.get("source_run", ""),
            medkd_version=props["medkd_version"], exporter=props.get("exporter", ""),
            teacher=props.get("teacher", ""), method=props.get("method", ""), quantization=props.get("quantization"),
            teacher_info=json.loads(props.get("teacher_info") or "{}"))
