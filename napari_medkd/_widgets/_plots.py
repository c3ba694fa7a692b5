"""Matplotlib plots for the widgets: live loss / Dice curves and affinity matrices, drawn off the
GUI thread (``_figure.OffThreadFigure``) and at most every ``redraw_ms``."""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ._figure import OffThreadFigure

BG, FG = "#262930", "#d0d4dc"


def style_axes(ax, title: str = "") -> None:
    ax.set_facecolor(BG)
    for spine in ax.spines.values():
        spine.set_color(FG)
    ax.tick_params(colors=FG, labelsize=7)
    ax.xaxis.label.set_color(FG)
    ax.yaxis.label.set_color(FG)
    if title:
        ax.set_title(title, color=FG, fontsize=8)


class CurvePlot(QWidget):
    """Loss (and every distillation term) per iteration, validation Dice per validation.

    Lines are updated in place and drawn at most every ``redraw_ms`` (a full matplotlib redraw of
    the figure would otherwise stall napari's event loop during a run).
    """

    def __init__(self, parent=None, redraw_ms: int = 1500):
        super().__init__(parent)
        self.canvas = OffThreadFigure(4.0, 3.2, self, constrained=False)
        self.fig = self.canvas.fig  # touched only in the canvas's drawing thread (submit)
        self.fig.subplots_adjust(left=0.14, right=0.97, top=0.93, bottom=0.12, hspace=0.45)
        self.setMinimumHeight(240)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.ax_loss = self.fig.add_subplot(2, 1, 1)
        self.ax_dice = self.fig.add_subplot(2, 1, 2)
        self.series: Dict[str, Tuple[List[float], List[float]]] = {}
        self.dice: Tuple[List[float], List[float]] = ([], [])
        self.offset = 0.0  # iterations of earlier phases (teacher training) shown before this one
        self.phase_marks: List[Tuple[float, str]] = []
        self._timer = QTimer(self)
        self._timer.setInterval(redraw_ms)
        self._timer.timeout.connect(self._redraw_if_dirty)
        self._timer.start()
        self.clear()

    def clear(self) -> None:
        self.series = {}
        self.dice = ([], [])
        self.offset = 0.0
        self.phase_marks = []
        self._lines: Dict[str, object] = {}
        self._legend_dirty = False
        self._dirty = True
        self.canvas.submit(self._clear_axes)

    def _clear_axes(self, _fig) -> None:
        for ax in (self.ax_loss, self.ax_dice):
            ax.clear()
        style_axes(self.ax_loss, "loss and distillation terms")
        style_axes(self.ax_dice, "validation Dice (mean over classes)")
        self.ax_dice.set_ylim(0, 1)
        self.ax_dice.set_xlabel("iteration")
        (self._dice_line,) = self.ax_dice.plot([], [], "o-", color="#7fd67f", ms=3)
        self._lines = {}

    def new_phase(self, label: str) -> None:
        """Continue the x axis after the previous phase (e.g. teacher training, then distillation)."""
        last = max((xs[-1] for xs, _ in self.series.values() if xs), default=0.0)
        self.offset = last
        self.phase_marks.append((last, label))

        def mark(_fig):
            for ax in (self.ax_loss, self.ax_dice):
                ax.axvline(last, color="#888888", ls="--", lw=0.8)
            self.ax_dice.text(last, 0.95, f" {label}", color=FG, fontsize=6, va="top")
        self.canvas.submit(mark)
        self._dirty = True

    def add_event(self, ev: Mapping) -> None:
        kind = ev.get("event")
        if kind == "iter":
            x = self.offset + float(ev["iter"])
            values = {"loss": ev.get("loss")}
            values.update({k: v for k, v in (ev.get("terms") or {}).items() if "." not in k})
            for name, v in values.items():
                if v is None or not math.isfinite(float(v)):
                    continue
                if name not in self.series:
                    self.series[name] = ([], [])
                xs, ys = self.series[name]
                xs.append(x)
                ys.append(float(v))
            self._dirty = True
        elif kind == "val" and ev.get("dice_mean") is not None:
            self.dice[0].append(self.offset + float(ev["iter"]))
            self.dice[1].append(float(ev["dice_mean"]))
            self._dirty = True

    def _redraw_if_dirty(self) -> None:
        if self._dirty:
            self.redraw()

    def redraw(self) -> None:
        """Hand a copy of the series to the drawing thread (never draws on the GUI thread)."""
        self._dirty = False
        series = {k: (list(xs), list(ys)) for k, (xs, ys) in self.series.items()}
        dice = (list(self.dice[0]), list(self.dice[1]))
        self.canvas.submit(lambda _fig: self._update(series, dice))

    def _update(self, series, dice) -> None:
        positive = True
        for name, (xs, ys) in series.items():
            if name not in self._lines:
                (self._lines[name],) = self.ax_loss.plot([], [], lw=1.0, label=name)
                self._legend_dirty = True
            self._lines[name].set_data(xs, ys)
            positive &= min(ys, default=1.0) > 0
        if series:
            scale = "log" if positive else "linear"
            if self.ax_loss.get_yscale() != scale:
                self.ax_loss.set_yscale(scale)
            self.ax_loss.relim()
            self.ax_loss.autoscale_view()
            if self._legend_dirty:
                self.ax_loss.legend(fontsize=6, loc="upper right", facecolor=BG, labelcolor=FG, ncol=2)
                self._legend_dirty = False
        self._dice_line.set_data(*dice)
        ends = [xs[-1] for xs, _ in series.values() if xs] + dice[0][-1:]
        if ends:
            self.ax_dice.set_xlim(0, max(1.0, max(ends)))


class MatrixPlot(QWidget):
    """Side-by-side matrices (affinities and their difference) with colour bars."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.canvas = OffThreadFigure(6.0, 2.6, self)
        self.fig = self.canvas.fig  # touched only in the canvas's drawing thread
        self.setMinimumHeight(260)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.titles: List[str] = []

    def show_matrices(self, mats: Mapping[str, np.ndarray], labels: Optional[List[str]] = None) -> None:
        self.titles = list(mats)
        mats = {k: np.array(v, dtype=float) for k, v in mats.items()}
        self.canvas.submit(lambda fig: self._draw(fig, mats, labels))

    def _draw(self, fig, mats, labels) -> None:
        fig.clear()
        self.fig = fig
        n = max(1, len(mats))
        for i, (title, m) in enumerate(mats.items()):
            ax = self.fig.add_subplot(1, n, i + 1)
            style_axes(ax, title)
            m = np.asarray(m, dtype=float)
            if "diff" in title.lower():
                lim = float(np.nanmax(np.abs(m))) if m.size else 1.0
                im = ax.imshow(m, cmap="RdBu_r", vmin=-lim or -1, vmax=lim or 1, interpolation="nearest")
            else:
                im = ax.imshow(m, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
            if labels and len(labels) == m.shape[0] and len(labels) <= 12:
                ax.set_xticks(range(len(labels)), labels, rotation=90)
                ax.set_yticks(range(len(labels)), labels)
            cb = self.fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            cb.ax.tick_params(colors=FG, labelsize=6)
