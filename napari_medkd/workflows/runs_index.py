"""The runs in a runs folder, newest first: model, method, teacher, best Dice, status, date; and
deleting one (refused while it runs). What napari's runs browser lists; no Qt here."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ..config import ConfigError, load_config
from ..export.run_export import exported_onnx
from ..io.folder_lock import FolderLock, FolderLockedError
from ..train.events import read_events


@dataclass
class RunRow:
    path: Path
    model: str
    method: str          # "" for a run without a teacher (trained, not distilled)
    teacher: str
    dice: Optional[float]  # best validation Dice (mean over classes), None before any validation
    status: str          # finished | stopped | failed | running or killed
    date: str            # when the run started (its config was written), local time
    started: float
    onnx: Optional[Path]

    @property
    def name(self) -> str:
        return self.path.name


def _best_dice(events) -> Optional[float]:
    ends = [e for e in events if e.get("event") == "end" and e.get("best_dice") is not None]
    if ends:
        return float(ends[-1]["best_dice"])
    vals = [float(e["dice_mean"]) for e in events if e.get("event") == "val" and e.get("dice_mean") is not None]
    return max(vals) if vals else None


def read_run(path: Path) -> Optional[RunRow]:
    """A row for a run folder (one holding ``config.yaml``), else None."""
    cfg_path = Path(path) / "config.yaml"
    if not cfg_path.is_file():
        return None
    try:
        cfg = load_config(cfg_path)
    except ConfigError:
        return None
    events = read_events(Path(path) / "events.jsonl")
    ends = [e.get("status") for e in events if e.get("event") == "end"]
    started = cfg_path.stat().st_mtime
    method = cfg.distill.method or ("custom terms" if cfg.distill.terms else "")
    return RunRow(Path(path), cfg.model.name, method if cfg.distill.teacher else "", cfg.distill.teacher or "",
                  _best_dice(events), ends[-1] if ends else "running or killed",
                  time.strftime("%Y-%m-%d %H:%M", time.localtime(started)), started, exported_onnx(path))


def list_runs(root) -> List[RunRow]:
    """Every run folder directly inside ``root``, newest first."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    rows = [read_run(p) for p in root.iterdir() if p.is_dir()]
    return sorted((r for r in rows if r is not None), key=lambda r: r.started, reverse=True)


def delete_run(path) -> None:
    """Delete a run folder (and the requested config the widget wrote beside it). Refused for a folder
    that is not a run, and for a run that is running (its folder lock is held)."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise ValueError(f"{path} is not a run folder (no config.yaml); not deleted")
    try:
        FolderLock(path, "run folder").acquire().release()
    except FolderLockedError as exc:
        raise ValueError(f"{path} is in use, not deleted: {exc}") from exc
    shutil.rmtree(path)
    beside = path.with_name(path.name + ".requested.yaml")
    if beside.is_file():
        beside.unlink()
