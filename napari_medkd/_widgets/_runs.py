"""The Distil widget's runs as CLI subprocesses: the command line, the requested config beside the
run folder, and a generator that follows the run's ``events.jsonl``. No Qt here."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

from ..config import RunConfig, save_config


def tail_events(proc: subprocess.Popen, events_path: Path, poll: float = 0.1) -> Iterator[Dict[str, Any]]:
    """Yield each complete JSON line appended to ``events_path`` until ``proc`` exits; return its code."""
    offset, buf = 0, b""
    while True:
        done = proc.poll() is not None
        if events_path.exists():
            with open(events_path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            offset += len(chunk)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue
        if done:
            return proc.returncode
        time.sleep(poll)


def cli_command(*args: str) -> List[str]:
    return [sys.executable, "-m", "napari_medkd", *[str(a) for a in args]]


def requested_config_path(run_dir: Path) -> Path:
    """Where the widget writes a run's requested config: beside the run folder, since the engine
    wants a new run folder empty (the run itself saves RUN/config.yaml)."""
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + ".requested.yaml")


def config_step(name: str, command: str, run_dir: Path, cfg: RunConfig) -> Dict[str, Any]:
    """A step running ``medkd COMMAND --config FILE --out RUN_DIR``, ``cfg`` written to FILE."""
    path = requested_config_path(run_dir)
    save_config(cfg, path)
    return {"name": name, "run_dir": run_dir, "config": path,
            "cmd": cli_command(command, "--config", path, "--out", run_dir)}


# -- run folders ------------------------------------------------------------------------------
#: what the widget itself puts into a run folder before the run starts (the run accepts them,
#: ``train.run_dir.INPUT_FILES``): the open layers as a data set and the process's output
LAYERS_DATA, PROCESS_LOG = "layers_data", "process.log"


def default_runs_root() -> Path:
    return Path.home() / "medkd_runs"


def new_run_dir(root: Path, model: str, method: str, now: float | None = None) -> Path:
    """A fresh folder name per run: ``ROOT/<date-time>-<model>-<method>`` (``-2``, ``-3`` ... when that
    name is taken, e.g. two Starts in one second)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    safe = "-".join(str(p).replace("/", "_").replace(" ", "_") for p in (stamp, model, method) if p)
    base = Path(root).expanduser() / safe
    path, n = base, 1
    while path.exists() or requested_config_path(path).exists():
        n += 1
        path = base.with_name(f"{safe}-{n}")
    return path


# -- the process of a run, tied to the widget that started it ----------------------------------
def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie, exited but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:  # no /proc (macOS, Windows): ask the OS
        import os

        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def stop_process(proc: subprocess.Popen | None, run_dir: Path | None = None, kill_after_s: float = 3.0) -> None:
    """Ask a run to stop now: its ``STOP`` file and SIGTERM (the engine saves ``last.pt`` on either), then
    SIGKILL after ``kill_after_s`` if it still runs. Never blocks; needs no Qt (a closed widget's timers
    are gone)."""
    import threading

    if proc is None or proc.poll() is not None:
        return
    if run_dir is not None:
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            (Path(run_dir) / "STOP").write_text("stop requested from napari\n", encoding="utf-8")
        except OSError:
            pass
    proc.terminate()

    def _kill():
        if proc.poll() is None:
            proc.kill()
        proc.poll()

    timer = threading.Timer(kill_after_s, _kill)
    timer.daemon = True
    timer.start()
