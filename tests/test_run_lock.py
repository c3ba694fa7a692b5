"""A run folder (and a batch's output folder) is locked for the life of its process: a second process gets
a clear error naming the folder and the owner; a lock left by a killed process is taken over; the lock
goes on a normal end, an error and SIGTERM (issue 15, item 4)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from napari_medkd.io import folder_lock
from napari_medkd.io.folder_lock import LOCK_NAME, FolderLock, FolderLockedError
from napari_medkd.train.engine import run_training
from napari_medkd.train.events import read_events

from test_engine import _cli, tiny_cfg

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; from napari_medkd.io.folder_lock import FolderLock; "
        "lock = FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)")


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_holder_is_refused_with_folder_and_pid(tmp_path):
    with FolderLock(tmp_path / "run", "run folder") as lock:
        owner = json.loads(lock.path.read_text(encoding="utf-8"))
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(FolderLockedError, match=f"run folder {tmp_path / 'run'} is in use by PID {os.getpid()}"):
            FolderLock(tmp_path / "run", "run folder").acquire()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with FolderLock(tmp_path / "run"):  # free again
        pass


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(FolderLockedError, match=f"PID {proc.pid} on host"):
            FolderLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / LOCK_NAME).exists()  # left behind by the kill
    with FolderLock(tmp_path) as lock:
        assert lock.took_over["pid"] == proc.pid


def test_exclusive_file_fallback_takes_over_only_dead_local_pids(tmp_path, monkeypatch):
    """Without fcntl the lock file itself is the lock (O_CREAT | O_EXCL)."""
    monkeypatch.setattr(folder_lock, "fcntl", None)
    lock_file = tmp_path / LOCK_NAME
    with FolderLock(tmp_path):
        with pytest.raises(FolderLockedError, match=f"PID {os.getpid()}"):
            FolderLock(tmp_path).acquire()
    for owner in ({"pid": os.getppid(), "host": socket.gethostname()}, {"pid": _dead_pid(), "host": "elsewhere"}):
        lock_file.write_text(json.dumps(owner), encoding="utf-8")
        with pytest.raises(FolderLockedError, match=f"PID {owner['pid']}"):
            FolderLock(tmp_path).acquire()
    dead = _dead_pid()
    lock_file.write_text(json.dumps({"pid": dead, "host": socket.gethostname()}), encoding="utf-8")
    with FolderLock(tmp_path) as lock:
        assert lock.took_over["pid"] == dead
        assert json.loads(lock_file.read_text(encoding="utf-8"))["pid"] == os.getpid()
    assert not lock_file.exists()


def test_run_training_refuses_a_locked_run_folder(tiny_vessels, tmp_path):
    run = tmp_path / "run"
    run_training(tiny_cfg(tiny_vessels, iterations=2, val_every=2), run)
    before = (run / "events.jsonl").read_text(encoding="utf-8")
    proc = _holder(run)
    try:
        for resume in (True, False):
            with pytest.raises(FolderLockedError, match=f"run folder {run} is in use by PID {proc.pid}"):
                run_training(tiny_cfg(tiny_vessels, iterations=4), run, resume=resume)
    finally:
        proc.kill()
        proc.wait()
    assert (run / "events.jsonl").read_text(encoding="utf-8") == before  # nothing written by the refused runs


def test_lock_is_released_when_a_run_fails(tiny_vessels, tmp_path):
    cfg = tiny_cfg(tiny_vessels, iterations=2)
    cfg.model.name = "no_such_model"
    with pytest.raises(Exception):
        run_training(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    assert read_events(tmp_path / "run" / "events.jsonl")[-1]["status"] == "failed"


def test_two_processes_on_one_run(tiny_vessels, tmp_path):
    """A second `--resume` while the run trains is refused naming the owner; SIGTERM ends the first cleanly
    and frees the folder."""
    run = tmp_path / "run"
    first = _cli("train", "--data", str(tiny_vessels), "--model", "unet_tiny", "--out", str(run), "--iterations",
                 "100000", "--val-every", "1000", "--patch-size", "32", "--batch-size", "2")
    deadline = time.time() + 120
    while time.time() < deadline and not any(e["event"] == "iter" for e in read_events(run / "events.jsonl")):
        time.sleep(0.2)
    second = _cli("train", "--resume", str(run), "--iterations", "5")
    out2, _ = second.communicate(timeout=120)
    assert second.returncode != 0
    assert f"run folder {run} is in use by PID {first.pid}" in out2
    first.send_signal(signal.SIGTERM)
    out1, _ = first.communicate(timeout=120)
    assert first.returncode == 3, out1  # stopped
    events = read_events(run / "events.jsonl")
    assert [e["event"] for e in events].count("start") == 1 and events[-1]["status"] == "stopped"
    assert not (run / LOCK_NAME).exists()


def test_two_fresh_runs_racing_for_one_folder(tiny_vessels, tmp_path):
    """The lock comes before the emptiness check: of two new runs started at once, one gets the folder."""
    import threading

    from napari_medkd.train.run_dir import open_run_dir

    run, barrier, outcome = tmp_path / "new", threading.Barrier(4), []

    def race():
        barrier.wait()
        try:
            outcome.append(open_run_dir(tiny_cfg(tiny_vessels), run, resume=False)[1])
        except FolderLockedError as exc:
            outcome.append(exc)

    threads = [threading.Thread(target=race) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    locks = [o for o in outcome if isinstance(o, FolderLock)]
    assert len(locks) == 1 and len(outcome) == 4
    locks[0].release()
