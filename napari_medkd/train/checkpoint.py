"""Atomic checkpoints (temp file + rename) that load with ``torch.load(weights_only=True)``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict

from ..io.atomic import atomic_path


class CheckpointError(ValueError):
    pass


def save_checkpoint(state: Dict[str, Any], path: str | Path) -> Path:
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
    return path


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> Dict[str, Any]:
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable napari-medkd checkpoint: {exc}") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a napari-medkd checkpoint (no 'model' entry)")
    return state
