"""Runs browser: the recent runs of a runs folder (model, method, Dice, status, date), and for the
selected one: show its prediction on the image, compare it with its teacher, export it, delete it
(after a confirmation). The list is ``workflows.runs_index``; predictions run in a worker."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

from magicgui.widgets import FileEdit
from qtpy.QtWidgets import (QAbstractItemView, QHBoxLayout, QLabel, QMessageBox, QPushButton, QTableWidget,
                            QTableWidgetItem, QVBoxLayout, QWidget)

from . import _common as C
from ._export_row import ExportRow
from ._runs import default_runs_root
from ..workflows.runs_index import RunRow, delete_run, list_runs

COLUMNS = ("run", "model", "method", "best Dice", "status", "started")
COMPARE_WIDGET = "Compare teacher and student"


def _ask(title: str, text: str) -> bool:
    answer = QMessageBox.question(None, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


class RunsWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.root = FileEdit(label="runs folder", mode="d", value=default_runs_root())
        self.refresh_btn = QPushButton("Refresh")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.open_btn, self.compare_btn, self.delete_btn = (QPushButton(t) for t in
                                                             ("Show on image", "Compare with teacher", "Delete"))
        self.open_btn.setToolTip("Segment the selected image layer with this run's model")
        self.export_row = ExportRow(self.selected_path, self)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        top, row = QHBoxLayout(), QHBoxLayout()
        top.addWidget(self.root.native)
        top.addWidget(self.refresh_btn)
        for b in (self.open_btn, self.compare_btn, self.delete_btn):
            row.addWidget(b)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.table, 1)
        lay.addLayout(row)
        for w in (self.export_row, self.status):
            lay.addWidget(w)
        self.refresh_btn.clicked.connect(self.refresh)
        self.root.changed.connect(self.refresh)
        self.open_btn.clicked.connect(self.show_on_image)
        self.compare_btn.clicked.connect(self.compare)
        self.delete_btn.clicked.connect(lambda: self.delete_selected())
        self.rows: List[RunRow] = []
        self.worker = None
        self.refresh()
        C.widget_opened()

    # -- the list -----------------------------------------------------------------------------
    def refresh(self, *_) -> None:
        root = C.path_value(self.root) or default_runs_root()
        self.rows = list_runs(root)
        self.table.setRowCount(len(self.rows))
        for r, run in enumerate(self.rows):
            dice = "-" if run.dice is None else f"{run.dice:.3f}"
            for c, text in enumerate((run.name, run.model, run.method or "(trained)", dice, run.status, run.date)):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        self.status.setText(f"{len(self.rows)} run(s) in {root}")

    def select(self, name: str) -> None:
        self.table.selectRow(next(i for i, r in enumerate(self.rows) if r.name == name))

    def selected(self) -> Optional[RunRow]:
        rows = self.table.selectionModel().selectedRows()
        return self.rows[rows[0].row()] if rows else None

    def selected_path(self) -> Optional[Path]:
        run = self.selected()
        return run.path if run else None

    # -- actions ------------------------------------------------------------------------------
    def show_on_image(self) -> None:
        from napari.layers import Image

        run, layer = self.selected(), self.viewer.layers.selection.active
        if not isinstance(layer, Image):
            layer = next((lyr for lyr in self.viewer.layers if isinstance(lyr, Image)), None)
        if run is None or layer is None:
            C.show_error("select a run and open an image")
            return
        self.status.setText(f"segmenting {layer.name} with {run.name} ...")
        self.worker = C.start_worker(_predict_checked, run.path, C.image_from_layer(layer),
                                     returned=lambda lab: self._shown(lab, run, layer))

    def _shown(self, labels, run: RunRow, layer) -> None:
        C.put_layer(self.viewer, "labels", labels, f"{run.name} prediction", like=layer, opacity=0.5)
        self.status.setText(f"{run.name}: prediction on {layer.name}")

    def compare(self):
        """Open (or reuse) the Compare panel with this run as student and its teacher."""
        run = self.selected()
        if run is None or not run.teacher:
            C.show_error("select a distilled run (one with a teacher) to compare")
            return None
        _dock, widget = self.viewer.window.add_plugin_dock_widget("napari-medkd", COMPARE_WIDGET)
        widget.teacher_run.value, widget.student_run.value = run.teacher, run.path
        return widget

    def delete_selected(self, confirm: Callable[[str, str], bool] = _ask) -> bool:
        run = self.selected()
        if run is None:
            return False
        if not confirm("Delete run", f"Delete the run folder {run.path} and everything in it? This cannot be undone."):
            return False
        try:
            delete_run(run.path)
        except ValueError as exc:
            C.show_error(str(exc))
            return False
        self.refresh()
        self.status.setText(f"deleted {run.path}")
        return True


def _predict_checked(run_dir: Path, img):
    from ..analysis.compare import load_checked
    from ..inference.predict_files import predict_image

    return predict_image(load_checked(run_dir, img, "model"), img)
