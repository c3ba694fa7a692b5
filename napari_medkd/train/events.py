"""JSON-lines event log shared by the CLI, the GUI and the benchmarks.

Each line is one JSON object with at least ``event`` and ``time``. Events: ``start``, ``stage``,
``iter`` (loss and every term), ``val`` (Dice per class), ``checkpoint``, ``end`` (status
finished|stopped|failed), ``error``.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

from ..io.jsonsafe import dumps, finite


def drop_partial_line(path: Path) -> None:
    """Cut a half-written last line (a writer killed mid-line) so that appending starts a new line."""
    try:
        fh = open(path, "rb+")
    except FileNotFoundError:
        return
    with fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        keep = size
        while keep > 0:  # back to the last newline, in blocks
            start = max(0, keep - 65536)
            fh.seek(start)
            block = fh.read(keep - start)
            i = block.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            keep = start
        fh.truncate(keep)


class EventLog:
    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            drop_partial_line(self.path)
        self._fh = open(self.path, "a", buffering=1, encoding="utf-8") if enabled else None

    def write(self, event: str, **fields: Any) -> Dict[str, Any]:
        rec = {"event": event, "time": time.time(), **finite(fields)}
        if self._fh is not None:
            self._fh.write(dumps(rec) + "\n")
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
