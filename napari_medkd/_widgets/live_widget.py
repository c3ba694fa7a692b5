"""Live inference widget: an exported ONNX student segments the slice in view as you scroll.

``OrtSegmenter(onnx).prepare_volume(img)`` once per image, then ``segment_slice_index(i)`` for the
slice in view: ``viewer.dims.events.current_step`` restarts a 100 ms single-shot timer (debounce),
one worker runs at a time, and a result for a slice the user has already left is dropped (and the
slice now in view is run instead). "Segment volume" runs ``OrtSegmenter.segment`` on the whole
image. The result is an ordinary Labels layer on the image's grid (the writer can save it).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np
from magicgui.widgets import CheckBox, Container, FileEdit
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from . import _common as C
from ._lifetime import on_close

DEBOUNCE_MS = 100


class _Session:
    """An OrtSegmenter with the volume it has prepared (used by one worker at a time). ``source`` is
    what the user chose: an ``.onnx`` file, or a run folder (its exported model, exported if needed)."""

    def __init__(self, source: Path):
        from ..export.run_export import ensure_onnx
        from ..inference.ort_infer import OrtSegmenter

        self.source = source
        self.path = ensure_onnx(source)
        self.seg = OrtSegmenter(str(self.path))
        self.prepared_key: Optional[Tuple[int, int]] = None

    @property
    def slice_axis(self) -> int:
        return int(getattr(self.seg, "slice_axis", 0) or 0)

    def ensure_prepared(self, key: Tuple[int, int], img) -> None:
        if self.prepared_key != key:
            self.seg.prepare_volume(img)
            self.prepared_key = key


def _labels_of(res: Any) -> np.ndarray:
    return np.asarray(getattr(res, "labels", res))


def _guard(session: _Session, img) -> None:
    from ..inference.fit import check_fits

    check_fits(session.seg.card, img, f"the model {session.path.name}")


def _segment_slice(session: _Session, key, img, index: int):
    _guard(session, img)
    session.ensure_prepared(key, img)
    t0 = time.perf_counter()
    res = session.seg.segment_slice_index(index)
    return index, _labels_of(res), float(getattr(res, "ms", (time.perf_counter() - t0) * 1000.0))


def _segment_volume(session: _Session, img):
    _guard(session, img)
    res = session.seg.segment(img)
    return _labels_of(res), float(getattr(res, "ms_per_slice", float("nan"))), float(getattr(res, "seconds", 0.0))


class LiveWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        from napari.layers import Image

        self.viewer = napari_viewer
        self.image_layer = C.layer_combo(napari_viewer, Image, "image")
        self.onnx = FileEdit(label="model (.onnx or run folder)", mode="r", filter="*.onnx")
        self.live = CheckBox(text="segment the slice in view while scrolling", value=True)
        self.form = Container(widgets=[self.image_layer, self.onnx, self.live])
        C.set_tooltips({"onnx": self.onnx, "live": self.live})
        self.slice_btn = QPushButton("Segment this slice")
        self.volume_btn = QPushButton("Segment volume")
        self.speed = QLabel("ms per slice: -")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.slice_btn)
        row.addWidget(self.volume_btn)
        self.ready_btn = QPushButton("Use the ready-made hippocampus student")  # issue 14 item 6
        self.ready_btn.clicked.connect(self.use_ready_made)
        lay = QVBoxLayout(self)
        lay.addWidget(self.form.native)
        lay.addWidget(self.ready_btn)
        lay.addLayout(row)
        lay.addWidget(self.speed)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(lambda: self.request_slice(quiet=True))
        napari_viewer.dims.events.current_step.connect(self._on_step)
        self.slice_btn.clicked.connect(lambda: self.request_slice())
        self.volume_btn.clicked.connect(self.segment_volume)
        self.session: Optional[_Session] = None
        self.result_layer = None
        self.busy = False
        self.wanted: Optional[int] = None
        self.dropped_stale = 0
        self.slices_done = 0
        self.last_ms: Optional[float] = None
        self.worker = None
        self.loading = False
        on_close(self, self._on_closed)
        C.widget_opened()

    def _on_closed(self) -> None:
        try:
            self._debounce.stop()
            self.live.value = False  # no more slices once the panel is closed
        except RuntimeError:  # the viewer is closing: its Qt objects are already gone
            pass

    def use_ready_made(self) -> None:
        """Pick the packaged hippocampus student (fetched into the user cache where not packaged)."""
        from ..io.ready_made import ReadyMadeError, model_path

        try:
            self.onnx.value = str(model_path("hippocampus_student", "onnx"))
        except ReadyMadeError as exc:
            C.show_error(str(exc))

    # -- inputs -------------------------------------------------------------------------------
    def _session(self, then) -> Optional[_Session]:
        """The loaded model, or None while it loads in a worker (``then`` runs when it is ready)."""
        path = C.path_value(self.onnx)
        if path is None or not path.exists():
            raise C.InputError(f"choose an exported .onnx student or a run folder (got {path or 'nothing'})")
        if self.session is not None and self.session.source == path:
            return self.session
        if not self.loading:
            self.loading = True
            self.status.setText(f"loading {path.name} ..." if path.is_file() else f"exporting / loading {path.name} ...")
            self.worker = C.start_worker(_Session, path, returned=lambda s: self._loaded(s, then),
                                         errored=self._load_failed)
        return None

    def _loaded(self, session: _Session, then) -> None:
        self.loading, self.session = False, session
        self.status.setText(f"model {session.path.name} ready")
        then()

    def _load_failed(self, exc) -> None:
        self.loading = False
        self.status.setText("failed")
        C.show_error(f"cannot load {C.path_value(self.onnx)}: {exc}")

    def _layer(self):
        layer = self.image_layer.value
        if layer is None:
            raise C.InputError("open an image layer first")
        return layer

    def _result_layer(self, layer):
        name = f"{layer.name} live"
        shape = C.spatial_shape(layer)
        lyr = self.result_layer
        if lyr is None or lyr not in self.viewer.layers or lyr.data.shape != shape:
            lyr = C.put_layer(self.viewer, "labels", np.zeros(shape, np.uint8), name, like=layer, opacity=0.6)
        self.result_layer = lyr
        return lyr

    # -- live slices --------------------------------------------------------------------------
    def _on_step(self, *_):
        if self.live.value and self.session is not None and self.image_layer.value is not None:
            self._debounce.start()

    def request_slice(self, quiet: bool = False) -> None:
        """Segment the slice in view (the button; scrolling calls it through the debounce timer)."""
        try:
            layer = self._layer()
            session = self._session(lambda: self.request_slice(quiet))
        except C.InputError as exc:
            if not quiet:  # scrolling never raises error pop-ups
                C.show_error(str(exc))
            return
        if session is None:
            return
        shape = C.spatial_shape(layer)
        self.wanted = C.current_index(self.viewer, layer, session.slice_axis) if len(shape) == 3 else 0
        if not self.busy:
            self._run_slice(layer, session, self.wanted)

    def _run_slice(self, layer, session: _Session, index: int) -> None:
        self.busy = True
        key = (id(layer), id(layer.data))
        img = C.image_from_layer(layer)
        self.worker = C.start_worker(_segment_slice, session, key, img, index,
                                     returned=lambda r: self._on_slice(r, layer, session), errored=self._failed)

    def _on_slice(self, res, layer, session: _Session) -> None:
        self.busy = False
        index, labels, ms = res
        if self.wanted is not None and index != self.wanted:  # the user moved on: drop, run the current one
            self.dropped_stale += 1
            if layer in self.viewer.layers:
                self._run_slice(layer, session, self.wanted)
            return
        lyr = self._result_layer(layer)
        if lyr.data.ndim == 3:
            sl = [slice(None)] * 3
            sl[session.slice_axis] = index
            lyr.data[tuple(sl)] = labels
        else:
            lyr.data[...] = labels
        lyr.refresh()
        self.slices_done += 1
        self.last_ms = ms
        self.speed.setText(f"ms per slice: {ms:.1f} (slice {index})")

    # -- whole volume -------------------------------------------------------------------------
    def segment_volume(self) -> None:
        try:
            layer = self._layer()
            session = self._session(self.segment_volume)
        except C.InputError as exc:
            C.show_error(str(exc))
            return
        if session is None:
            return
        self.busy = True
        self.volume_btn.setEnabled(False)
        self.status.setText("segmenting the volume ...")
        self.worker = C.start_worker(_segment_volume, session, C.image_from_layer(layer),
                                     returned=lambda r: self._on_volume(r, layer), errored=self._failed)

    def _on_volume(self, res, layer) -> None:
        self.busy = False
        self.volume_btn.setEnabled(True)
        labels, ms, seconds = res
        self.result_layer = C.put_layer(self.viewer, "labels", labels.astype(np.uint8, copy=False),
                                        f"{layer.name} live", like=layer, opacity=0.6)
        self.last_ms = ms
        self.speed.setText(f"ms per slice: {ms:.1f}; volume in {seconds:.2f} s")
        self.status.setText(f"segmented {layer.name}")

    def _failed(self, exc) -> None:
        self.busy = False
        self.volume_btn.setEnabled(True)
        self.status.setText("failed")
        C.show_error(f"ONNX inference failed: {exc}")
