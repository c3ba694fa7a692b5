"""JSON-lines event log shared by the CLI, the GUI and the benchmarks.

Each line is one JSON object with at least ``event`` and ``time``. Events: ``start``, ``stage``,
``iter`` (loss and every term), ``val`` (Dice per class), ``checkpoint``, ``end`` (status
finished|stopped|failed), ``error``.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class EventLog:
    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._fh = open(self.path, "a", buffering=1, encoding="utf-8") if enabled else None

    def write(self, event: str, **fields: Any) -> Dict[str, Any]:
        rec = {"event": event, "time": time.time(), **_clean(fields)}
        if self._fh is not None:
            self._fh.write(json.dumps(rec) + "\n")
        return rec

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_events(path: str | Path) -> List[Dict[str, Any]]:
    """All complete events in the file (a half-written last line is skipped)."""
    return list(iter_events(path))


def iter_events(path: str | Path, start: int = 0) -> Iterator[Dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return
    with open(p, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < start or not line.endswith("\n"):
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
