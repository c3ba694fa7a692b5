"""Region-graph widget: the graphs that SKD / Graph Flow / MSKD / EMKD distil, drawn on the slice.

For the slice in view, teacher and student features at one tap (the student resized to the
teacher's grid, as the terms do) become graph nodes with the library's own helpers:

- patch nodes: ``pool_nodes`` (max-pooled patches, SKD pair-wise / Graph Flow / MSKD),
- class-region prototypes: ``class_masks`` + ``region_prototypes`` of the teacher's predicted
  classes (EMKD RAD / MSKD class graph),

with ``cosine_affinity`` edges. Nodes are napari Points (size = feature norm, colour = mean
affinity), the top-k edges Shapes lines (width and colour = affinity), for teacher, student and
their difference; the matrices are plotted below.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import numpy as np
from magicgui.widgets import ComboBox, Container, SpinBox
from qtpy.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

from . import _common as C
from ..analysis.features import feature_to_image_coords, plane_taps
from ._plots import MatrixPlot

GRAPH_TYPES = ("patch nodes (SKD / Graph Flow / MSKD)", "class-region prototypes (EMKD / MSKD class)")
TAPS = ("bottleneck", "enc_high", "enc_low", "dec_low")
SIDES = ("teacher", "student", "difference")
CMAPS = {"teacher": "viridis", "student": "plasma", "difference": "RdBu_r"}


def top_edges(a: np.ndarray, k: int, valid: np.ndarray) -> List[Tuple[int, int, float]]:
    """The ``k`` node pairs (i < j, both valid) with the largest ``|a_ij|``."""
    iu, ju = np.triu_indices(a.shape[0], 1)
    keep = valid[iu] & valid[ju] & np.isfinite(a[iu, ju])
    iu, ju = iu[keep], ju[keep]
    vals = a[iu, ju]
    order = np.argsort(-np.abs(vals), kind="stable")[:k]
    return [(int(iu[o]), int(ju[o]), float(vals[o])) for o in order]


def _patch_graph(t, s, max_nodes: int):
    from ..distill.terms._common import adapt_patch, pool_nodes

    size = t.shape[2:]
    p = adapt_patch(size, 1, max_nodes)
    grid = [math.ceil(n / p) for n in size]
    centres = np.stack(np.meshgrid(*[np.minimum(np.arange(g) * p + (p - 1) / 2, n - 1) for g, n in zip(grid, size)],
                                   indexing="ij"), -1).reshape(-1, len(size))
    nt, ns = pool_nodes(t, p, "max", max_nodes)[0], pool_nodes(s, p, "max", max_nodes)[0]
    return nt, ns, centres, np.ones(len(centres), bool), [f"{tuple(int(v) for v in c)}" for c in centres]


def _class_graph(t, s, logits, num_classes: int, names: Dict[int, str]):
    import torch.nn.functional as F

    from ..distill.terms._common import class_masks, region_prototypes

    pred = logits.argmax(1, keepdim=True).float()
    lab = F.interpolate(pred, size=tuple(t.shape[2:]), mode="nearest")[:, 0].long()
    masks = class_masks(lab, num_classes)
    smooth = [0.0] + [1.0] * (num_classes - 1)
    nt, ns = region_prototypes(t, masks, smooth)[0], region_prototypes(s, masks, smooth)[0]
    m = masks[0].cpu().numpy()
    present = m.reshape(num_classes, -1).sum(1) > 0
    grids = np.meshgrid(*[np.arange(n) for n in m.shape[1:]], indexing="ij")
    centres = np.array([[float((g * m[k]).sum() / max(m[k].sum(), 1)) for g in grids] for k in range(num_classes)])
    return nt, ns, centres, present, [names.get(k, str(k)) for k in range(num_classes)]


def region_graphs(t_lm, s_lm, img, position, kind: str, tap: str, max_nodes: int = 144) -> Dict[str, Any]:
    """Nodes (image-plane coordinates), node attributes and affinities of teacher, student, difference.

    ``position``: data indices of the image's spatial axes; the graph is built on the plane through it.
    """
    from ..distill.terms._common import cosine_affinity, resize

    ft, mi, axis = plane_taps(t_lm, img, [tap], position)
    fs, _, _ = plane_taps(s_lm, img, [tap], position)
    t = ft[tap].float()
    s = resize(fs[tap].float(), t.shape[2:])
    if kind == GRAPH_TYPES[0]:
        nt, ns, centres, valid, labels = _patch_graph(t, s, max_nodes)
    else:
        nt, ns, centres, valid, labels = _class_graph(t, s, ft["logits"], t_lm.meta["num_classes"],
                                                         t_lm.class_names)
    a_t = cosine_affinity(nt[None])[0].cpu().numpy()
    a_s = cosine_affinity(ns[None])[0].cpu().numpy()
    pos = feature_to_image_coords(centres, t.shape[2:], mi)
    valid = valid & np.all((pos >= -0.5) & (pos <= np.asarray(mi.image_plane) - 0.5), axis=1)
    out: Dict[str, Any] = {"positions": pos, "valid": valid, "labels": labels, "axis": axis,
                           "index": int(position[axis]) if axis >= 0 else 0,
                           "affinity": {"teacher": a_t, "student": a_s, "difference": a_s - a_t}}
    norms = {"teacher": nt.norm(dim=-1).cpu().numpy(), "student": ns.norm(dim=-1).cpu().numpy()}
    norms["difference"] = norms["student"] - norms["teacher"]
    out["norm"] = norms
    n = max(1, int(valid.sum()) - 1)
    out["degree"] = {k: (np.where(valid[None], a, 0).sum(1) - np.diag(a)) / n for k, a in out["affinity"].items()}
    return out


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
        self.worker = C.start_worker(_compute, t_run, s_run, img, position, self.graph_type.value, self.tap.value,
                                     self.max_nodes.value, returned=lambda r: self._show(r, layer),
                                     errored=self._failed)

    def _failed(self, exc) -> None:
        self.compute_btn.setEnabled(True)
        self.status.setText("failed")
        C.show_error(f"region graphs failed: {exc}")

    @staticmethod
    def _coords(res, layer) -> np.ndarray:
        pos = res["positions"]
        if res["axis"] >= 0:
            pos = np.insert(pos, res["axis"], res["index"], axis=1)
        return pos

    def _show(self, res: Dict[str, Any], layer) -> None:
        self.compute_btn.setEnabled(True)
        self.result = res
        coords = self._coords(res, layer)
        valid = res["valid"]
        base = max(C.spatial_shape(layer)) / 45.0
        for side in SIDES:
            sym = side == "difference"
            a = res["affinity"][side]
            norm = np.abs(res["norm"][side])
            top = float(norm[valid].max()) if valid.any() else 1.0
            size = base * (0.6 + 1.4 * norm / (top or 1.0))
            pts = C.put_layer(self.viewer, "points", coords[valid], f"graph {side} nodes", like=layer,
                              size=size[valid],
                              face_color=_colors(res["degree"][side][valid], CMAPS[side], sym),
                              border_color="white", border_width=0.05, out_of_slice_display=False)
            self.layers[side] = (pts, self._edges(side, top_edges(a, self.top_k.value, valid), coords, layer, base))
        self._apply_visibility()
        lbl = [res["labels"][i] for i in np.flatnonzero(valid)]
        mats = {"teacher": res["affinity"]["teacher"][np.ix_(valid, valid)],
                "student": res["affinity"]["student"][np.ix_(valid, valid)],
                "difference (S - T)": res["affinity"]["difference"][np.ix_(valid, valid)]}
        self.plot.show_matrices(mats, labels=lbl)
        d = res["affinity"]["difference"][np.ix_(valid, valid)]
        self.status.setText(f"{int(valid.sum())} nodes; mean |A_s - A_t| = {float(np.abs(d).mean()):.4f}")

    def _edges(self, side: str, edges, coords: np.ndarray, layer, base: float):
        """The top-k edges as a Shapes layer of lines (width ~ |affinity|, colour = affinity)."""
        name = f"graph {side} edges"
        if not edges:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            return None
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


def _compute(t_run, s_run, img, position, kind, tap, max_nodes):
    from ..train.run_model import load_run_model

    return region_graphs(load_run_model(t_run), load_run_model(s_run), img, position, kind, tap, max_nodes)
