"""A medkd run folder (or one of its checkpoints) as a teacher: today's teacher, unchanged.

The model is the one ``train.run_model.load_run_model`` builds (the same object, built the same way, so a
distillation run's numbers do not change), frozen; its card is the checkpoint's. Every tap of the model
is available, and it splits into ``encode``/``decode``, so every method can run.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

from ..registry import TEACHERS
from ..train.run_model import load_run_model
from .base import Teacher, freeze
from .options import TeacherOptions, check_preprocess


def is_torchscript_archive(path: Path) -> bool:
    """A ``torch.jit.save`` archive (it holds compiled code), as against a ``torch.save`` checkpoint."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def is_run(path: Path) -> bool:
    if path.is_dir():
        return any((path / n).is_file() for n in ("best.pt", "last.pt"))
    return path.is_file() and path.suffix.lower() in (".pt", ".pth") and zipfile.is_zipfile(path) \
        and not is_torchscript_archive(path)


@TEACHERS.register("run", detect=is_run, order=10, description="a medkd run folder or checkpoint")
def open_run(path: Path, opts: TeacherOptions) -> Teacher:
    lm = load_run_model(path, device=opts.device)
    notes = []
    if opts.preprocess:
        check_preprocess(opts.preprocess)
        notes.append("--teacher-preprocess is ignored for a run folder: its checkpoint says how it was trained")
    if opts.taps:
        notes.append("--teacher-taps is ignored for a run folder: its model's own taps are used")
    return Teacher("run", str(path), freeze(lm.model), lm.card, files=(lm.checkpoint,), notes=notes,
                   licence=str(lm.card.extra.get("licence", "")))
