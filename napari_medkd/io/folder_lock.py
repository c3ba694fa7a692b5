"""An exclusive lock on a folder (a run folder, a batch's output folder) for the life of one process.

The lock is the file ``FOLDER/.medkd.lock`` holding its owner's PID, host and start time (JSON). On
POSIX it is held with ``fcntl.flock``, which the kernel drops when the owner dies (even by SIGKILL):
a lock file left by a dead process is detected (the flock is free) and taken over, the previous
owner reported in :attr:`FolderLock.took_over`. Where ``fcntl`` is missing the file itself is the
lock (``O_CREAT | O_EXCL``), and one left by a PID that no longer runs on this host is taken over.
A second process gets :class:`FolderLockedError` naming the folder and the owner.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".medkd.lock"


class FolderLockedError(RuntimeError):
    pass


def read_owner(lock_file: Path) -> Dict[str, Any]:
    """The owner recorded in a lock file (``{}`` if unreadable or empty)."""
    try:
        rec = json.loads(Path(lock_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def pid_running(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (POSIX signal 0; psutil elsewhere, if present)."""
    if os.name == "posix":
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:  # pragma: no cover - Windows
        import psutil
    except ImportError:  # pragma: no cover - cannot tell: assume it runs
        return True
    return psutil.pid_exists(pid)  # pragma: no cover


def _describe(owner: Dict[str, Any]) -> str:
    if not owner.get("pid"):
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["since"])) if owner.get("since") else "?"
    return f"PID {owner['pid']} on host {owner.get('host', '?')} (since {since})"


class FolderLock:
    """``with FolderLock(folder, "run folder"):`` holds the folder's lock; :meth:`release` is idempotent."""

    def __init__(self, folder: str | os.PathLike, what: str = "folder"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self.took_over: Optional[Dict[str, Any]] = None  # the owner of a stale lock file taken over
        self._fd: Optional[int] = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _refuse(self, owner: Dict[str, Any]) -> FolderLockedError:
        return FolderLockedError(f"{self.what} {self.folder} is in use by {_describe(owner)}; wait until it "
                                 f"ends (or stop it), or use another folder")

    def acquire(self) -> "FolderLock":
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = self._open_flocked() if fcntl is not None else self._open_exclusive()
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def _open_flocked(self) -> int:
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse(read_owner(self.path)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its owner removed while we opened it
                self._note_previous(read_owner(self.path))
                return fd
            os.close(fd)
        raise self._refuse(read_owner(self.path))  # pragma: no cover - lost the race 20 times

    def _open_exclusive(self) -> int:
        for _ in range(20):
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = read_owner(self.path)
                if owner.get("host") != socket.gethostname() or not owner.get("pid") or pid_running(owner["pid"]):
                    raise self._refuse(owner) from None
                self._note_previous(owner)
                with_suffix = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
                try:
                    os.replace(self.path, with_suffix)
                    os.unlink(with_suffix)
                except FileNotFoundError:
                    pass
        raise self._refuse(read_owner(self.path))  # pragma: no cover

    def _note_previous(self, owner: Dict[str, Any]) -> None:
        if owner.get("pid") and owner.get("pid") != os.getpid():
            self.took_over = owner

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)  # removed while still held: no one can lock the old file after us
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
