"""The one atomic-write routine: write to a temporary file beside the target, then ``os.replace``.

A reader never sees a partial file: an error (or a kill) leaves the old target, or none, plus at
most a hidden ``.NAME.*.tmp`` file beside it. Files get the permissions ``open()`` would give
(``mkstemp`` makes them private). Multi-file targets (a MetaImage header and its data file, a DICOM
series) are written into a :func:`staging_dir` and moved file by file.

A write that fails (a full disk, a file-size limit, a read-only folder, a parent that is a file) raises
an ``OSError`` that names the user's target, never a temporary name, with the operating system's
reason (``str(exc)`` or :func:`describe_os_error`); :func:`write_error_of` finds that reason for
writers that only print their failures (SimpleITK).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def describe_os_error(exc: OSError) -> str:
    """One line for an ``OSError``: ``PATH: reason`` (the reason in lower case), or its own message when
    it carries no errno (the ``FileExistsError``/``FileNotFoundError`` messages written in this package)."""
    if exc.errno is None or not exc.strerror:
        return str(exc)
    reason = exc.strerror[:1].lower() + exc.strerror[1:]
    return f"{exc.filename}: {reason}" if exc.filename is not None else reason


def named_error(exc: OSError, target: PathLike) -> OSError:
    """``exc``, raised on a temporary file or folder of ours, as the same kind of error naming ``target``."""
    target = Path(target)
    reason = (exc.strerror or str(exc)).rstrip(".")
    if exc.errno == errno.ENOENT and target.parent.is_dir():
        reason = f"{target.parent} does not accept new files"  # /proc, /sys and the like
    else:
        reason = reason[:1].lower() + reason[1:]
    try:
        return type(exc)(exc.errno, f"cannot write: {reason}", str(target))
    except TypeError:  # an OSError subclass with its own constructor
        return OSError(exc.errno, f"cannot write: {reason}", str(target))


def is_write_error(exc: BaseException, temps) -> bool:
    """Whether ``exc`` is an ``OSError`` of writing one of ``temps`` (a failed write names no file)."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return False
    if exc.filename is None:
        return exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO, errno.EROFS)
    return str(exc.filename) in {str(t) for t in temps}


def _file_in_the_way(folder: Path) -> Optional[Path]:
    """The first existing part of ``folder`` (itself or a parent) if it is not a folder."""
    for part in (folder, *folder.parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def make_folder(folder: PathLike, for_path: Optional[PathLike] = None) -> Path:
    """Create ``folder`` and its parents. An ``OSError`` names ``for_path`` (the file the caller wants
    to write there; default the folder) and, when part of the path is a file, says which part."""
    folder = Path(folder)
    named = Path(for_path) if for_path is not None else folder
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        kind = "a file" if blocker.is_file() else "not a regular folder"
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write: {blocker} is {kind}, not a folder", str(named))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise named_error(exc, named) from exc
    return folder


def write_error_of(path: PathLike, size: int = 1 << 20) -> Optional[OSError]:
    """The operating system's reason why writing ``path`` (a temporary file of ours, discarded after)
    fails now, or None: appends ``size`` zero bytes and syncs. For writers that only print their
    failures (SimpleITK: ``NWAD: wrote only N of M bytes``): no space left, file too large, ..."""
    try:
        with open(path, "ab") as fh:
            fh.write(bytes(size))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return exc
    return None


def _temp_file(target: Path) -> str:
    make_folder(target.parent, target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise named_error(exc, target) from exc
    os.close(fd)
    return tmp


def _replace(tmp: str, target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    try:
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, target)
    except OSError as exc:
        raise named_error(exc, target) from exc


@contextlib.contextmanager
def atomic_path(target: PathLike, *, overwrite: bool = True, check: Optional[Callable[[str], None]] = None
                ) -> Iterator[str]:
    """Yield a temporary path beside ``target``; when the block ends without error, ``check(tmp)`` runs
    (if given) and the file replaces ``target``. Raises ``FileExistsError`` if ``target`` exists (or
    appeared meanwhile) and ``overwrite`` is false; an ``OSError`` of writing names ``target``."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
    tmp = _temp_file(target)
    try:
        try:
            yield tmp
            if check is not None:
                check(tmp)
        except OSError as exc:
            if is_write_error(exc, (tmp, tmp + ".data")):
                raise named_error(exc, target) from exc
            raise
        _replace(tmp, target, overwrite)
    finally:
        for junk in (tmp, tmp + ".data"):
            if os.path.exists(junk):
                os.unlink(junk)


def _write_fully(fh, data) -> None:
    """Write ``data`` to the open file and sync it; a short write is an error (``ENOSPC``)."""
    view = memoryview(data)
    fh.write(view)
    fh.flush()
    os.fsync(fh.fileno())
    size = os.fstat(fh.fileno()).st_size
    if size != view.nbytes:
        raise OSError(errno.ENOSPC, f"only {size} of {view.nbytes} bytes were written")


def write_bytes_atomic(target: PathLike, data, *, overwrite: bool = True) -> Path:
    """Write ``data`` (bytes or any buffer) atomically; the written size is checked before the rename."""
    with atomic_path(target, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:
            _write_fully(fh, data)
    return Path(target)


def write_text_atomic(target: PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write UTF-8 text atomically (every text file of the project is UTF-8)."""
    return write_bytes_atomic(target, text.encode("utf-8"), overwrite=overwrite)


@contextlib.contextmanager
def staging_dir(parent: PathLike, prefix: str = ".medkd-write-", target: Optional[PathLike] = None
                ) -> Iterator[Path]:
    """A hidden temporary folder inside ``parent`` (created if missing), removed with what is left in it.
    An ``OSError`` in making it names ``target`` (what the caller writes there; default ``parent``)."""
    parent = Path(parent)
    named = target if target is not None else parent
    make_folder(parent, named)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as exc:
        raise named_error(exc, named) from exc
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: what a killed writer leaves: ``atomic_path``'s ``.NAME.XXXXXXXX.tmp`` (and its ``.data`` companion) and
#: ``staging_dir``'s ``.medkd-write-XXXXXXXX/`` (``tempfile``'s 8 random characters)
_LEFTOVER = re.compile(r"^(\..+\.[a-z0-9_]{8}\.tmp(\.data)?|\.medkd-write-[a-z0-9_]{8})$")


def is_leftover(path: PathLike) -> bool:
    """True for a temporary file or staging folder of this module's writers (by name only)."""
    return bool(_LEFTOVER.match(Path(path).name))


def remove_leftovers(folder: PathLike, recursive: bool = False) -> list:
    """Remove what killed writers left in ``folder`` (and its sub-folders if ``recursive``): only names
    :func:`is_leftover` matches. Call it while no writer of this process or another works there (under
    the folder's lock). Returns the paths removed."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        if is_leftover(entry):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
        elif recursive and entry.is_dir() and not entry.is_symlink():
            removed += remove_leftovers(entry, recursive=True)
    return removed
