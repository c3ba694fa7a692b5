"""Batch segmentation: every image of a folder segmented by a run's model, the masks written with
each image's geometry, and a CSV of volumes (and Dice / HD95 in mm against a labels folder). The work
is ``workflows.batch_segment.segment_folder`` in a worker; progress comes per file."""
from __future__ import annotations

from magicgui.widgets import CheckBox, Container, FileEdit
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from . import _common as C
from ._lifetime import on_close


class BatchWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.run = FileEdit(label="model (run folder)", mode="d")
        self.inputs = FileEdit(label="images folder", mode="d")
        self.labels = FileEdit(label="labels folder (optional)", mode="d")
        self.output = FileEdit(label="save masks to", mode="d")
        self.overwrite = CheckBox(text="replace existing masks", value=False)
        self.form = Container(widgets=[self.run, self.inputs, self.labels, self.output, self.overwrite])
        self.run.tooltip = "A run folder (best.pt / last.pt) from Distil or `medkd train`."
        self.labels.tooltip = "Ground-truth masks with the images' file names: adds Dice and HD95 (mm) to the CSV."
        self.output.tooltip = "Masks are written here with each image's spacing, origin and direction, plus metrics.csv."
        self.start_btn = QPushButton("Segment folder")
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay = QVBoxLayout(self)
        for w in (self.form.native, self.start_btn, self.progress, self.status):
            lay.addWidget(w)
        lay.addStretch(1)
        self.start_btn.clicked.connect(self.start)
        self.result = None
        self.worker = None
        self.done = 0
        on_close(self, lambda: self.worker is not None and self.worker.quit())
        C.widget_opened()

    def start(self) -> None:
        from ..inference.predict_files import list_inputs
        from ..workflows.batch_segment import segment_folder

        try:
            run = C.check_run_folder(self.run, "model")
            src, out = C.path_value(self.inputs), C.path_value(self.output)
            if src is None or not src.is_dir():
                raise C.InputError("choose the folder of images to segment")
            if out is None:
                raise C.InputError("choose where to save the masks")
            n = len(list_inputs(src))
        except (C.InputError, FileNotFoundError) as exc:
            C.show_error(str(exc))
            return
        self.result, self.done = None, 0
        self.progress.setRange(0, n)
        self.progress.setValue(0)
        self.start_btn.setEnabled(False)
        self.status.setText(f"segmenting {n} image(s) ...")
        self.worker = C.start_worker(_segment, segment_folder, run, src, out, C.path_value(self.labels),
                                     self.overwrite.value, yielded=self._one_done, returned=self._finished,
                                     errored=self._failed)

    def _one_done(self, name: str) -> None:
        self.done += 1
        self.progress.setValue(self.done)
        self.status.setText(f"{self.done} done: {name}")

    def _finished(self, result) -> None:
        self.start_btn.setEnabled(True)
        self.result = result
        failed = "".join(f"\n{p.name}: {why}" for p, why in result.report.failed)
        self.status.setText(result.summary() + failed)
        (C.show_error if result.report.failed else C.show_info)(result.summary() + failed)

    def _failed(self, exc) -> None:
        self.start_btn.setEnabled(True)
        self.status.setText("failed")
        C.show_error(f"batch segmentation failed: {exc}")


def _segment(segment_folder, run, src, out, labels, overwrite):
    """A generator worker: yields each finished file's name, returns the ``BatchResult``."""
    import queue
    import threading

    names: "queue.Queue" = queue.Queue()
    box = {}

    def work():
        try:
            box["result"] = segment_folder(run, src, out, labels, overwrite, on_result=lambda p: names.put(p.source.name))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the worker below
            box["error"] = exc
        names.put(None)

    threading.Thread(target=work, daemon=True).start()
    while (name := names.get()) is not None:
        yield name
    if "error" in box:
        raise box["error"]
    return box["result"]
