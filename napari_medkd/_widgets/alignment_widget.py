"""Alignment-map widget: where on the image the student's features agree with the teacher's.

The computation is ``analysis.alignment.alignment_maps_of_runs`` (per tap, an MSAN cosine for GKD
runs at the bottleneck, else a local correlation of the FMM maps; the FSD for GKD runs), run in a
worker. Each tap's map is shown as an Image layer ('inferno', opacity 0.5) on the image's grid.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
from magicgui.widgets import CheckBox, Container, Select
from qtpy.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

from . import _common as C
from ._lifetime import on_close
from ..analysis.alignment import TAPS, alignment_maps_of_runs


class AlignmentWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()

        self.viewer = napari_viewer
        self.image_layer, self.teacher_run, self.student_run = C.model_pair_inputs(napari_viewer)
        self.taps = Select(label="taps", choices=TAPS, value=["bottleneck"])
        self.slice_only = CheckBox(text="only the slice in view (large volumes)", value=False)
        self.form = Container(widgets=[self.image_layer, self.teacher_run, self.student_run, self.taps,
                                       self.slice_only])
        C.set_tooltips({"teacher_run": self.teacher_run, "student_run": self.student_run, "tap": self.taps})
        self.compute_btn = QPushButton("Compute alignment maps")
        self.status = QLabel("")
        self.fsd_label = QLabel("FSD: -")
        for lbl in (self.status, self.fsd_label):
            lbl.setWordWrap(True)
        lay = QVBoxLayout(self)
        for w in (self.form.native, self.compute_btn, self.status, self.fsd_label):
            lay.addWidget(w)
        lay.addStretch(1)
        self.compute_btn.clicked.connect(self.compute)
        self.result: Dict[str, Any] = {}
        self.worker = None
        on_close(self, lambda: self.worker is not None and self.worker.quit())
        C.widget_opened()

    def compute(self) -> None:
        try:
            layer, t_run, s_run = C.read_model_pair(self.image_layer, self.teacher_run, self.student_run)
            taps = list(self.taps.value)
            if not taps:
                raise C.InputError("choose at least one tap")
            img = C.image_from_layer(layer)
            position = ([C.current_index(self.viewer, layer, a) for a in range(img.ndim_spatial)]
                        if self.slice_only.value else None)
        except C.InputError as exc:
            C.show_error(str(exc))
            return
        self.compute_btn.setEnabled(False)
        self.status.setText("computing ...")
        self.worker = C.start_worker(alignment_maps_of_runs, t_run, s_run, img, taps, position,
                                     returned=lambda r: self._show(r, layer), errored=self._failed)

    def _failed(self, exc) -> None:
        self.compute_btn.setEnabled(True)
        self.status.setText("failed")
        C.show_error(f"alignment maps failed: {exc}")

    def _show(self, res: Dict[str, Any], layer) -> None:
        self.compute_btn.setEnabled(True)
        self.result = res
        for tap, m in res["maps"].items():
            C.put_layer(self.viewer, "image", m.astype(np.float32), f"alignment {tap}", like=layer,
                        colormap="inferno", opacity=0.5, contrast_limits=(-1.0, 1.0), blending="translucent")
        kind = "MSAN cosine (bottleneck), FMM local correlation (others)" if res["gkd"] else "FMM local correlation"
        means = ", ".join(f"{t} {float(np.nanmean(m)):.3f}" for t, m in res["maps"].items()
                          if np.isfinite(m).any())
        self.status.setText(f"{kind}; mean alignment: {means}")
        self.fsd_label.setText(res["fsd_note"])

