"""The Quick start job (issue 14): the scans (a data set, a plain folder with or without masks, or the
layers open in napari written as one case), a teacher (trained here, a finished run, a ready-made model or
an ONNX / TorchScript / MONAI file) and a hardware preset; one call runs what ``medkd pipeline`` runs:

    teacher if needed -> student alone (where there are masks) -> distilled student -> evaluation of all
    three on held-back data -> ONNX export of the distilled student (parity checked) -> report

It never needs a GUI: ``medkd quickstart --spec SPEC.json --out DIR`` runs it (the napari Quick start
panel starts exactly that in a subprocess) and appends progress to ``DIR/quickstart_events.jsonl``: one
``phase`` event per phase, ``progress`` events with the overall fraction done, ``note``s, and ``done``
with the result (also ``DIR/result.json`` and ``DIR/report.md``). What is held back comes from
``data.holdout`` (one case: slices or a block of it). The result card's numbers come from
``quick_result``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..config import RunConfig
from ..io import jsonsafe
from ..io.atomic import write_text_atomic

READY = "ready-made:"
EVENTS = "quickstart_events.jsonl"
#: hardware presets: device, iterations per model, batch size, 2D patch size; threads leave napari a core
PRESETS: Dict[str, Dict[str, Any]] = {
    "laptop CPU": {"device": "cpu", "iterations": 400, "batch_size": 8, "patch_size": 96, "val_every": 100},
    "workstation GPU": {"device": "auto", "iterations": 3000, "batch_size": 16, "patch_size": 128, "val_every": 300},
}


def suggest_preset() -> str:
    """``workstation GPU`` where torch sees a CUDA or Apple GPU, else ``laptop CPU``."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    gpu = torch.cuda.is_available() or bool(mps is not None and mps.is_available())
    return "workstation GPU" if gpu else "laptop CPU"


@dataclass
class QuickSpec:
    data: str                              # a data set folder, a plain folder of scans, or a manifest
    out: str = ""                          # new, empty output folder
    labels: Optional[str] = None           # masks for a plain folder of scans, matched by name
    teacher: str = "train"                 # "train", "ready-made:NAME" or a path (run, .onnx, TorchScript, bundle)
    preset: str = "laptop CPU"
    iterations: Optional[int] = None       # per model, instead of the preset's
    teacher_model: str = "unet"
    student: str = "unet_tiny"
    method: str = "pseudo_label_kd"
    export: bool = True
    threads: Optional[int] = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "QuickSpec":
        d = json.loads(text)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown Quick start setting(s) {unknown}")
        if d.get("preset", "laptop CPU") not in PRESETS:
            raise ValueError(f"unknown preset {d['preset']!r}; presets: {', '.join(PRESETS)}")
        return cls(**d)

    def budget(self) -> int:
        return int(self.iterations or PRESETS[self.preset]["iterations"])


class Progress:
    """Overall progress over weighted phases; ``emit`` receives every event (a dict)."""

    def __init__(self, weights: Dict[str, float], emit: Callable[[Dict[str, Any]], None]):
        self.weights, self.emit, self.t0 = weights, emit, time.time()
        self.total = float(sum(weights.values())) or 1.0
        self.done, self.phase = 0.0, ""

    def start(self, phase: str, text: str) -> None:
        if self.phase:
            self.done += self.weights.get(self.phase, 0.0)
        self.phase = phase
        names = list(self.weights)
        self.emit({"event": "phase", "phase": phase, "text": text, "index": names.index(phase) + 1,
                   "phases": len(names), "fraction": self.done / self.total, "elapsed": time.time() - self.t0})

    def within(self, share: float) -> None:
        f = (self.done + self.weights.get(self.phase, 0.0) * min(1.0, max(0.0, share))) / self.total
        self.emit({"event": "progress", "phase": self.phase, "fraction": f, "elapsed": time.time() - self.t0})

    def note(self, message: str) -> None:
        self.emit({"event": "note", "message": message})


def _weights(spec: QuickSpec, train_teacher: bool, labelled: bool) -> Dict[str, float]:
    it = float(spec.budget())
    w = {"data": 0.03 * it, "teacher": it if train_teacher else 0.05 * it}
    if labelled:
        w["student"] = it
    w.update({"distilled": 1.5 * it, "evaluate": 0.25 * it})  # a distillation step costs ~1.5 student steps
    if spec.export:
        w["export"] = 0.15 * it
    return w


def fitted_patch(preset_patch: int, plane: Optional[int]) -> int:
    """The preset's 2D patch, no larger than the images' in-plane size rounded up to 16 (a 96-pixel patch on
    51 x 35 slices would train mostly on padding)."""
    if not plane:
        return preset_patch
    return int(min(preset_patch, max(32, -(-int(plane) // 16) * 16)))


def base_config(spec: QuickSpec, hold, class_names: Dict[int, str], model: str, plane: Optional[int] = None
                ) -> RunConfig:
    """The run configuration of one model of the job (the preset's budget and device; the hold-out's data;
    ``plane``: the largest in-plane size of the images, which caps the 2D patch)."""
    from ..registry import MODELS

    p = PRESETS[spec.preset]
    cfg = RunConfig()
    cfg.data.root, cfg.data.labels_root = hold.root, (spec.labels if hold.root == spec.data else None)
    cfg.data.class_names, cfg.data.val_cases = dict(class_names), hold.val_cases
    dims = int(MODELS.meta(model).get("dims", 2))
    cfg.data.patch_size = fitted_patch(p["patch_size"], plane) if dims == 2 else 48
    cfg.model.name = model
    tc = cfg.train
    tc.iterations, tc.batch_size, tc.device = spec.budget(), p["batch_size"], p["device"]
    tc.val_every = max(1, min(p["val_every"], spec.budget()))
    cfg.distill.balance_batches = max(1, min(cfg.distill.balance_batches, spec.budget()))
    tc.threads = spec.threads
    return cfg


def _train(cfg: RunConfig, run: Path, prog: Progress) -> Dict[str, Any]:
    from ..train.engine import run_training

    def on_event(ev: Dict[str, Any]) -> None:
        if ev.get("event") == "iter":
            prog.within(float(ev.get("progress") or 0.0))
        elif ev.get("event") == "val" and ev.get("dice_mean") is not None:
            prog.note(f"{prog.phase}: validation Dice {ev['dice_mean']:.3f} at iteration {ev.get('iter')}")

    res = run_training(cfg, run, on_event=on_event)
    if res.get("status") != "finished":
        raise RuntimeError(f"the {prog.phase} run in {run} ended '{res.get('status')}'")
    return res


def _teacher_source(spec: QuickSpec, cfg: RunConfig, out: Path, prog: Progress, val: Dict[str, Any]) -> str:
    """The teacher to distil: trained here (``out/teacher``), a ready-made one, or the user's file/run."""
    if spec.teacher == "train":
        prog.start("teacher", f"training the teacher ({spec.teacher_model}, {spec.budget()} iterations)")
        cfg.model.kwargs = {"width": 0.5} if spec.teacher_model == "unet" else {}
        val["teacher"] = _train(cfg, out / "teacher", prog).get("best_dice")
        return str(out / "teacher")
    prog.start("teacher", "opening the teacher")
    if spec.teacher.startswith(READY):
        from ..io.ready_made import model_path

        path = str(model_path(spec.teacher[len(READY):]))
    else:
        path = str(Path(spec.teacher).expanduser())
    from ..teachers import open_teacher

    t = open_teacher(path)
    name = spec.teacher[len(READY):] + " (ready-made)" if spec.teacher.startswith(READY) else f"{t.kind} {path}"
    prog.note(f"teacher: {name}; classes {', '.join(n for k, n in sorted(t.card.class_names.items()) if k)}")
    return path


def _class_names(spec_ds, teacher: str) -> Dict[int, str]:
    """The classes: the data set's for a teacher trained here, else the given teacher's (it defines them)."""
    if teacher == "train":
        return dict(spec_ds.class_names)
    from ..teachers import open_teacher

    src = teacher
    if teacher.startswith(READY):
        from ..io.ready_made import model_path

        src = str(model_path(teacher[len(READY):]))
    return dict(open_teacher(src).card.class_names)


def _prepare(spec: QuickSpec, out: Path, prog: Progress):
    from ..data.datasets import load_dataset
    from ..data.holdout import prepare_holdout
    from ..data.label_folder import attach_labels
    from ..io.header import read_header
    from ..registry import MODELS

    ds = attach_labels(load_dataset(spec.data), spec.labels)
    shape = read_header(ds.cases[0].image).shape
    plane = max(shape[1:3]) if len(shape) >= 3 else max(shape[:2])
    dims = {int(MODELS.meta(m).get("dims", 2)) for m in (spec.student, spec.teacher_model)}
    # 2D models slice along axis 0: hold out whole slices of it; 3D ones any block
    hold = prepare_holdout(spec.data, out / "data", axes=(0,) if 2 in dims else None, labels_root=spec.labels)
    prog.note(hold.note)
    return ds, hold, _class_names(ds, spec.teacher), plane


def run_quick_start(spec: QuickSpec, out: str | Path, emit: Optional[Callable[[Dict[str, Any]], None]] = None
                    ) -> Dict[str, Any]:
    """The whole job into the new folder ``out``; returns the result (also ``out/result.json``)."""
    from ..data.datasets import load_dataset
    from ..data.label_folder import attach_labels
    from .pipeline import _prepare_out
    from .quick_result import evaluate_held_back, export_student, predict_for_viewer, write_report

    out = Path(out)
    _prepare_out(out, overwrite=False)
    ds = attach_labels(load_dataset(spec.data), spec.labels)
    labelled = any(c.label is not None for c in ds.cases)
    if not labelled and spec.teacher == "train":
        raise ValueError(f"{spec.data}: no scan has a mask, so no teacher can be trained here; choose a finished "
                         "run, a ready-made model or a model file as the teacher")
    prog = Progress(_weights(spec, spec.teacher == "train", labelled), emit or (lambda ev: None))
    prog.start("data", "preparing the data and the held-back part")
    ds, hold, names, plane = _prepare(spec, out, prog)
    val: Dict[str, Any] = {}
    runs: Dict[str, str] = {}
    runs["teacher"] = _teacher_source(spec, base_config(spec, hold, names, spec.teacher_model, plane), out, prog, val)
    if labelled:
        prog.start("student", f"training the student alone ({spec.student}, {spec.budget()} iterations)")
        val["student"] = _train(base_config(spec, hold, names, spec.student, plane), out / "student", prog).get(
            "best_dice")
        runs["student"] = str(out / "student")
    prog.start("distilled", f"distilling the teacher into {spec.student} ({spec.method})")
    val["distilled"] = _distil(spec, base_config(spec, hold, names, spec.student, plane), runs["teacher"], out, prog)
    runs["distilled"] = str(out / "distilled")
    prog.start("evaluate", "evaluating teacher and students on the held-back data")
    res = evaluate_held_back(runs, hold.root, names)
    res.update(predict_for_viewer(runs, ds, out / "predictions"))
    if spec.export:
        prog.start("export", "exporting the distilled student to ONNX and timing it")
        res.update(export_student(out / "distilled", out / "student.onnx", runs["teacher"], ds))
    res.update({"holdout": hold.note, "validation_dice": val, "runs": runs, "spec": dataclasses.asdict(spec),
                "elapsed_s": time.time() - prog.t0})
    res = write_report(res, out)
    prog.done, prog.phase = prog.total, ""
    prog.emit({"event": "done", "fraction": 1.0, "elapsed": res["elapsed_s"], "result": json.loads(jsonsafe.dumps(res))})
    return res


def _distil(spec: QuickSpec, cfg: RunConfig, teacher: str, out: Path, prog: Progress) -> Optional[float]:
    from .distill_teacher import configure_for_teacher

    cfg.distill.teacher, cfg.distill.method = teacher, spec.method
    cfg = RunConfig.from_dict(cfg.to_dict())
    _, notes = configure_for_teacher(cfg)
    for n in notes:
        prog.note(n)
    return _train(cfg, out / "distilled", prog).get("best_dice")


def run_from_file(spec_path: str | Path, out: str | Path, echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """``medkd quickstart``: the spec from JSON, the events appended to ``out/quickstart_events.jsonl``."""
    spec = QuickSpec.from_json(Path(spec_path).read_text(encoding="utf-8"))
    out = Path(out)
    log: List[str] = []

    def emit(ev: Dict[str, Any]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / EVENTS, "a", encoding="utf-8") as fh:
            fh.write(jsonsafe.dumps(ev) + "\n")
        if ev["event"] in ("phase", "note"):
            log.append(ev.get("text") or ev.get("message", ""))
            echo(f"[{ev['event']}] {log[-1]}")

    try:
        return run_quick_start(spec, out, emit)
    except Exception as exc:
        from .pipeline import MARKER

        if not (out / MARKER).is_file():
            raise  # never write into a folder this run did not make
        emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        raise
