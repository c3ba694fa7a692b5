"""Atomic checkpoints (temp file + rename) that load with ``torch.load(weights_only=True)``.

A checkpoint is serialised in memory first and written with :func:`~napari_medkd.io.atomic.write_bytes_atomic`,
so a full disk or a file-size limit is an ``OSError`` naming the checkpoint (``torch.save`` into a file
would report it as ``RuntimeError: unexpected pos``), and the previous checkpoint stays as it was.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Dict

from ..io.atomic import write_bytes_atomic
from ..io.paths import not_a_regular_file
from ..io.suffixes import suffix_of


class CheckpointError(ValueError):
    pass


def save_checkpoint(state: Dict[str, Any], path: str | Path) -> Path:
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return write_bytes_atomic(path, buf.getbuffer())


def _refusal(path: Path, exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``, without PyTorch's advice to load it unsafely."""
    text = str(exc)
    blocked = re.search(r"unsupported GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", text)
    if blocked or "weights_only" in text or "Weights only load failed" in text:
        what = f" ({blocked.group(1) or blocked.group(2)})" if blocked else ""
        return (f"{path} is not a napari-medkd checkpoint: it holds code or objects{what} that a safe load "
                "refuses, so it was not loaded; use checkpoints written by napari-medkd")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return f"{path} is not a readable napari-medkd checkpoint: {first[:300]}"


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> Dict[str, Any]:
    import pickle

    import torch

    path = Path(path)
    if suffix_of(path) == ".onnx":
        raise CheckpointError(f"{path} is an ONNX model: use `medkd infer` (or the Live widget) for ONNX files; "
                              "this needs a run folder or a .pt checkpoint")
    problem = not_a_regular_file(path, "checkpoint")
    if problem:
        raise CheckpointError(problem)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(_refusal(path, exc)) from None  # the chained text repeats torch's advice
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a napari-medkd checkpoint (no 'model' entry)")
    return state
