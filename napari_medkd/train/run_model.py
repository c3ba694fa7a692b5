"""Load a trained model (and what inference needs to know about it) from a run folder."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

from .checkpoint import CheckpointError, load_checkpoint


@dataclass
class LoadedModel:
    model: Any                 # torch SegModel in eval mode
    meta: Dict[str, Any]       # model_name, in_channels, num_classes, class_names, preprocess, model_dims, ...
    checkpoint: Path

    @property
    def class_names(self) -> Dict[int, str]:
        return {int(k): v for k, v in self.meta["class_names"].items()}


def checkpoint_path(run: str | Path, which: str = "best") -> Path:
    run = Path(run)
    if run.is_file():
        return run
    if not run.is_dir():
        raise CheckpointError(f"{run} is neither a run folder nor a checkpoint file")
    for name in (f"{which}.pt", "best.pt", "last.pt"):
        if (run / name).exists():
            return run / name
    raise CheckpointError(f"run folder {run} holds no checkpoint (best.pt or last.pt); has the run started?")


def load_run_model(run: str | Path, which: str = "best", device: Any = "cpu") -> LoadedModel:
    import torch

    from ..models.factory import build_model

    path = checkpoint_path(run, which)
    state = load_checkpoint(path, map_location="cpu")
    try:
        meta = json.loads(state["meta"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} has no model description ('meta'); was it written by napari-medkd?") from exc
    model = build_model(meta["model_name"], in_channels=meta["in_channels"], num_classes=meta["num_classes"],
                        **meta.get("model_kwargs", {}))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model '{meta['model_name']}': {exc}") from exc
    model.to(torch.device(device)).eval()
    return LoadedModel(model, meta, path)
