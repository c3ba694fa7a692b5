"""How Compare draws its layers: class colours, the teacher as contours and the student as fill,
disagreement colours that never repeat a class colour, a legend, and the grid of image + overlay."""
from __future__ import annotations

from typing import Dict, Mapping

from ..analysis.compare import DISAGREEMENT

#: class colours (blue, green, cyan, violet, ...): no orange, magenta or yellow, which mean disagreement
CLASS_COLORS = ("#3b82f6", "#22c55e", "#06b6d4", "#8b5cf6", "#14b8a6", "#60a5fa", "#84cc16", "#a78bfa")
DISAGREEMENT_COLORS = {1: "#ff8c00", 2: "#ff00ff", 3: "#ffff00"}  # teacher only, student only, other class
CONTOUR_PX = 2


def class_colors(names: Mapping[int, str]) -> Dict[int, str]:
    return {c: CLASS_COLORS[(c - 1) % len(CLASS_COLORS)] for c in sorted(names) if c != 0}


def _swatch(color: str, text: str, outline: bool = False) -> str:
    style = f"border:2px solid {color};" if outline else f"background:{color};"
    return (f"<span style='{style} color:{color}'>&nbsp;&nbsp;&nbsp;&nbsp;</span>&nbsp;{text}")


def legend_html(names: Mapping[int, str], teacher: str, student: str) -> str:
    """The legend under the Compare button: what each colour and style means."""
    cls = class_colors(names)
    rows = ["<b>Classes</b>: " + " &nbsp; ".join(_swatch(col, names.get(c, str(c))) for c, col in cls.items()),
            f"<b>Teacher</b> ({teacher}): outline &nbsp; <b>Student</b> ({student}): filled",
            "<b>Disagreement</b>: " + " &nbsp; ".join(_swatch(DISAGREEMENT_COLORS[k], v)
                                                      for k, v in DISAGREEMENT.items())]
    return "<br>".join(rows)
