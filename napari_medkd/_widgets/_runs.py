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
