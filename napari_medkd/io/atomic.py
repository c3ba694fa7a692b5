"""The one atomic-write routine: write to a temporary file beside the target, then ``os.replace``.

A reader never sees a partial file: an error (or a kill) leaves the old target, or none, plus at
most a hidden ``.NAME.*.tmp`` file beside it. Files get the permissions ``open()`` would give
(``mkstemp`` makes them private). Multi-file targets (a MetaImage header and its data file, a DICOM
series) are written into a :func:`staging_dir` and moved file by file.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(target: PathLike, *, overwrite: bool = True, check: Optional[Callable[[str], None]] = None
                ) -> Iterator[str]:
    """Yield a temporary path beside ``target``; when the block ends without error, ``check(tmp)`` runs
    (if given) and the file replaces ``target``. Raises ``FileExistsError`` if ``target`` exists (or
    appeared meanwhile) and ``overwrite`` is false."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        if check is not None:
            check(tmp)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, target)
    finally:
        for junk in (tmp, tmp + ".data"):
            if os.path.exists(junk):
                os.unlink(junk)


def write_bytes_atomic(target: PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    with atomic_path(target, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(target)


def write_text_atomic(target: PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write UTF-8 text atomically (every text file of the project is UTF-8)."""
    return write_bytes_atomic(target, text.encode("utf-8"), overwrite=overwrite)


@contextlib.contextmanager
def staging_dir(parent: PathLike, prefix: str = ".medkd-write-") -> Iterator[Path]:
    """A hidden temporary folder inside ``parent`` (created if missing), removed with what is left in it."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
