"""A small Dice bar chart: one group of bars per class, one bar per compared pair."""
from __future__ import annotations

import math
from typing import Dict, List, Mapping

from qtpy.QtWidgets import QVBoxLayout, QWidget

from ._figure import OffThreadFigure
from ._plots import FG, style_axes

PAIR_COLORS = {"teacher vs truth": "#9ca3af", "student vs truth": "#3b82f6", "student vs teacher": "#f59e0b"}


class DiceChart(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.canvas = OffThreadFigure(3.6, 1.9, self)
        self.setMinimumHeight(150)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)
        self.bars: Dict[str, List[float]] = {}

    def show_metrics(self, metrics: Mapping[str, Mapping[int, Mapping[str, float]]], names: Mapping[int, str]) -> None:
        """``metrics[pair][class]["dice"]``; a class without a Dice (absent in both) gets no bar."""
        pairs = list(metrics)
        classes = sorted(next(iter(metrics.values()))) if pairs else []
        self.bars = {pair: [metrics[pair][c].get("dice", math.nan) for c in classes] for pair in pairs}
        bars, names = dict(self.bars), dict(names)
        self.canvas.submit(lambda fig: self._draw(fig, bars, classes, names))

    @staticmethod
    def _draw(fig, bars, classes, names) -> None:
        fig.clear()
        ax = fig.add_subplot(1, 1, 1)
        style_axes(ax, "Dice per class (1 = identical)")
        pairs = list(bars)
        width = 0.8 / max(1, len(pairs))
        for k, pair in enumerate(pairs):
            vals = bars[pair]
            xs = [i + (k - (len(pairs) - 1) / 2) * width for i in range(len(classes))]
            ax.bar(xs, [0 if not math.isfinite(v) else v for v in vals], width, label=pair,
                   color=PAIR_COLORS.get(pair, FG))
        ax.set_xticks(range(len(classes)), [names.get(c, str(c)) for c in classes])
        ax.set_ylim(0, 1)
        ax.set_ylabel("Dice", fontsize=7)
        leg = ax.legend(fontsize=6, loc="lower right", facecolor="#262930", edgecolor=FG)
        for t in leg.get_texts():
            t.set_color(FG)
