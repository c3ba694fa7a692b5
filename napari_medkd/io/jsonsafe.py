"""JSON that is JSON: ``NaN`` and infinities become ``null`` (Python's ``json`` writes bare ``NaN``,
which no strict reader accepts), NumPy scalars become plain numbers."""
from __future__ import annotations

import json
import math
from typing import Any


def finite(v: Any) -> Any:
    """``v`` with every non-finite float replaced by None, recursively through dicts, lists and tuples."""
    if type(v).__module__ == "numpy" and hasattr(v, "item") and getattr(v, "ndim", None) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite(x) for x in v]
    return v


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite` ``(obj)`` with ``allow_nan=False`` (a NaN that slipped through fails)."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
