"""Quick start panel: scans + a teacher + a hardware preset, one Start, a result card.

The form becomes a ``workflows.quick_start.QuickSpec`` written beside the output folder; Start runs its CLI
twin ``python -m napari_medkd quickstart --spec FILE --out DIR`` in its own process (as the Distil widget
runs training: GPU memory is freed when it ends, a crash cannot take napari down) and a worker tails
``DIR/quickstart_events.jsonl`` into one progress bar that names the phase, the time spent and the time
left. At the end the result card shows the held-back Dice of teacher, student alone and distilled student,
milliseconds per slice, the speed-up and a verdict; the teacher's and the distilled student's masks are
added as Labels layers. Closing the panel stops a job still running.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional

from magicgui.widgets import ComboBox, Container, FileEdit, SpinBox
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QGroupBox, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from . import _common as C
from ._runs import cli_command, default_runs_root, new_run_dir, tail_events

SCANS = ("the open image", "a folder of scans")
TEACHERS = {"ready-made hippocampus teacher": "ready", "train one here": "train",
            "a finished run (folder)": "run", "a model file (ONNX / TorchScript)": "file",
            "a MONAI bundle (folder)": "bundle"}
TIPS = {
    "scans": "Learn from the image open in napari (and its labels layer, if any), or from a folder of scans "
             "(a data set, or images with an optional folder of masks matched by name).",
    "teacher": "The big model the fast one learns from: the ready-made hippocampus model, one trained here first "
               "(needs masks), a finished medkd run, or an ONNX / TorchScript file or MONAI bundle you have.",
    "preset": "laptop CPU: a few minutes per model on the CPU; workstation GPU: longer training on the GPU.",
    "iterations": "Training iterations per model; 0 uses the preset's.",
}


def fmt_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


#: the phases' names on the progress bar (the panel's status line gives the whole sentence)
PHASES = {"data": "preparing data", "teacher": "teacher", "student": "student alone", "distilled": "distilling",
          "evaluate": "evaluating", "export": "ONNX export"}


def progress_text(ev: Dict[str, Any], phase: str) -> str:
    """'3/6 student alone · 0:12 elapsed · about 0:40 left' from an event's overall fraction and elapsed seconds."""
    f, el = float(ev.get("fraction") or 0.0), float(ev.get("elapsed") or 0.0)
    left = f"about {fmt_seconds(el * (1 - f) / f)} left" if f > 0.02 else "estimating time left"
    return f"{phase} · {fmt_seconds(el)} elapsed · {left}"


class QuickStartWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._build_form(napari_viewer)
        self._build_layout()
        self.proc: Optional[subprocess.Popen] = None
        self.worker = None
        self.out: Optional[Path] = None
        self.result: Optional[Dict[str, Any]] = None
        self.error: str = ""
        self.layers_added: list = []
        self._phase = ""
        self._cancelled = False
        self._procs: Dict[str, Optional[subprocess.Popen]] = {"current": None}
        self.destroyed.connect(lambda *_, procs=self._procs: _stop(procs.get("current")))

    def _build_form(self, viewer) -> None:
        from napari.layers import Image, Labels

        from ..workflows.quick_start import PRESETS, suggest_preset

        self.scans = ComboBox(label="learn from", choices=SCANS, value=SCANS[0])
        self.image_layer = C.layer_combo(viewer, Image, "image")
        self.labels_layer = C.layer_combo(viewer, Labels, "labels (optional)", nullable=True)
        self.folder = FileEdit(label="scans folder", mode="d")
        self.masks = FileEdit(label="masks folder (optional)", mode="d")
        self.teacher = ComboBox(label="teacher", choices=list(TEACHERS), value=list(TEACHERS)[0])
        self.teacher_path = FileEdit(label="teacher file", mode="r")
        self.preset = ComboBox(label="hardware", choices=list(PRESETS), value=suggest_preset())
        self.iterations = SpinBox(label="iterations per model", value=0, min=0, max=1_000_000, step=50)
        self.out_dir = FileEdit(label="output folder", mode="d")  # empty: a new folder per Start under ~/medkd_runs
        self.out_dir.tooltip = "Empty: a new folder per Start, ~/medkd_runs/<date-time>-quickstart-<hardware>."
        self.form = Container(widgets=[self.scans, self.image_layer, self.labels_layer, self.folder, self.masks,
                                       self.teacher, self.teacher_path, self.preset, self.iterations, self.out_dir])
        for w, key in ((self.scans, "scans"), (self.teacher, "teacher"), (self.preset, "preset"),
                       (self.iterations, "iterations")):
            w.tooltip = TIPS[key]
        self._pick_labels()
        viewer.layers.events.inserted.connect(self._pick_labels)
        self.scans.changed.connect(self._sync)
        self.teacher.changed.connect(self._sync)
        self._sync()

    def _build_layout(self) -> None:
        self.start_btn, self.cancel_btn = QPushButton("Start"), QPushButton("Cancel")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.status, self.phase_label = QLabel(""), QLabel("")
        self.status.setWordWrap(True)
        self.phase_label.setWordWrap(True)
        self.card = QGroupBox("Result")
        self.card_text = QLabel("")
        self.card_text.setWordWrap(True)
        QVBoxLayout(self.card).addWidget(self.card_text)
        self.card.setVisible(False)
        lay = QVBoxLayout(self)
        for w in (self.form.native, self.start_btn, self.cancel_btn, self.phase_label, self.progress, self.status,
                  self.card):
            lay.addWidget(w)
        lay.addStretch(1)
        self.start_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        self.cancel_btn.setEnabled(False)

    def _pick_labels(self, *_) -> None:
        """Labels layers are optional, but a labels layer that is open is used unless the user says none."""
        from napari.layers import Labels

        try:
            if self.labels_layer.value is None:
                found = [lyr for lyr in self.viewer.layers if isinstance(lyr, Labels) and "Quick start" not in lyr.name]
                if found:
                    self.labels_layer.value = found[0]
        except RuntimeError:  # the Qt widget is gone
            pass

    def _sync(self, *_) -> None:
        layers = self.scans.value == SCANS[0]
        self.image_layer.visible = self.labels_layer.visible = layers
        self.folder.visible = self.masks.visible = not layers
        kind = TEACHERS[self.teacher.value]
        self.teacher_path.visible = kind in ("run", "file", "bundle")
        self.teacher_path.mode = "r" if kind == "file" else "d"
        self.teacher_path.label = {"run": "run folder", "file": "model file", "bundle": "bundle folder"}.get(kind, "")

    @property
    def running(self) -> bool:
        return self.proc is not None

    # -- the job ------------------------------------------------------------------------------
    def spec(self, out: Path):
        """The form as a ``QuickSpec`` (the open layers written to a data set beside ``out``)."""
        from ..workflows.quick_start import READY, QuickSpec

        kind = TEACHERS[self.teacher.value]
        teacher = {"ready": READY + "hippocampus_teacher", "train": "train"}.get(kind)
        if teacher is None:
            path = Path(str(self.teacher_path.value)).expanduser()
            if str(self.teacher_path.value) in ("", ".") or not path.exists():
                raise C.InputError(f"choose the teacher's {self.teacher_path.label} (got {path})")
            teacher = str(path)
        data, labels = self._scans(out)
        return QuickSpec(data=str(data), labels=labels, teacher=teacher, preset=self.preset.value,
                         iterations=int(self.iterations.value) or None, out=str(out))

    def _scans(self, out: Path):
        if self.scans.value == SCANS[1]:
            folder = Path(str(self.folder.value)).expanduser()
            if str(self.folder.value) in ("", ".") or not folder.is_dir():
                raise C.InputError(f"choose the folder of scans (got {folder})")
            masks = str(self.masks.value)
            return folder, (str(Path(masks).expanduser()) if masks not in ("", ".") else None)
        img = self.image_layer.value
        if img is None:
            raise C.InputError("open an image first (File > Open, or File > Open Sample > Hippocampus MRI)")
        folder = out.with_name(out.name + "_input")
        if folder.exists() and any(folder.iterdir()):
            raise C.InputError(f"{folder} (for the open layers) is not empty: choose a new output folder")
        if self.labels_layer.value is not None:
            return C.write_layer_dataset(img, self.labels_layer.value, folder), None
        from ..io.image_io import write_image

        mi = C.image_from_layer(img)
        write_image(mi.array, folder / f"{img.name.replace(' ', '_') or 'image'}.nii.gz", reference=mi)
        return folder, None

    def start(self) -> None:
        if self.running:
            return
        out = C.path_value(self.out_dir)
        if out is None:  # not set: a fresh folder per Start, never one an earlier run used
            out = new_run_dir(default_runs_root(), "quickstart", self.preset.value.split()[0])
        try:
            if out.exists() and any(out.iterdir()):
                raise C.InputError(f"output folder {out} is not empty: choose a new one")
            spec = self.spec(out)
        except C.InputError as exc:
            C.show_error(str(exc))
            return
        spec_path = out.with_name(out.name + ".quickstart.json")
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(spec.to_json(), encoding="utf-8")
        self._launch(cli_command("quickstart", "--spec", spec_path, "--out", out), out)

    def _launch(self, cmd, out: Path) -> None:
        from ..workflows.quick_start import EVENTS

        self.out, self.result, self.error, self._cancelled = out, None, "", False
        fd, log = tempfile.mkstemp(prefix="medkd-quickstart-", suffix=".log")
        self._log = Path(log)
        with os.fdopen(fd, "wb") as fh:
            try:
                self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
            except OSError as exc:
                C.show_error(f"could not start {cmd[0]}: {exc}")
                return
        self._procs["current"] = self.proc
        self._t0 = time.time()
        self.card.setVisible(False)
        self.progress.setValue(0)
        self.progress.setFormat("starting ...")
        self.status.setText(f"output: {out}")
        self.start_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.worker = C.start_worker(tail_events, self.proc, out / EVENTS, yielded=self._on_event,
                                     returned=self._on_exit, errored=lambda exc: self._done(f"following the job "
                                                                                           f"failed: {exc}"))

    def cancel(self) -> None:
        if self.proc is not None:
            self._cancelled = True
            self.status.setText("stopping ...")
            _stop(self.proc)

    def _on_event(self, ev: Dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "phase":
            self._phase = f"{ev['index']}/{ev['phases']} {PHASES.get(ev['phase'], ev['phase'])}"
            self.phase_label.setText(f"Step {ev['index']} of {ev['phases']}: {ev['text']}")
        elif kind == "note":
            self.status.setText(str(ev.get("message", "")))
        elif kind == "error":
            self.error = str(ev.get("message", ""))
        elif kind == "done":
            self.result = ev.get("result")
        if "fraction" in ev:
            self.progress.setValue(int(1000 * min(1.0, float(ev["fraction"]))))
            self.progress.setFormat(progress_text(ev, self._phase) if kind != "done" else
                                    f"done in {fmt_seconds(float(ev.get('elapsed') or 0))}")

    def _on_exit(self, code: int) -> None:
        if self._cancelled:
            return self._done(None, "stopped")
        if code != 0 or self.result is None:
            log = self._log.read_text(errors="replace", encoding="utf-8") if self._log.exists() else ""
            return self._done(f"the Quick start failed (exit code {code}): {self.error or C.last_lines(log)}")
        self.show_result(self.result)
        self._done(None, f"finished: {self.out / 'report.md'}")

    def show_result(self, res: Dict[str, Any]) -> None:
        """The result card, and the teacher's and the distilled student's masks as layers."""
        self.card_text.setText("<br>".join(_html(line) for line in res.get("card", [])) +
                               f"<br><small>ONNX: {res.get('onnx', 'not exported')}</small>")
        self.card.setVisible(True)
        from .._reader import image_layer_data
        from ..io.image_io import read_image

        like = self.image_layer.value if self.scans.value == SCANS[0] else None
        if like is None:
            data, kw, _ = image_layer_data(read_image(res["scan"]), Path(res["scan"]).name, "image")
            like = self.viewer.add_image(data, **kw)
        for role, path in res.get("predictions", {}).items():
            labels = read_image(path).array
            name = f"{role} (Quick start)"
            self.layers_added.append(C.put_layer(self.viewer, "labels", labels, name, like=like, opacity=0.6))

    def _done(self, error: Optional[str], info: str = "") -> None:
        self.proc, self.worker = None, None
        self._procs["current"] = None
        self.start_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        if error:
            self.progress.setFormat("failed")
            self.status.setText(error)
            C.show_error(error)
        else:
            self.status.setText(info)


def _html(line: str) -> str:
    import html

    text = html.escape(line)
    return f"<b>{text}</b>" if line.startswith("Verdict") else text


def _stop(proc: Optional[subprocess.Popen]) -> None:
    """SIGTERM (the running engine saves last.pt and the job ends); SIGKILL if it is still there after 5 s."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        QTimer.singleShot(5000, lambda: proc.poll() is None and proc.kill())
    except RuntimeError:  # no Qt event loop any more (the widget is being destroyed)
        pass

