"""A teacher's outputs on disk: computed once per scan, reused by every student and every resumed run.

Layout: ``ROOT/<teacher fingerprint>/`` holds ``teacher.json`` (what the teacher is) and one shard per
scan, ``<key>.npy``: the teacher's logits ``(K, *spatial)`` of the fixed view (the prepared image, padded
to the patch size), float16, opened memory-mapped, so a data set larger than memory trains from disk.
``key`` hashes the scan file's content (not its name or place) with the view: the preprocessing, the
padded shape, the slice axis. The fingerprint hashes the teacher's files (``Teacher.fingerprint``), so
a changed teacher file gets a new folder, and the folders of earlier versions of the same teacher
(same ``source``) are removed then.

Each shard is written to ``.<key>.<pid>.part`` and renamed into place after an ``fsync``: a killed build
leaves whole shards (reused by the next run, which computes only the rest) and part files, which the next
build removes once their process is gone. Two processes building at once may both compute a shard; the
rename makes either result the one kept.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..io.atomic import write_text_atomic
from ..io.folder_lock import pid_running
from .base import Teacher, sha256_of

_FILE_HASHES: Dict[Tuple[str, int, int], str] = {}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "napari-medkd" / "teacher_outputs"


def content_hash(case) -> str:
    """SHA-256 of the scan's file (a DICOM folder: its files), remembered per path, size and time; of the
    image array when the case has no file."""
    path = Path(str(getattr(case.reference, "path", "") or ""))
    if not str(path) or not path.exists():
        return hashlib.sha256(np.ascontiguousarray(case.image).tobytes()).hexdigest()
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_HASHES:
        _FILE_HASHES[memo] = sha256_of([path])
    return _FILE_HASHES[memo]


class TeacherCache:
    """The shard folder of one teacher under ``root``."""

    def __init__(self, root, teacher: Teacher):
        self.root = Path(root).expanduser()
        self.teacher = teacher
        self.dir = self.root / teacher.fingerprint()[:24]

    def open(self) -> List[Path]:
        """Make the folder, record the teacher, remove dead part files and earlier versions of this teacher
        (returns the folders removed)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        me = self._source()
        if not (self.dir / "teacher.json").is_file():
            write_text_atomic(self.dir / "teacher.json", json.dumps(
                {"source": me, "kind": self.teacher.kind, "sha256": self.teacher.file_hash(),
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
        for part in self.dir.glob(".*.part"):
            pid = part.name.rsplit(".", 2)[-2]
            if not (pid.isdigit() and pid_running(int(pid))):
                part.unlink(missing_ok=True)
        removed = []
        for other in self.root.iterdir():
            if other != self.dir and other.is_dir() and self._source_of(other) == me:
                shutil.rmtree(other, ignore_errors=True)
                removed.append(other)
        return removed

    def _source(self) -> str:
        src = self.teacher.source
        return src if src.startswith("python:") else str(Path(src).expanduser().resolve())

    @staticmethod
    def _source_of(folder: Path) -> Optional[str]:
        try:
            return json.loads((folder / "teacher.json").read_text(encoding="utf-8")).get("source")
        except (OSError, ValueError, AttributeError):
            return None

    def key(self, case, view: Dict[str, Any]) -> str:
        facts = json.dumps({"file": content_hash(case), "view": view}, sort_keys=True, default=str)
        return hashlib.sha256(facts.encode()).hexdigest()[:32]

    def load(self, key: str, shape: Sequence[int]) -> Optional[np.ndarray]:
        """The shard, memory-mapped, if it is there and whole (a damaged one is removed)."""
        path = self.dir / f"{key}.npy"
        if not path.is_file():
            return None
        try:
            arr = np.load(path, mmap_mode="r")
            if arr.dtype == np.float16 and tuple(arr.shape[1:]) == tuple(shape):
                return arr
        except (OSError, ValueError):
            pass
        path.unlink(missing_ok=True)
        return None

    def store(self, key: str, logits: np.ndarray) -> np.ndarray:
        """Write one shard (fp16) atomically and return it memory-mapped."""
        path = self.dir / f"{key}.npy"
        part = self.dir / f".{key}.{os.getpid()}.part"
        try:
            arr = np.lib.format.open_memmap(part, mode="w+", dtype=np.float16, shape=tuple(logits.shape))
            arr[...] = logits
            arr.flush()
            del arr
            with open(part, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
        return np.load(path, mmap_mode="r")


def cached_logits(teacher: Teacher, cases: Sequence, root, *, view: Dict[str, Any],
                  compute: Callable[[Any], np.ndarray]) -> Tuple[List[np.ndarray], Dict[str, Any]]:
    """The teacher's logits of every case from the cache under ``root``, computing (``compute(case)``) and
    storing the missing ones; with what was done: folder, computed, reused, seconds, megabytes."""
    t0 = time.time()
    cache = TeacherCache(root, teacher)
    removed = cache.open()
    out, computed = [], 0
    for case in cases:
        key = cache.key(case, {**view, "shape": list(case.image.shape)})
        arr = cache.load(key, case.image.shape[1:])
        if arr is None:
            arr = cache.store(key, compute(case))
            computed += 1
        out.append(arr)
    return out, {"folder": str(cache.dir), "computed": computed, "reused": len(cases) - computed,
                 "removed_versions": len(removed), "seconds": round(time.time() - t0, 2),
                 "megabytes": round(sum(a.nbytes for a in out) / 2 ** 20, 1)}
