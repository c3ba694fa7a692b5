"""Compare widget: teacher and student on the image layer, drawn so a clinician can tell them apart.

The work is ``analysis.compare.compare_predictions`` in a worker (it refuses, with the reason, a model
whose channels, dimensions or modality do not fit the image). The teacher is drawn as class-coloured
outlines, the student filled in the same colours, the disagreement in colours no class uses; a
legend says so. The table gives Dice and HD95 (mm) per class and pair ("not defined" where a class is
absent from both), the chart the Dice per class. The grid view puts each result over its own copy of
the image, one titled cell each. Layers carry the runs' names and are updated in place.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
from magicgui.widgets import CheckBox, Container, FileEdit
from qtpy.QtWidgets import QLabel, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from . import _common as C
from ..analysis.compare import compare_predictions, format_value
from ._compare_style import CONTOUR_PX, DISAGREEMENT_COLORS, class_colors, legend_html
from ._dice_chart import DiceChart
from ._lifetime import on_close

METRIC_LABELS = {"dice": "Dice", "hd95": "HD95 (mm)"}


def show_grid(viewer, image, overlays) -> None:
    """Each overlay over its own copy of the image (the data shared, not copied), one cell each
    (grid stride 2), titled with the overlay's name."""
    pairs = []
    for ov in overlays:
        name = f"{image.name} | {ov.name}"
        if name in viewer.layers:
            copy = viewer.layers[name]
            copy.data = image.data
        else:
            copy = viewer.add_image(image.data, name=name, rgb=image.rgb, colormap=image.colormap,
                                    contrast_limits=image.contrast_limits, **C.geometry_kwargs(image))
        pairs += [copy, ov]
    for i, lyr in enumerate(pairs):  # at the bottom, in (image, overlay) pairs: one pair per cell
        viewer.layers.move(viewer.layers.index(lyr), i)
    for ov in overlays:
        ov.name_overlay.visible = True
    grid = getattr(viewer, "canvas", viewer).grid  # napari 0.9: viewer.canvas.grid (viewer.grid deprecated)
    grid.stride = 2
    grid.enabled = True


class CompareWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        from napari.layers import Labels

        self.viewer = napari_viewer
        self.image_layer, self.teacher_run, self.student_run = C.model_pair_inputs(napari_viewer)
        self.truth_layer = C.layer_combo(napari_viewer, Labels, "ground truth", nullable=True, tooltip_key="truth")
        self.fov_layer = C.layer_combo(napari_viewer, Labels, "field of view", nullable=True, tooltip_key="fov")
        self.truth_layer.value = None
        self.fov_layer.value = None
        self.teacher_file = FileEdit(label="or teacher file", mode="r")  # ONNX / TorchScript (issue 13 item 4)
        self.teacher_file.tooltip = "An ONNX or TorchScript teacher file, used instead of the teacher run."
        self.grid = CheckBox(text="grid view (image with teacher | student | disagreement)", value=False)
        self.form = Container(widgets=[self.image_layer, self.teacher_run, self.teacher_file, self.student_run,
                                       self.truth_layer,
                                       self.fov_layer, self.grid])
        C.set_tooltips({"teacher_run": self.teacher_run, "student_run": self.student_run})
        self.compare_btn = QPushButton("Compare")
        self.status, self.legend = QLabel(""), QLabel("")
        for lbl in (self.status, self.legend):
            lbl.setWordWrap(True)
        self.table = QTableWidget(0, 0)
        self.chart = DiceChart(self)
        lay = QVBoxLayout(self)
        for w in (self.form.native, self.compare_btn, self.status, self.legend, self.table, self.chart):
            lay.addWidget(w)
        self.compare_btn.clicked.connect(self.compare)
        self.result: Optional[Dict[str, Any]] = None
        self.layers: Dict[str, Any] = {}
        self.worker = None
        self.closed = False
        on_close(self, self._on_closed)
        C.widget_opened()

    def _on_closed(self) -> None:
        self.closed = True  # a result arriving later is dropped
        if self.worker is not None:
            self.worker.quit()

    def compare(self) -> None:
        try:
            layer = self.image_layer.value
            if layer is None:
                raise C.InputError("open an image layer to compare on")
            t_run = C.check_teacher(self.teacher_run, self.teacher_file)
            s_run = C.check_run_folder(self.student_run, "student")
            shape = C.spatial_shape(layer)
            truth = self._mask(self.truth_layer.value, shape, "ground truth")
            fov = self._mask(self.fov_layer.value, shape, "field of view")
            fov = fov > 0 if fov is not None else None
            img = C.image_from_layer(layer)
        except C.InputError as exc:
            C.show_error(str(exc))
            return
        self.closed = False
        self.compare_btn.setEnabled(False)
        self.status.setText("running teacher and student ...")
        self.worker = C.start_worker(compare_predictions, t_run, s_run, img, truth, fov,
                                     returned=lambda res: self._show(res, layer, t_run.name, s_run.name),
                                     errored=self._failed)

    @staticmethod
    def _mask(layer, shape, what: str) -> Optional[np.ndarray]:
        if layer is None:
            return None
        data = np.asarray(layer.data)
        if data.shape != tuple(shape):
            raise C.InputError(f"{what} layer '{layer.name}' has shape {data.shape} but the image is {tuple(shape)}")
        return data

    def _failed(self, exc) -> None:
        self.compare_btn.setEnabled(True)
        self.status.setText("refused" if type(exc).__name__ == "ModelDoesNotFit" else "failed")
        C.show_error(f"comparison {'refused' if self.status.text() == 'refused' else 'failed'}: {exc}")

    def _show(self, res: Dict[str, Any], layer, teacher: str, student: str) -> None:
        self.compare_btn.setEnabled(True)
        if self.closed:
            return
        self.result = res
        cmap = C.labels_colormap(class_colors(res["class_names"]))
        v = self.viewer
        t = C.put_layer(v, "labels", res["teacher"], f"teacher ({teacher})", like=layer, colormap=cmap, opacity=1.0)
        t.contour = CONTOUR_PX
        s = C.put_layer(v, "labels", res["student"], f"student ({student})", like=layer, colormap=cmap, opacity=0.45)
        d = C.put_layer(v, "labels", res["disagreement"], f"disagreement ({teacher} vs {student})", like=layer,
                        opacity=0.8, colormap=C.labels_colormap(DISAGREEMENT_COLORS))
        v.layers.move(v.layers.index(t), len(v.layers))  # outlines drawn over the fill
        self.layers = {"teacher": t, "student": s, "disagreement": d}
        if self.grid.value:
            show_grid(v, layer, [t, s, d])
        self.legend.setText(legend_html(res["class_names"], teacher, student))
        self._fill_table(res)
        self.chart.show_metrics(res["metrics"], res["class_names"])
        n = int((res["disagreement"] > 0).sum())
        self.status.setText(f"{n} voxels disagree ({100.0 * n / max(1, res['disagreement'].size):.2f} % of the image)")

    def _fill_table(self, res: Dict[str, Any]) -> None:
        """Rows: Dice / HD95 (mm) of each pair; columns: the foreground classes."""
        names, metrics = res["class_names"], res["metrics"]
        pairs = list(metrics)
        classes = sorted(next(iter(metrics.values()))) if pairs else []
        rows = [(metric, pair) for pair in pairs for metric in METRIC_LABELS]
        self.table.clear()
        self.table.setRowCount(len(rows))
        self.table.setColumnCount(len(classes))
        self.table.setHorizontalHeaderLabels([names.get(c, str(c)) for c in classes])
        self.table.setVerticalHeaderLabels([f"{METRIC_LABELS[m]} {pair}" for m, pair in rows])
        for r, (metric, pair) in enumerate(rows):
            for col, c in enumerate(classes):
                m = metrics[pair][c]
                self.table.setItem(r, col, QTableWidgetItem(format_value(metric, m.get(metric), m.get("absent"))))
        self.table.resizeColumnsToContents()
