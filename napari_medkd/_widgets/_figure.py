"""A matplotlib figure drawn off napari's GUI thread.

Drawing a figure with text and colour bars takes 0.1-1 s of Python on a busy CPU; on the GUI thread
that freezes napari. :class:`OffThreadFigure` owns a figure that only its one background thread
touches: :meth:`submit` queues ``fn(fig)`` (change the figure), the thread draws it with Agg, and the
picture arrives on the GUI thread through a queued signal and is shown in a QLabel. While a drawing
is under way, further submissions are coalesced: only the latest change runs after it.
"""
from __future__ import annotations

import threading
from typing import Callable, List, Optional

import numpy as np
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QLabel, QSizePolicy

BG = "#262930"
DPI = 100


class _Bridge(QObject):
    ready = Signal(object)


class OffThreadFigure(QLabel):
    def __init__(self, width: float, height: float, parent=None, constrained: bool = True):
        super().__init__(parent)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(width, height), dpi=DPI, facecolor=BG, layout="constrained" if constrained else None)
        self._agg = FigureCanvasAgg(self.fig)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(120, 80)
        self._bridge = _Bridge(self)
        self._bridge.ready.connect(self._show)
        self._lock = threading.Lock()
        self._pending: List[Callable] = []
        self._busy = False
        self.drawn = 0  # pictures shown (tests wait on it)

    def submit(self, fn: Optional[Callable] = None) -> None:
        """Queue ``fn(fig)`` (None: just redraw) and draw in the background thread."""
        with self._lock:
            if fn is not None:
                self._pending.append(fn)
            if self._busy:
                return
            self._busy = True
        size = (max(120, self.width()), max(80, self.height()))
        threading.Thread(target=self._draw, args=(size,), daemon=True).start()

    def _draw(self, size) -> None:
        while True:
            with self._lock:
                todo, self._pending = self._pending, []
            try:
                for fn in todo:
                    fn(self.fig)
                self.fig.set_size_inches(size[0] / DPI, size[1] / DPI)
                self._agg.draw()
                img = np.asarray(self._agg.buffer_rgba()).copy()
            except Exception:  # noqa: BLE001 - a bad drawing must not kill the thread's loop
                img = None
            with self._lock:
                if not self._pending:
                    self._busy = False
                    break
        if img is not None:
            try:
                self._bridge.ready.emit(img)
            except RuntimeError:  # the widget is gone
                pass

    def _show(self, img: np.ndarray) -> None:
        h, w = img.shape[:2]
        qimg = QImage(img.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
        pix = QPixmap.fromImage(qimg)
        if pix.width() > self.width() or pix.height() > self.height():  # drawn for another size
            pix = pix.scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio,
                             Qt.TransformationMode.SmoothTransformation)
        self.setPixmap(pix)
        self.drawn += 1

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self.submit()
