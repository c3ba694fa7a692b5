"""What a path is, said plainly: a missing file, a folder, a FIFO, a device or a broken link are each
reported as what they are (a FIFO or a link to ``/dev/zero`` is not "missing")."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, os.PathLike]

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def path_kind(path: PathLike) -> str:
    """``a regular file``, ``a folder``, ``a FIFO (named pipe)``, ``a character device``, ... or
    ``missing``; a link is described by what it points to, ``a broken link`` if nothing."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        return "a broken link" if p.is_symlink() else "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_a_regular_file(path: PathLike, what: str = "file") -> Optional[str]:
    """None if ``path`` is a regular file (or a link to one), else one sentence saying what it is."""
    p = Path(path)
    kind = path_kind(p)
    if kind == "a regular file":
        return None
    if kind == "missing":
        return f"{what} {p} does not exist"
    link = f" (a link to {os.readlink(p)})" if p.is_symlink() else ""
    return f"{what} {p} is not a regular file: it is {kind}{link}"


_DICOM_SUFFIXES = ("", ".dcm", ".dicom", ".ima")


def may_be_dicom(path: PathLike) -> bool:
    """Whether a file may be a DICOM slice: ``DICM`` at byte 128, or a name DICOM files have (no suffix,
    ``.dcm``, ``.ima``, or a UID's numeric tail such as ``1.2.840.113619.2.55``)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in _DICOM_SUFFIXES or suffix[1:].isdigit():
        return True
    try:
        with open(p, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False
