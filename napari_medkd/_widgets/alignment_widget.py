"""Alignment-map widget: where on the image the student's features agree with the teacher's.

Per tap, a heatmap on the image grid (Image layer, 'inferno', opacity 0.5):

- GKD runs (an MSAN in ``RUN/stages/msan.pt`` or in the checkpoint's task state), bottleneck tap:
  per-position cosine between ``D^T(E^T(F_T))`` and ``D^T(E^S(F_S))``, i.e. teacher and student
  features carried through their own MSAN encoders into the shared semantic space and decoded by
  the same (teacher) MSAN decoder;
- otherwise: per-position cosine of the mean-centred 3x3 neighbourhoods (a local correlation) of
  the channel-collapsed FMM maps (``fmm``) of teacher and student (the student resized to the
  teacher's grid); a plain cosine of two non-negative one-channel maps would be ~1 everywhere.

For GKD runs it also reports the Fréchet Semantic Distance (``frechet_semantic_distance``) between
teacher and student semantic vectors (``semantic_vectors``) over the slices of the volume.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
from magicgui.widgets import CheckBox, Container, Select
from qtpy.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

from . import _common as C
from ..analysis.fsd_probe import load_run_msan as load_msan
from ..analysis.features import assemble_volume, input_batches, model_input, taps_on, to_image_grid

TAPS = ("bottleneck", "enc_high", "enc_low", "dec_low")


def _local_cosine(a, b, k: int = 3, eps: float = 1e-8):
    """Per-position cosine of the mean-centred ``k``-neighbourhoods of two one-channel maps (a local
    Pearson correlation in [-1, 1]; 0 where either map is flat)."""
    import torch.nn.functional as F

    pool = F.avg_pool2d if a.dim() == 4 else F.avg_pool3d
    kw = {"kernel_size": k, "stride": 1, "padding": k // 2, "count_include_pad": False}
    ma, mb = pool(a, **kw), pool(b, **kw)
    cov = pool(a * b, **kw) - ma * mb
    va = (pool(a * a, **kw) - ma * ma).clamp_min(0)
    vb = (pool(b * b, **kw) - mb * mb).clamp_min(0)
    scale = float(max(va.max(), vb.max(), eps))
    return cov / (va * vb).sqrt().clamp_min(1e-3 * scale)


def tap_alignment(t_feat, s_feat, msan=None):
    """(B, 1, *teacher grid) alignment of one tap: MSAN cosine if ``msan``, else FMM local cosine."""
    import torch.nn.functional as F

    from ..distill.terms._common import fmm, resize

    t = t_feat.float()
    if msan is not None:
        t_msan, s_msan = msan
        size = t.shape[2:]
        a = t_msan.decode(t_msan.encode(t), size)
        b = t_msan.decode(s_msan.encode(s_feat.float()), size)
        return F.cosine_similarity(a, b, dim=1, eps=1e-8).unsqueeze(1)
    s = resize(s_feat.float(), t.shape[2:])
    return _local_cosine(fmm(t), fmm(s))


def alignment_maps(t_lm, s_lm, img, taps, msan=None, position=None, batch: int = 8) -> Dict[str, Any]:
    """Heatmaps (image-shaped, NaN where not computed) per tap, and the FSD for GKD runs.

    ``position`` (data indices) limits a volume to the slice through it; None = every slice.
    """
    import torch

    from ..metrics.fsd import frechet_semantic_distance

    mi_t, mi_s = model_input(t_lm, img), model_input(s_lm, img)
    if mi_t.axis != mi_s.axis:
        raise ValueError("teacher and student cut the volume differently (2D vs 3D model or slice axis)")
    indices = None
    if position is not None and mi_t.axis >= 0:
        indices = [mi_t.work_index(int(position[mi_t.axis]))]
    parts: Dict[str, list] = {tap: [] for tap in taps}
    sem_t, sem_s = [], []
    with torch.no_grad():
        for (idx, xt), (_, xs) in zip(input_batches(mi_t, indices, batch), input_batches(mi_s, indices, batch)):
            ft, fs = taps_on(t_lm.model, xt, taps), taps_on(s_lm.model, xs, taps)
            for tap in taps:
                use = msan if tap == "bottleneck" else None
                parts[tap].append((idx, to_image_grid(tap_alignment(ft[tap], fs[tap], use), mi_t)))
            if msan is not None and "bottleneck" in ft:
                sem_t.append(msan[0].encode(ft["bottleneck"].float()).double().numpy())
                sem_s.append(msan[1].encode(fs["bottleneck"].float()).double().numpy())
    maps = {tap: assemble_volume(p, mi_t) for tap, p in parts.items()}
    fsd, note = None, "n/a: not a GKD run (no MSAN)"
    if msan is not None:
        if "bottleneck" not in taps:
            note = "n/a: choose the bottleneck tap for the FSD"
        elif sum(len(v) for v in sem_t) < 2:
            note = "n/a: the FSD needs at least 2 slices (a volume, whole-volume mode)"
        else:
            fsd = frechet_semantic_distance(np.concatenate(sem_t), np.concatenate(sem_s))
            note = f"FSD (teacher vs student, {sum(len(v) for v in sem_t)} slices) = {fsd:.4f}"
    return {"maps": maps, "fsd": fsd, "fsd_note": note, "gkd": msan is not None}


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
        self.worker = C.start_worker(_compute, t_run, s_run, img, taps, position,
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


def _compute(t_run, s_run, img, taps, position):
    from ..train.run_model import load_run_model

    t_lm, s_lm = load_run_model(t_run), load_run_model(s_run)
    msan = load_msan(s_run, int(s_lm.meta.get("model_dims", 2)))
    return alignment_maps(t_lm, s_lm, img, taps, msan=msan[:2] if msan else None, position=position)
