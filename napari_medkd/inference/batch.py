"""Segmenting many files (``predict``, ``infer``): every file is tried, the failures are reported at the end,
and a batch resumes with ``skip_existing``.

Before anything is written, every target is known: two inputs may not share one, and an existing
target is refused unless ``overwrite`` (replace it) or ``skip_existing`` (keep it: a re-run finishes an
interrupted batch) is given. A batch into a folder holds that folder's lock (one batch writes there at
a time) and first removes what killed writers left there. A file that cannot be read or segmented is
recorded with the reason and the batch goes on; :class:`BatchError` lists them all at the end. A
single input written to a file name fails with its own error.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..io.atomic import remove_leftovers
from ..io.folder_lock import FolderLock
from .predict_files import list_inputs, mask_name, predict_path

#: errors after which no later file can be written either: the batch stops
_FATAL_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT}


@dataclass
class BatchReport:
    inputs: int = 0
    results: List[Any] = field(default_factory=list)
    skipped: List[Path] = field(default_factory=list)
    failed: List[Tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.results)} written, {len(self.skipped)} skipped (existing), "
                f"{len(self.failed)} failed of {self.inputs} input(s)")


class BatchError(RuntimeError):
    """Some files of a batch failed; ``report`` holds what was written, skipped and failed (with reasons)."""

    def __init__(self, report: BatchReport):
        self.report = report
        lines = [f"{src}: {why}" for src, why in report.failed]
        super().__init__(f"{len(report.failed)} of {report.inputs} file(s) failed ({report.summary()}):\n  "
                         + "\n  ".join(lines))


def output_targets(inputs: Sequence[Path], src: Path, output: Path) -> List[Path]:
    """Where each input's mask goes: ``output`` itself for one input and a file name, else ``output/<mask_name>``."""
    single = len(inputs) == 1 and not (src.is_dir() and inputs[0] != src) and output.suffix != ""
    return [output] if single else [output / mask_name(f) for f in inputs]


def plan(src: Path, output: Path, overwrite: bool = False, skip_existing: bool = False
         ) -> Tuple[List[Path], List[Path]]:
    """Inputs and their targets; refuses shared targets, and existing ones unless asked."""
    if overwrite and skip_existing:
        raise ValueError("--overwrite replaces existing masks and --skip-existing keeps them; give one")
    inputs = list_inputs(src)
    targets = output_targets(inputs, src, output)
    seen: Dict[Path, Path] = {}
    for f, t in zip(inputs, targets):
        if t in seen:
            raise FileExistsError(f"{seen[t]} and {f} would both be written to {t}; segment them separately")
        seen[t] = f
    clash = [str(t) for t in targets if t.exists()] if not (overwrite or skip_existing) else []
    if clash:
        raise FileExistsError(f"{', '.join(clash[:5])}{' ...' if len(clash) > 5 else ''} exist(s); pass "
                              "overwrite=True (--overwrite) to replace, or skip_existing=True (--skip-existing) "
                              "to keep them and segment the rest")
    return inputs, targets


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


def _segment_all(inputs, targets, one: Callable[[Path, Path], Any], report: BatchReport, single: bool,
                 skip_existing: bool, on_result) -> None:
    for i, (f, t) in enumerate(zip(inputs, targets)):
        if skip_existing and t.exists():
            report.skipped.append(t)
            continue
        try:
            r = one(f, t)
        except Exception as exc:  # noqa: BLE001 - recorded with its reason; the batch goes on
            if single:
                raise
            report.failed.append((f, _reason(exc)))
            if isinstance(exc, OSError) and exc.errno in _FATAL_ERRNOS:
                report.failed += [(g, "not tried: the output cannot be written") for g in inputs[i + 1:]]
                return
            continue
        report.results.append(r)
        if on_result is not None:
            on_result(r)


def run_batch(src: Path, output: Path, one: Callable[[Path, Path], Any], *, overwrite: bool = False,
              skip_existing: bool = False, on_result: Optional[Callable[[Any], None]] = None) -> BatchReport:
    """``one(input, target)`` for every input of ``src`` (see the module's text); raises :class:`BatchError`
    after the last file when some failed."""
    src, output = Path(src), Path(output)
    inputs, targets = plan(src, output, overwrite, skip_existing)
    report = BatchReport(inputs=len(inputs))
    single = targets == [output]
    lock = None if single else FolderLock(output, "output folder").acquire()
    try:
        if lock is not None:
            remove_leftovers(output)
        _segment_all(inputs, targets, one, report, single, skip_existing, on_result)
    finally:
        if lock is not None:
            lock.release()
    if report.failed:
        raise BatchError(report)
    return report


def predict_batch(lm, src: Path, output: Path, *, overwrite: bool = False, skip_existing: bool = False,
                  series: Optional[str] = None, on_result: Optional[Callable[[Any], None]] = None) -> BatchReport:
    """``medkd predict``: segment ``src`` (a file, a DICOM folder or a folder of them; ``series``: which DICOM
    series) with the torch model ``lm`` into ``output``; each result is a
    :class:`~napari_medkd.inference.predict_files.Prediction`."""
    return run_batch(src, output, lambda f, t: predict_path(lm, f, t, overwrite=overwrite, series=series),
                     overwrite=overwrite, skip_existing=skip_existing, on_result=on_result)
