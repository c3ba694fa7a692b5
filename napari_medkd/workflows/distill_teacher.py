"""Distil the model a clinic already has on the scans it has (issue 13): a teacher from any source
(``teachers/``), a folder of scans with masks for none, some or all of them, one call.

    from napari_medkd.workflows.distill_teacher import distill_from_teacher
    distill_from_teacher("model.onnx", "scans/", "runs/student", method="logit_kd", iterations=600)
    distill_from_teacher(my_torch_net, "scans/", "runs/s2", preprocess={"modality": "MR", "model_dims": 2})

:func:`configure_for_teacher` settles the run configuration before training, once, where it is written
down (``config.yaml``): the data set's classes are the teacher's when the scans name none; the student's
preprocessing is the teacher's where the configuration leaves it at its default (a setting given that
differs is refused by ``distill.task.check_compatible``, naming it); for a teacher from a file and a method
that reads only its outputs, those outputs are cached on disk (``distill.cache_teacher``, shared by
students); a method the teacher cannot serve is refused before any scan is read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..config import DataConfig, RunConfig
from ..distill.task import DistillError, check_fit, needs_only_outputs
from ..teachers import Teacher, open_teacher

#: DataConfig fields that are PreprocessConfig keys as well (adopted from the teacher where left at default)
ADOPTED = ("modality", "rgb_mode", "ct_window", "percentiles", "target_spacing", "slice_axis")


def _data_has_classes(root: str) -> bool:
    from ..data.datasets import scan_dataset

    try:
        return bool(scan_dataset(root, probe=False).meta.get("labels"))
    except (OSError, ValueError):
        return False


def adopt_teacher_settings(cfg: RunConfig, teacher: Teacher) -> List[str]:
    """Take the teacher's classes and preprocessing into ``cfg.data`` where the data and the configuration
    leave them open; returns what was taken, for the user."""
    notes, default = [], DataConfig()
    if cfg.data.class_names is None and not _data_has_classes(cfg.data.root):
        cfg.data.class_names = dict(teacher.card.class_names)
        notes.append(f"classes from the teacher: {teacher.card.class_names}")
    taken = {}
    for key in ADOPTED:
        if key in (teacher.card.preprocess or {}) and getattr(cfg.data, key) == getattr(default, key):
            value = teacher.card.preprocess[key]
            setattr(cfg.data, key, list(value) if isinstance(value, tuple) else value)
            taken[key] = value
    changed = {k: v for k, v in taken.items() if v != getattr(default, k)}
    if changed:
        notes.append(f"preprocessing from the teacher: {changed}")
    return notes


def configure_for_teacher(cfg: RunConfig, cache_teacher: Optional[bool] = None) -> Tuple[Teacher, List[str]]:
    """Open ``cfg.distill.teacher`` and settle ``cfg`` for distilling it (see the module docstring);
    ``cache_teacher`` None: on for a teacher from a file with an output-only method. Returns the teacher
    and notes for the user."""
    dc = cfg.distill
    teacher = open_teacher(dc.teacher, preprocess=dc.teacher_preprocess, taps=dc.teacher_taps,
                           threads=cfg.train.threads)
    notes = list(teacher.notes) + adopt_teacher_settings(cfg, teacher)
    outputs_only = needs_only_outputs(dc.method, dc.terms)
    if cache_teacher is None:
        cache_teacher = bool(dc.cache_teacher) or (teacher.kind != "run" and outputs_only)
    if cache_teacher and not outputs_only:
        raise DistillError(f"the teacher's outputs can be cached only for a method that reads nothing else; "
                           f"'{dc.method}' reads its features (use --no-cache-teacher)")
    dc.cache_teacher = bool(cache_teacher)
    if dc.cache_teacher and teacher.kind != "run":
        notes.append("the teacher's outputs are computed once per scan and cached on disk (--no-cache-teacher: "
                     "run it in every step)")
    if teacher.kind != "run":
        from ..registry import MODELS

        check_fit(teacher, dc, int(MODELS.meta(cfg.model.name).get("dims", 2)))
    return teacher, notes


def distill_from_teacher(teacher: Any, data: str | Path, out: str | Path, *, student: str = "unet_tiny",
                         method: str = "logit_kd", labels: Optional[str | Path] = None,
                         preprocess: Optional[Dict[str, Any]] = None, taps: Optional[Dict[str, str]] = None,
                         cache_dir: Optional[str | Path] = None, cache_teacher: Optional[bool] = None,
                         config: Optional[RunConfig] = None, overwrite: bool = False,
                         on_event: Optional[Callable[[Dict[str, Any]], None]] = None, **train: Any) -> Dict[str, Any]:
    """Train ``student`` in ``out`` from ``teacher`` (a path, an ``nn.Module`` or a ``Teacher``) on the scans
    in ``data`` (a folder of images, or any data set medkd reads), with the masks of ``labels`` where
    they exist. ``train``: ``train`` settings (``iterations``, ``minutes``, ``batch_size``, ``lr``, ``seed``,
    ``threads``, ``val_every``, ``device``) and ``patch_size``. Returns ``run_training``'s result with
    ``notes`` added."""
    from ..teachers import register_module
    from ..train.engine import run_training

    cfg = RunConfig.from_dict(config.to_dict()) if config is not None else RunConfig()  # the caller's stays as it is
    if not isinstance(teacher, (str, Path, Teacher)):
        teacher = register_module(teacher)
    elif isinstance(teacher, Teacher):
        teacher = teacher.source
    cfg.data.root, cfg.data.labels_root = str(data), (str(labels) if labels else None)
    cfg.data.patch_size = int(train.pop("patch_size", cfg.data.patch_size))
    cfg.model.name = student
    cfg.distill.teacher, cfg.distill.method = str(teacher), method
    cfg.distill.teacher_preprocess, cfg.distill.teacher_taps = dict(preprocess or {}), dict(taps or {})
    cfg.distill.teacher_cache_dir = str(cache_dir) if cache_dir else cfg.distill.teacher_cache_dir
    for key, value in train.items():
        if not hasattr(cfg.train, key):
            raise TypeError(f"distill_from_teacher() got an unknown setting {key!r}")
        setattr(cfg.train, key, value)
    if not (cfg.train.iterations or cfg.train.epochs or cfg.train.minutes):
        cfg.train.minutes = 10.0
    cfg = RunConfig.from_dict(cfg.to_dict())  # checked as a YAML configuration is
    _, notes = configure_for_teacher(cfg, cache_teacher)
    res = run_training(cfg, out, overwrite=overwrite, on_event=on_event)
    return {**res, "notes": notes}
