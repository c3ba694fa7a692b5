"""Compare widget: teacher and student side by side, their disagreement, per-class Dice / HD95.

Both models run on the image layer (``load_run_model`` + ``predict_image``, in a worker). The
metrics are ``segmentation_metrics`` in physical spacing (numpy order, from the image geometry),
with the optional field-of-view layer, i.e. what ``medkd evaluate`` reports for that case.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np
from magicgui.widgets import CheckBox, Container, FileEdit
from qtpy.QtWidgets import QLabel, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from . import _common as C

DISAGREEMENT_COLORS = {1: "#ff8c00", 2: "#00c8ff", 3: "#ff00ff"}  # teacher only, student only, other class
PAIRS = (("teacher", "truth"), ("student", "truth"), ("student", "teacher"))


def disagreement_map(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """1 = foreground only in the teacher, 2 = only in the student, 3 = both, different classes."""
    t, s = teacher > 0, student > 0
    out = np.zeros(teacher.shape, np.uint8)
    out[t & ~s] = 1
    out[s & ~t] = 2
    out[t & s & (teacher != student)] = 3
    return out


def compare_predictions(teacher_run, student_run, img, truth: Optional[np.ndarray] = None,
                        fov: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """Run both models on ``img`` and measure teacher/student vs truth and student vs teacher."""
    from ..inference.predict_files import predict_image
    from ..train.run_model import load_run_model
    from ..metrics.segmentation import segmentation_metrics

    from ..teachers.resolve import open_as_model

    lm_t, lm_s = open_as_model(teacher_run), load_run_model(student_run)  # the teacher from a run or a file
    preds = {"teacher": predict_image(lm_t, img), "student": predict_image(lm_s, img)}
    if preds["teacher"].shape != preds["student"].shape:
        raise ValueError(f"teacher and student predictions differ in shape: {preds['teacher'].shape} vs "
                         f"{preds['student'].shape}")
    names = lm_t.class_names
    classes = [c for c in sorted(names) if c != 0]
    spacing = tuple(reversed(img.spacing))[: preds["teacher"].ndim]
    maps = dict(preds)
    if truth is not None:
        truth = np.asarray(truth)
        if truth.shape != preds["teacher"].shape:
            raise ValueError(f"ground-truth layer shape {truth.shape} differs from the image {preds['teacher'].shape}")
        maps["truth"] = truth
    metrics = {}
    for a, b in PAIRS:
        if a in maps and b in maps:
            metrics[f"{a} vs {b}"] = segmentation_metrics(maps[a], maps[b], classes, spacing=spacing, fov=fov)
    return {"teacher": preds["teacher"], "student": preds["student"], "metrics": metrics,
            "class_names": names, "disagreement": disagreement_map(preds["teacher"], preds["student"])}


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
        self.grid = CheckBox(text="grid view (teacher | student | disagreement)", value=False)
        self.form = Container(widgets=[self.image_layer, self.teacher_run, self.teacher_file, self.student_run,
                                       self.truth_layer,
                                       self.fov_layer, self.grid])
        C.set_tooltips({"teacher_run": self.teacher_run, "student_run": self.student_run})
        self.compare_btn = QPushButton("Compare")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.table = QTableWidget(0, 0)
        lay = QVBoxLayout(self)
        for w in (self.form.native, self.compare_btn, self.status, self.table):
            lay.addWidget(w)
        self.compare_btn.clicked.connect(self.compare)
        self.result: Optional[Dict[str, Any]] = None
        self.worker = None

    def compare(self) -> None:
        try:
            layer = self.image_layer.value
            if layer is None:
                raise C.InputError("open an image layer to compare on")
            t_run = C.check_teacher(self.teacher_run.value, self.teacher_file.value)
            s_run = C.check_run_folder(self.student_run.value, "student")
            shape = C.spatial_shape(layer)
            truth = self._mask(self.truth_layer.value, shape, "ground truth")
            fov = self._mask(self.fov_layer.value, shape, "field of view")
            fov = fov > 0 if fov is not None else None
            img = C.image_from_layer(layer)
        except C.InputError as exc:
            C.show_error(str(exc))
            return
        self.compare_btn.setEnabled(False)
        self.status.setText("running teacher and student ...")
        self.worker = C.start_worker(compare_predictions, t_run, s_run, img, truth, fov,
                                     returned=lambda res: self._show(res, layer), errored=self._failed)

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
        self.status.setText("failed")
        C.show_error(f"comparison failed: {exc}")

    def _show(self, res: Dict[str, Any], layer) -> None:
        self.compare_btn.setEnabled(True)
        self.result = res
        C.put_layer(self.viewer, "labels", res["teacher"], "teacher", like=layer, opacity=0.6)
        C.put_layer(self.viewer, "labels", res["student"], "student", like=layer, opacity=0.6)
        C.put_layer(self.viewer, "labels", res["disagreement"], "disagreement", like=layer, opacity=0.8,
                    colormap=C.labels_colormap(DISAGREEMENT_COLORS))
        if self.grid.value:
            self.viewer.grid.enabled = True
        self._fill_table(res)
        n = int((res["disagreement"] > 0).sum())
        self.status.setText(f"disagreement: {n} voxels (orange = teacher only, cyan = student only, "
                            f"magenta = other class)")

    def _fill_table(self, res: Dict[str, Any]) -> None:
        """Rows: Dice / HD95 of each pair; columns: the foreground classes."""
        names = res["class_names"]
        pairs = list(res["metrics"])
        classes = sorted(next(iter(res["metrics"].values()))) if pairs else []
        rows = [(metric, pair) for pair in pairs for metric in ("dice", "hd95")]
        self.table.clear()
        self.table.setRowCount(len(rows))
        self.table.setColumnCount(len(classes))
        self.table.setHorizontalHeaderLabels([names.get(c, str(c)) for c in classes])
        self.table.setVerticalHeaderLabels([f"{'Dice' if m == 'dice' else 'HD95'} {pair}" for m, pair in rows])
        for r, (metric, pair) in enumerate(rows):
            for col, c in enumerate(classes):
                v = res["metrics"][pair][c].get(metric, math.nan)
                self.table.setItem(r, col, QTableWidgetItem("n/a" if not math.isfinite(v) else f"{v:.4f}"))
        self.table.resizeColumnsToContents()
