"""Region-graph widget: the graphs that SKD / Graph Flow / MSKD / EMKD distil, drawn on the slice.

The computation is ``analysis.graphs.region_graphs_of_runs`` (patch nodes or class-region
prototypes of teacher and student at one tap, with cosine-affinity edges), run in a worker. Nodes
are napari Points (size = feature norm, colour = mean affinity), the top-k edges Shapes lines
(width and colour = affinity), for teacher, student and their difference; the matrices are plotted
below.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
from magicgui.widgets import ComboBox, Container, SpinBox
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

from . import _common as C
from ._lifetime import on_close
from ..analysis.graphs import GRAPH_TYPES, SIDES, TAPS, region_graphs_of_runs
from ._plots import MatrixPlot

CMAPS = {"teacher": "viridis", "student": "plasma", "difference": "RdBu_r"}


def _colors(values: np.ndarray, cmap: str, symmetric: bool) -> np.ndarray:
    from matplotlib import colormaps

    v = np.asarray(values, float)
    if symmetric:
        lim = float(np.nanmax(np.abs(v))) or 1.0
        z = 0.5 + 0.5 * v / lim
    else:
        lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
        z = (v - lo) / (hi - lo) if hi > lo else np.full_like(v, 0.5)
    return colormaps[cmap](np.nan_to_num(z, nan=0.5))


class GraphWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()

        self.viewer = napari_viewer
        self.image_layer, self.teacher_run, self.student_run = C.model_pair_inputs(napari_viewer)
        self.graph_type = ComboBox(label="graph", choices=GRAPH_TYPES, value=GRAPH_TYPES[0])
        self.tap = ComboBox(label="tap", choices=TAPS, value="bottleneck")
        self.max_nodes = SpinBox(label="max nodes", value=144, min=4, max=1024)
        self.top_k = SpinBox(label="top-k edges", value=40, min=1, max=2000)
        self.show_side = ComboBox(label="show", choices=("all",) + SIDES, value="teacher")
        self.form = Container(widgets=[self.image_layer, self.teacher_run, self.student_run, self.graph_type,
                                       self.tap, self.max_nodes, self.top_k, self.show_side])
        C.set_tooltips({"teacher_run": self.teacher_run, "student_run": self.student_run, "graph": self.graph_type,
                        "tap": self.tap, "top_k": self.top_k})
        self.compute_btn = QPushButton("Compute graphs on this slice")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.plot = MatrixPlot(self)
        lay = QVBoxLayout(self)
        for w in (self.form.native, self.compute_btn, self.status):
            lay.addWidget(w)
        lay.addWidget(self.plot, 1)
        self.compute_btn.clicked.connect(self.compute)
        self.show_side.changed.connect(self._apply_visibility)
        self.result: Dict[str, Any] = {}
        self.layers: Dict[str, Any] = {}
        self.worker = None
        on_close(self, lambda: self.worker is not None and self.worker.quit())
        C.widget_opened()

    def compute(self) -> None:
        try:
            layer, t_run, s_run = C.read_model_pair(self.image_layer, self.teacher_run, self.student_run)
            img = C.image_from_layer(layer)
            position = [C.current_index(self.viewer, layer, a) for a in range(img.ndim_spatial)]
        except C.InputError as exc:
            C.show_error(str(exc))
            return
        self.compute_btn.setEnabled(False)
        self.status.setText("computing features ...")
        self.worker = C.start_worker(region_graphs_of_runs, t_run, s_run, img, position, self.graph_type.value,
                                     self.tap.value, self.max_nodes.value, self.top_k.value,
                                     returned=lambda r: self._show(r, layer), errored=self._failed)

    def _failed(self, exc) -> None:
        self.compute_btn.setEnabled(True)
        self.status.setText("failed")
        C.show_error(f"region graphs failed: {exc}")

    def _show(self, res: Dict[str, Any], layer) -> None:
        """One side's layers per event-loop turn (creating a layer costs napari a shader build and a
        redraw: six at once would freeze it); ``self.result`` is set when all are shown."""
        self.compute_btn.setEnabled(True)
        base = max(C.spatial_shape(layer)) / 45.0
        steps = [lambda side=side: self._show_side(side, res, layer, base) for side in SIDES]
        steps.append(lambda: self._show_matrices(res))
        self._run_steps(steps)

    def _run_steps(self, steps) -> None:
        steps.pop(0)()
        if steps:
            QTimer.singleShot(0, lambda: self._run_steps(steps))

    def _show_side(self, side: str, res: Dict[str, Any], layer, base: float) -> None:
        coords, valid = res["coords"], res["valid"]
        sym = side == "difference"
        norm = np.abs(res["norm"][side])
        top = float(norm[valid].max()) if valid.any() else 1.0
        size = base * (0.6 + 1.4 * norm / (top or 1.0))
        pts = C.put_layer(self.viewer, "points", coords[valid], f"graph {side} nodes", like=layer,
                          size=size[valid], face_color=_colors(res["degree"][side][valid], CMAPS[side], sym),
                          border_color="white", border_width=0.05)
        self.layers[side] = (pts, self._edges(side, res["edges"][side], coords, layer, base))
        self._apply_visibility()

    def _show_matrices(self, res: Dict[str, Any]) -> None:
        valid = res["valid"]
        lbl = [res["labels"][i] for i in np.flatnonzero(valid)]
        mats = {"teacher": res["affinity"]["teacher"][np.ix_(valid, valid)],
                "student": res["affinity"]["student"][np.ix_(valid, valid)],
                "difference (S - T)": res["affinity"]["difference"][np.ix_(valid, valid)]}
        self.plot.show_matrices(mats, labels=lbl)
        d = res["affinity"]["difference"][np.ix_(valid, valid)]
        self.status.setText(f"{int(valid.sum())} nodes; mean |A_s - A_t| = {float(np.abs(d).mean()):.4f}")
        self.result = res

    def _edges(self, side: str, edges, coords: np.ndarray, layer, base: float):
        """The top-k edges as a Shapes layer of lines (width ~ |affinity|, colour = affinity)."""
        name = f"graph {side} edges"
        if not edges:  # an empty layer, never removed: the next result updates it in place
            return C.put_layer(self.viewer, "shapes", [], name, like=layer, shape_type="line", opacity=0.8)
        vals = np.array([v for _, _, v in edges])
        width = base * (0.08 + 0.35 * np.abs(vals) / (np.abs(vals).max() or 1.0))
        lines = [np.stack([coords[i], coords[j]]) for i, j, _ in edges]
        return C.put_layer(self.viewer, "shapes", lines, name, like=layer, shape_type="line", edge_width=list(width),
                           edge_color=_colors(vals, CMAPS[side], side == "difference"), opacity=0.8)

    def _apply_visibility(self, *_):
        for side, pair in self.layers.items():
            for lyr in pair:
                if lyr is not None and lyr in self.viewer.layers:
                    lyr.visible = self.show_side.value in ("all", side)

