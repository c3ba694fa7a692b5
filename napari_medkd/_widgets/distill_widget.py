"""Distil widget: train (teacher, then) student in a subprocess and follow its ``events.jsonl``.

Every run is the CLI twin ``python -m napari_medkd distill|train --config FILE --out RUN`` in its
own process (GPU memory is freed when it ends, a crash cannot take napari down); FILE is the form as
a ``RunConfig``, written beside the run folder (``RUN.requested.yaml``). A ``thread_worker`` generator
tails the run's ``events.jsonl`` and yields each event to the GUI thread (progress bar, live
curves). Cancel writes the engine's ``STOP`` file and terminates the process if it is still alive a
few seconds later; Resume runs ``--resume RUN_DIR``. A finished run adds the student's prediction on
the image layer as a Labels layer on the image's grid.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, SpinBox
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from . import _common as C
from ..config import ConfigError, RunConfig, load_config
from ._plots import CurvePlot
from ._export_row import ExportRow
from ._lifetime import on_close
from ._runs import (LAYERS_DATA, PROCESS_LOG, cli_command, config_step, default_runs_root, new_run_dir,
                    stop_process, tail_events)

SOURCES = ("data set folder", "open layers")


class DistillWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._build_form(napari_viewer)
        self._build_layout()
        self._init_state()
        C.widget_opened()

    def _build_form(self, viewer) -> None:
        from napari.layers import Image, Labels

        self.source = ComboBox(label="training data", choices=SOURCES, value=SOURCES[0])
        self.data_dir = FileEdit(label="data set folder", mode="d")
        self.image_layer = C.layer_combo(viewer, Image, "image layer", tooltip_key="source")
        self.labels_layer = C.layer_combo(viewer, Labels, "labels layer", tooltip_key="source")
        self.teacher_dir = FileEdit(label="teacher run", mode="d")
        # issue 13 item 4: a teacher file (ONNX / TorchScript / .pt) wins over the folder (a run or a MONAI bundle)
        self.teacher_file = FileEdit(label="or teacher file", mode="r")
        self.teacher_file.tooltip = "An ONNX or TorchScript teacher file (used instead of the folder above)."
        self.train_teacher = CheckBox(text="train a teacher first", value=False)
        self.teacher_model = ComboBox(label="teacher model", choices=C.model_names("teacher"))
        self.student = ComboBox(label="student", choices=C.model_names("student"))
        methods = C.method_names()
        self.method = ComboBox(label="method", choices=methods, value="mskd" if "mskd" in methods else None)
        self.budget_kind = ComboBox(label="budget", choices=("iterations", "minutes"), value="iterations")
        self.budget = FloatSpinBox(label="amount", value=300, min=0.1, max=1e7, step=10)
        self.patch_size = SpinBox(label="patch size", value=96, min=16, max=512, step=16)
        self.batch_size = SpinBox(label="batch size", value=8, min=1, max=256)
        self.device = ComboBox(label="device", choices=C.DEVICES, value="auto")
        self.threads = SpinBox(label="CPU threads", value=max(1, (os.cpu_count() or 2) - 1), min=0, max=256)
        self.val_every = SpinBox(label="validate every", value=200, min=1, max=1_000_000)
        self.runs_root = FileEdit(label="runs folder", mode="d", value=default_runs_root())
        self.out_dir = FileEdit(label="run folder", mode="d")
        self.form = Container(widgets=[
            self.source, self.data_dir, self.image_layer, self.labels_layer, self.teacher_dir,
            self.teacher_file, self.train_teacher, self.teacher_model, self.student, self.method, self.budget_kind,
            self.budget, self.patch_size, self.batch_size, self.val_every, self.device, self.threads, self.runs_root,
            self.out_dir])
        C.set_tooltips({"source": self.source, "data_dir": self.data_dir, "teacher_dir": self.teacher_dir,
                        "train_teacher": self.train_teacher, "teacher_model": self.teacher_model,
                        "student": self.student, "method": self.method, "budget_kind": self.budget_kind,
                        "device": self.device, "out_dir": self.out_dir, "runs_root": self.runs_root, "patch_size": self.patch_size,
                        "batch_size": self.batch_size, "threads": self.threads, "val_every": self.val_every})

    def _build_layout(self) -> None:
        self.start_btn, self.cancel_btn, self.resume_btn = (QPushButton(t) for t in ("Start", "Cancel", "Resume"))
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.status = QLabel("idle")
        self.run_label = QLabel("")
        for lbl in (self.status, self.run_label):
            lbl.setWordWrap(True)
        self.plot = CurvePlot(self)
        self.export_row = ExportRow(lambda: self.run_dir, self)  # the finished (or stopped) run
        buttons = QHBoxLayout()
        for b in (self.start_btn, self.cancel_btn, self.resume_btn):
            buttons.addWidget(b)
        lay = QVBoxLayout(self)
        lay.addWidget(self.form.native)
        lay.addLayout(buttons)
        for w in (self.progress, self.status, self.run_label, self.export_row, self.plot):
            lay.addWidget(w)
        self.start_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        self.resume_btn.clicked.connect(self.resume)
        self.source.changed.connect(self._sync_visibility)
        self.train_teacher.changed.connect(self._sync_visibility)
        self._sync_visibility()

    def _init_state(self) -> None:
        self.proc: Optional[subprocess.Popen] = None
        self.worker = None
        self.run_dir: Optional[Path] = None
        self.predict_layer = None
        self.prediction_layer = None
        self.last_status: Optional[str] = None
        self.last_error: str = ""
        self._steps: List[Dict[str, Any]] = []
        self._step: Optional[Dict[str, Any]] = None
        self._cancelled = False
        self._log_path: Optional[Path] = None
        # event-loop lateness while a run is followed
        self.max_event_loop_delay_ms = 0.0
        self._tick = QTimer(self)
        self._tick.setInterval(50)
        self._tick.timeout.connect(self._on_tick)
        self._last_tick = 0.0
        self._set_running(False)
        # a run still going when the widget is closed is stopped (never left behind without a GUI)
        # ... and stopped when its dock is closed (napari only unparents the widget) or it is destroyed
        self._procs: Dict[str, Any] = {"current": None, "run_dir": None}
        on_close(self, lambda procs=self._procs: stop_process(procs["current"], procs["run_dir"]))

    # -- form ---------------------------------------------------------------------------------
    def _sync_visibility(self, *_):
        layers = self.source.value == SOURCES[1]
        self.data_dir.visible = not layers
        self.image_layer.visible = self.labels_layer.visible = layers
        self.teacher_model.visible = self.train_teacher.value
        self.teacher_dir.visible = self.teacher_file.visible = not self.train_teacher.value

    def _set_running(self, running: bool) -> None:
        self.export_row.button.setEnabled(not running and self.run_dir is not None)
        self.start_btn.setEnabled(not running)
        self.resume_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)

    @property
    def running(self) -> bool:
        return self._step is not None

    def _budget_args(self) -> List[str]:
        amount = self.budget.value
        if self.budget_kind.value == "iterations":
            return ["--iterations", str(max(1, int(round(amount))))]
        return ["--minutes", f"{amount:g}"]

    def _device_args(self) -> List[str]:
        threads = ["--threads", str(self.threads.value)] if self.threads.value else []
        return ["--device", self.device.value, *threads]

    def run_config(self, data: Path, model: str, teacher: Optional[Path] = None) -> RunConfig:
        """The RunConfig of one run from the form: data, model, budget, device; ``teacher`` (and the
        form's method) for a distillation run."""
        cfg = RunConfig()
        cfg.data.root, cfg.data.patch_size, cfg.model.name = str(data), int(self.patch_size.value), model
        tc = cfg.train
        if self.budget_kind.value == "iterations":
            tc.iterations = max(1, int(round(self.budget.value)))
        else:
            tc.minutes = float(self.budget.value)
        tc.batch_size, tc.val_every = int(self.batch_size.value), int(self.val_every.value)
        tc.device, tc.threads = self.device.value, (int(self.threads.value) or None)
        if teacher is not None:
            cfg.distill.teacher, cfg.distill.method = str(teacher), self.method.value
        return cfg

    def _data_root(self, out: Path) -> Path:
        if self.source.value == SOURCES[1]:
            img, lab = self.image_layer.value, self.labels_layer.value
            if img is not None and lab is None and not self.train_teacher.value:  # a teacher needs no masks
                return C.write_layer_scans(img, out / LAYERS_DATA)  # inside the run: Resume finds it
            if img is None or lab is None:
                raise C.InputError("choose an image layer and a labels layer (or train on a data set folder)")
            return C.write_layer_dataset(img, lab, out / LAYERS_DATA)  # inside the run: Resume finds it
        root = C.path_value(self.data_dir)
        if root is None:
            raise C.InputError("choose a data set folder (or train on the open layers)")
        if not root.is_dir():
            raise C.InputError(f"data set folder {root} does not exist")
        from ..data.datasets import load_dataset

        try:
            load_dataset(root)
        except (ValueError, FileNotFoundError) as exc:
            raise C.InputError(str(exc)) from exc
        return root

    def new_run_folder(self) -> Path:
        """The run folder field, else a new folder per Start in the runs folder (date, model, method)."""
        out = C.path_value(self.out_dir)
        if out is not None:
            return out
        root = C.path_value(self.runs_root) or default_runs_root()
        return new_run_dir(root, self.student.value, self.method.value)

    def _plan(self) -> List[Dict[str, Any]]:
        if not self.student.value or not self.method.value:
            raise C.InputError("choose a student model and a distillation method")
        out = self.new_run_folder()
        if out.exists() and any(out.iterdir()):
            raise C.InputError(f"run folder {out} is not empty: choose a new folder, or Resume it")
        steps = []
        if self.train_teacher.value:
            teacher = out.with_name(out.name + "_teacher")
            if teacher.exists() and any(teacher.iterdir()):
                raise C.InputError(f"teacher run folder {teacher} is not empty; choose another run folder")
        else:
            teacher = C.check_teacher(self.teacher_dir, self.teacher_file)
        data = self._data_root(out)
        if self.train_teacher.value:
            steps.append(config_step("teacher", "train", teacher, self.run_config(data, self.teacher_model.value)))
        steps.append(config_step("student", "distill", out, self.run_config(data, self.student.value, teacher)))
        return steps

    # -- actions ------------------------------------------------------------------------------
    def start(self) -> None:
        if self.running:
            return
        try:
            steps = self._plan()
        except C.InputError as exc:
            C.show_error(str(exc))
            return
        self._begin(steps)

    def resume(self) -> None:
        """Continue the run in the run folder (``--resume``); the budget fields set its (new) total."""
        if self.running:
            return
        run = C.path_value(self.out_dir) or self.run_dir
        if run is None:
            C.show_error("cannot resume: choose the run folder to continue")
            return
        cfg = run / "config.yaml"
        if not cfg.is_file():
            C.show_error(f"cannot resume: {run} is not a run folder (no config.yaml)")
            return
        try:
            saved = load_config(cfg)
        except ConfigError as exc:
            C.show_error(f"cannot resume: {exc}")
            return
        kind = "distill" if saved.distill.teacher else "train"
        self._begin([{"name": "student" if kind == "distill" else "teacher", "run_dir": run,
                      "cmd": cli_command(kind, "--resume", run, *self._budget_args(), *self._device_args())}])

    def cancel(self, grace_s: float = 5.0) -> None:
        if not self.running or self.proc is None:
            return
        self._cancelled = True
        self._steps = []
        run_dir = Path(self._step["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "STOP").write_text("stop requested from napari\n", encoding="utf-8")
        self.status.setText("stopping: waiting for the run to save last.pt ...")
        proc = self.proc
        QTimer.singleShot(int(grace_s * 1000), lambda: _terminate(proc))

    def _begin(self, steps: List[Dict[str, Any]]) -> None:
        self._steps = list(steps)
        self._cancelled = False
        self.last_status, self.last_error = None, ""
        self.predict_layer = self.image_layer.value if self.source.value == SOURCES[1] else None
        self.plot.clear()
        self.progress.setValue(0)
        self.max_event_loop_delay_ms = 0.0
        self._last_tick = time.perf_counter()
        self._tick.start()
        self._set_running(True)
        self._next_step()

    def _next_step(self) -> None:
        step = self._steps.pop(0)
        self._step = step
        run_dir = Path(step["run_dir"])
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        events = run_dir / "events.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        self._log_path = run_dir / PROCESS_LOG  # the process's output stays with its run
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self._log_path, "ab") as fh:
            try:
                self.proc = subprocess.Popen(step["cmd"], stdout=fh, stderr=subprocess.STDOUT, env=env)
                self._procs.update(current=self.proc, run_dir=run_dir)
            except OSError as exc:
                self._finish(f"could not start {step['cmd'][0]}: {exc}")
                return
        if self.plot.series:
            self.plot.new_phase(step["name"])
        self.run_dir = run_dir
        self.run_label.setText(f"{step['name']} run: {run_dir}")
        self.status.setText(f"starting the {step['name']} run ...")
        self.worker = C.start_worker(tail_events, self.proc, events, yielded=self._on_event,
                                     returned=self._on_step_done,
                                     errored=lambda exc: self._finish(f"following the run failed: {exc}"))

    # -- events -------------------------------------------------------------------------------
    def _on_tick(self) -> None:
        now = time.perf_counter()
        late = (now - self._last_tick) * 1000.0 - self._tick.interval()
        self.max_event_loop_delay_ms = max(self.max_event_loop_delay_ms, late)
        self._last_tick = now

    def _on_event(self, ev: Dict[str, Any]) -> None:
        kind = ev.get("event")
        name = self._step["name"] if self._step else ""
        if kind == "start":
            self.status.setText(f"{name}: {ev.get('model')} on {ev.get('device')}, {ev.get('params', 0):,} "
                                f"parameters, {ev.get('train_cases')} training cases")
        elif kind == "iter":
            self.progress.setValue(int(1000 * min(1.0, float(ev.get("progress") or 0.0))))
            self.status.setText(f"{name}: iteration {ev['iter']}, loss {ev['loss']:.4f}")
        elif kind == "stage" and ev.get("status") in ("start", "done", "reused", "stopped"):
            self.status.setText(f"{name}: pre-training stage '{ev.get('name')}' {ev.get('status')}")
        elif kind == "val":
            dm = ev.get("dice_mean")
            self.status.setText(f"{name}: validation at {ev['iter']}: Dice {dm:.3f}" if dm is not None
                                else f"{name}: validation at {ev['iter']}")
        elif kind == "error":
            self.last_error = str(ev.get("message", ""))
        elif kind == "end":
            self.last_status = ev.get("status")
        self.plot.add_event(ev)

    def _on_step_done(self, returncode: int) -> None:
        step = self._step or {}
        log = self._log_path.read_text(errors="replace", encoding="utf-8") if self._log_path and self._log_path.exists() else ""
        if self._cancelled:
            run = Path(step.get("run_dir", ""))
            self._finish(None, f"stopped; {run} holds last.pt - Resume continues it" if (run / "last.pt").exists()
                         else f"stopped before the first checkpoint of {run}")
            return
        if returncode != 0 or self.last_status != "finished":
            detail = self.last_error or C.last_lines(log)
            self._finish(f"the {step.get('name')} run failed (exit code {returncode}): {detail}")
            return
        if self._steps:
            self._next_step()
            return
        self.status.setText("finished; predicting on the image layer ...")
        layer = self.predict_layer or self._current_image_layer()
        if layer is None:
            self._finish(None, f"finished: {step.get('run_dir')} (open an image to see the student's prediction)")
            return
        C.start_worker(_predict, Path(step["run_dir"]), C.image_from_layer(layer),
                       returned=lambda labels: self._add_prediction(labels, layer),
                       errored=lambda exc: self._finish(f"prediction failed: {exc}"))

    def _current_image_layer(self):
        from napari.layers import Image

        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            return active
        return next((lyr for lyr in self.viewer.layers if isinstance(lyr, Image)), None)

    def _add_prediction(self, labels, layer) -> None:
        name = f"{self.run_dir.name} prediction" if self.run_dir else "prediction"  # one layer per run
        try:
            self.prediction_layer = C.put_layer(self.viewer, "labels", labels, name, like=layer)
        except Exception as exc:  # noqa: BLE001 - shown, never raised into Qt
            self._finish(f"could not add the prediction: {exc}")
            return
        self._finish(None, f"finished: {self.run_dir}")

    def _finish(self, error: Optional[str], info: str = "") -> None:
        self._tick.stop()
        self._step, self.proc, self.worker = None, None, None
        self._set_running(False)
        if error:
            self.status.setText("failed")
            C.show_error(error)
        else:
            self.progress.setValue(1000 if not self._cancelled else self.progress.value())
            self.status.setText(info)
            C.show_info(info)


def _predict(run_dir: Path, img):
    from ..inference.predict_files import predict_image
    from ..train.run_model import load_run_model

    return predict_image(load_run_model(run_dir), img)


def _terminate(proc: Optional[subprocess.Popen], kill_after_s: float = 3.0) -> None:
    """SIGTERM (the engine saves last.pt on it), then SIGKILL if it still runs (never blocks Qt)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    QTimer.singleShot(int(kill_after_s * 1000), lambda: proc.poll() is None and proc.kill())
