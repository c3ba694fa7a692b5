"""The run folder of one training run: locked, prepared, cleaned, rolled back.

:func:`open_run_dir` takes the folder's lock (:class:`~napari_medkd.io.folder_lock.FolderLock`, held
for the life of the run) and then decides about it:

- a new run needs an empty folder, or one holding an earlier run that ended before its first
  checkpoint (failed or killed: nothing to lose), which is cleared and started again with a notice;
  ``overwrite`` clears an earlier run with checkpoints too. A folder holding files a run does not
  write is never cleared.
- a resumed run keeps its ``config.yaml`` (only the budget may be extended).

Either way the temporary files of writers killed in the folder (``.last.pt.*.tmp``,
``stages/.paraphraser.pt.*.tmp``, ``.medkd-write-*/``) are removed. :func:`rollback_metrics` cuts
``metrics.csv`` back to the iteration a resumed run continues from.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional, Tuple

from ..config import RunConfig, load_config
from ..io.atomic import is_leftover, remove_leftovers, write_text_atomic
from ..io.folder_lock import LOCK_NAME, FolderLock
from .events import read_events


class RunExistsError(FileExistsError):
    pass


#: what a run writes into its folder (the engine, the data checks, the bench's method record)
RUN_FILES = frozenset({"config.yaml", "events.jsonl", "metrics.csv", "last.pt", "best.pt", "STOP", "stages",
                       "method.json", "data_warnings.txt", LOCK_NAME})
#: what napari's Distil widget puts into a run folder before the run starts (the open layers as a
#: data set, the process's output): a new run accepts them and never clears them
INPUT_FILES = frozenset({"layers_data", "process.log"})


def _entries(run_dir: Path) -> List[Path]:
    """What the folder holds besides its lock file and killed writers' leftovers."""
    if not run_dir.is_dir():
        return []
    return [p for p in sorted(run_dir.iterdir()) if p.name != LOCK_NAME and not is_leftover(p)]


def checkpoints(run_dir: Path) -> List[Path]:
    """The run's checkpoints: ``last.pt``, ``best.pt`` and those of its pre-training stages."""
    found = [run_dir / n for n in ("last.pt", "best.pt") if (run_dir / n).is_file()]
    stages = run_dir / "stages"
    if stages.is_dir():
        found += [p for p in sorted(stages.glob("*.pt")) if not is_leftover(p)]
    return found


def _how_it_ended(run_dir: Path) -> str:
    events = read_events(run_dir / "events.jsonl")
    errors = [e.get("message") for e in events if e.get("event") == "error"]
    if errors:
        return f"failed: {errors[-1]}"
    ends = [e.get("status") for e in events if e.get("event") == "end"]
    return f"ended {ends[-1]}" if ends else "was killed"


def _clear(run_dir: Path) -> None:
    """Remove the earlier run's files (never the lock, never a file a run does not write)."""
    for p in _entries(run_dir):
        if p.name in RUN_FILES:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _new_run(run_dir: Path, overwrite: bool) -> List[str]:
    entries = [p for p in _entries(run_dir) if p.name not in INPUT_FILES]
    if not entries:
        return []
    foreign = [p.name for p in entries if p.name not in RUN_FILES | INPUT_FILES]
    if foreign:
        raise RunExistsError(f"run folder {run_dir} already exists and holds files a run does not write "
                             f"({', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}); choose another --out")
    saved = checkpoints(run_dir)
    if saved and not overwrite:
        raise RunExistsError(f"run folder {run_dir} already holds a run with checkpoints "
                             f"({', '.join(p.relative_to(run_dir).as_posix() for p in saved[:4])}); resume it "
                             f"with --resume {run_dir}, pass --overwrite to replace it, or choose another --out")
    how = _how_it_ended(run_dir)
    _clear(run_dir)
    if saved:
        return [f"replaced the earlier run in {run_dir} (--overwrite)"]
    return [f"{run_dir} held a run that {how} before its first checkpoint; starting it again"]


def _resumed(cfg: RunConfig, run_dir: Path) -> RunConfig:
    saved = load_config(run_dir / "config.yaml")
    # a resumed run keeps its data, model and method; only the budget may be extended
    saved.train.iterations = cfg.train.iterations or saved.train.iterations
    saved.train.epochs = cfg.train.epochs or saved.train.epochs
    saved.train.minutes = cfg.train.minutes or saved.train.minutes
    return saved


def prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool, overwrite: bool = False
                    ) -> Tuple[RunConfig, List[str]]:
    """The run's configuration and notices for the user; call it holding the folder's lock."""
    cfg, notes = (_resumed(cfg, run_dir), []) if resume else (cfg, _new_run(run_dir, overwrite))
    removed = remove_leftovers(run_dir, recursive=True)
    if removed:
        notes.append(f"removed {len(removed)} temporary file(s) left by a killed writer: "
                     + ", ".join(p.relative_to(run_dir).as_posix() for p in removed[:5]))
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg, notes


def open_run_dir(cfg: RunConfig, run_dir: Path, resume: bool, overwrite: bool = False
                 ) -> Tuple[RunConfig, FolderLock, List[str]]:
    """Lock ``run_dir`` (a second process gets a clear error naming the folder and its owner) and
    prepare it; the caller releases the lock when the run ends."""
    if resume and not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"cannot resume: {run_dir} holds no config.yaml (not a run folder)")
    if resume and overwrite:
        raise ValueError("--overwrite starts a new run; it cannot be combined with --resume")
    lock = FolderLock(run_dir, "run folder").acquire()
    try:
        cfg, notes = prepare_run_dir(cfg, run_dir, resume, overwrite)
    except BaseException:
        lock.release()
        raise
    if lock.took_over:
        notes.insert(0, f"took over the lock of PID {lock.took_over.get('pid')} on host "
                        f"{lock.took_over.get('host')}, which ended without releasing it (killed or crashed)")
    return cfg, lock, notes


def _iteration(line: str) -> Optional[int]:
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        return None


def rollback_metrics(path: Path, it: int) -> int:
    """Cut ``metrics.csv`` back to iteration ``it`` (a resumed run re-does the later validations), dropping a
    half-written last row and repeated iterations; returns the rows dropped."""
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if not lines or not lines[0].endswith("\n"):  # nothing, or a half-written header
        path.unlink()
        return 0
    keep, seen = [], set()
    for line in lines[1:]:
        n = _iteration(line)
        if line.endswith("\n") and n is not None and n <= it and n not in seen:
            seen.add(n)
            keep.append(line)
    if len(keep) != len(lines) - 1:
        write_text_atomic(path, lines[0] + "".join(keep))
    return len(lines) - 1 - len(keep)
