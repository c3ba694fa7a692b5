"""An "Export ONNX" row (precision fp32 / int8 + button) for a finished run, used by the Distil panel
and the runs browser: ``export.run_export.export_run`` in a worker, the report in a notification."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QWidget

from . import _common as C
from ..export.run_export import PRECISIONS, onnx_path


class ExportRow(QWidget):
    def __init__(self, run_dir: Callable[[], Optional[Path]], parent=None):
        super().__init__(parent)
        self._run_dir = run_dir
        self.precision = QComboBox()
        self.precision.addItems(PRECISIONS)
        self.precision.setToolTip("fp32: the exact model; int8: smaller and faster on CPU, checked against fp32")
        self.button = QPushButton("Export ONNX")
        self.button.setToolTip("Write RUN/model.onnx (or model.int8.onnx) from the run's best checkpoint, "
                               "checked against torch; Live and `medkd infer` use it")
        self.status = QLabel("")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        for w in (self.precision, self.button, self.status):
            lay.addWidget(w)
        self.button.clicked.connect(self.export)
        self.worker = None
        self.last_report = ""

    def export(self) -> None:
        from ..export.run_export import export_run

        try:
            run = C.check_run_folder(self._run_dir(), "run")
        except C.InputError as exc:
            C.show_error(f"cannot export: {exc}")
            return
        precision = self.precision.currentText()
        self.button.setEnabled(False)
        self.status.setText(f"exporting {precision} ...")
        self.worker = C.start_worker(export_run, run, precision, returned=lambda rep: self._done(rep, run, precision),
                                     errored=self._failed)

    def _done(self, report: str, run: Path, precision: str) -> None:
        self.button.setEnabled(True)
        self.last_report = report
        self.status.setText(f"wrote {onnx_path(run, precision).name}")
        C.show_info(report)

    def _failed(self, exc) -> None:
        self.button.setEnabled(True)
        self.status.setText("failed")
        C.show_error(f"export failed: {exc}")
