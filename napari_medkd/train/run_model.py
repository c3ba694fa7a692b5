"""Load a trained model (and what inference needs to know about it) from a run folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict

from ..card import ModelCard
from ..io.paths import not_a_regular_file, path_kind
from .checkpoint import CheckpointError, load_checkpoint


@dataclass
class LoadedModel:
    model: Any                 # torch SegModel in eval mode
    card: ModelCard            # model_name, in_channels, num_classes, class_names, preprocess, model_dims, ...
    checkpoint: Path

    @property
    def class_names(self) -> Dict[int, str]:
        return dict(self.card.class_names)


def checkpoint_path(run: str | Path, which: str = "best") -> Path:
    run = Path(run)
    if run.is_file():
        return run
    if not run.is_dir():
        if path_kind(run) == "missing":
            raise CheckpointError(f"{run} is neither a run folder nor a checkpoint file")
        raise CheckpointError(not_a_regular_file(run, "model"))  # a FIFO, a device, a link to /dev/zero
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
        card = ModelCard.from_checkpoint(state["meta"])
    except (KeyError, TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{path} has no model description ('meta'); was it written by napari-medkd? "
                              f"({type(exc).__name__}: {exc})") from exc
    model = build_model(card.model_name, in_channels=card.in_channels, num_classes=card.num_classes,
                        **card.model_kwargs)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model '{card.model_name}': {exc}") from exc
    if card.model_dims is None:  # checkpoints written before the model's dims were stored
        card.model_dims = int(getattr(model, "spatial_dims", 2))
    model.to(torch.device(device)).eval()
    return LoadedModel(model, card, path)
