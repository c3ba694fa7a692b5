"""The model card the training engine writes into every checkpoint of a run."""
from __future__ import annotations

from typing import Any, Dict, Sequence

from .. import __version__
from ..card import ModelCard
from ..config import RunConfig


def model_card(cfg: RunConfig, class_names: Dict[int, str], preprocess: Dict[str, Any], in_channels: int,
               num_classes: int, model_dims: int, spacing: Sequence[float], distilled: bool) -> ModelCard:
    """The card of a model trained with ``cfg``; ``distilled``: trained by a distillation task, whose
    teacher and method ``cfg.distill`` names (empty when it names none)."""
    return ModelCard(
        model_name=cfg.model.name, model_kwargs=cfg.model.kwargs, in_channels=in_channels,
        num_classes=num_classes, class_names=class_names, preprocess=preprocess, model_dims=model_dims,
        data_root=str(cfg.data.root), spacing=list(spacing), medkd_version=__version__,
        teacher=str(cfg.distill.teacher or "") if distilled else "",
        method=str(cfg.distill.method or "") if distilled else "")
