"""Fault injection (issue 15): `train`, `distill` (inside Graph Flow's Paraphraser stage) and a folder
`infer` are SIGKILLed at random (seeded) points, twice each, and resumed until they finish. After every
kill and at the end: no visible output is corrupt (checkpoints load, masks read), every events.jsonl
line is JSON, metrics.csv has each iteration once; at the end: the run finished, its iteration counters
(main loop and stage) continued across the resumes, no temporary file or lock is left."""
import json
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_medkd.config import save_config
from napari_medkd.io.atomic import is_leftover
from napari_medkd.io.folder_lock import LOCK_NAME
from napari_medkd.io.image_io import read_image
from napari_medkd.train.checkpoint import load_checkpoint
from napari_medkd.train.engine import run_training
from napari_medkd.train.events import read_events

from conftest import write_png
from test_engine import tiny_cfg

SEED = 15
N_IMAGES = 40
#: imported once by the fork server
PRELOAD = ["torch", "torch._dynamo", "napari_medkd.cli", "napari_medkd.train.engine", "napari_medkd.models",
           "napari_medkd.distill.task", "napari_medkd.inference.ort_infer"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_cli(argv, log: str) -> None:
    """The child: ``medkd ARGV`` (as ``python -m napari_medkd`` runs it), its output in ``log``."""
    import torch

    from napari_medkd.cli import main

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.set_num_threads(1)
    sys.exit(main([str(a) for a in argv]))


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """Start ``medkd ARGS`` in a child process forked from a server that has imported torch and the package
    once (a fresh interpreter costs seconds per start; the server never runs torch, so forking is safe)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    logs = tmp_path_factory.mktemp("fi_logs")

    def _start(*args) -> mp.Process:
        proc = ctx.Process(target=run_cli, args=(args, str(logs / f"{args[0]}.log")), daemon=True)
        proc.log = logs / f"{args[0]}.log"
        proc.start()
        return proc
    return _start


def _kill_when(proc, ready, delay: float, timeout: float = 60) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()``; False if it ended first."""
    deadline = time.time() + timeout
    while proc.is_alive() and not ready():
        assert time.time() < deadline, "the process never reached the kill point"
        time.sleep(0.02)
    time.sleep(delay)
    alive = proc.is_alive()
    proc.kill()
    proc.join()
    return alive


def _finish(proc) -> None:
    proc.join(120)
    assert proc.exitcode == 0, proc.log.read_text(encoding="utf-8")[-3000:]


def _count(path: Path, event: str) -> int:
    return sum(e["event"] == event for e in read_events(path))


def _strict_lines(path: Path) -> None:
    def refuse(name):
        raise ValueError(name)
    for line in path.read_text(encoding="utf-8").splitlines():
        json.loads(line, parse_constant=refuse)


def _check_outputs(run: Path, final: bool) -> None:
    """Invariants that hold after every kill (visible files whole) and, with ``final``, at the end."""
    for ckpt in [run / "last.pt", run / "best.pt", *sorted((run / "stages").glob("*.pt"))]:
        if ckpt.exists():
            load_checkpoint(ckpt)
    if (run / "metrics.csv").exists():
        text = (run / "metrics.csv").read_text(encoding="utf-8")
        iters = [int(r.split(",")[0]) for r in text.split("\n")[1:-1]]  # whole rows (a kill may cut the last)
        assert iters == sorted(set(iters)) and (text.endswith("\n") or not final)
    if final:
        _strict_lines(run / "events.jsonl")
        assert not [p for p in run.rglob("*") if is_leftover(p)] and not (run / LOCK_NAME).exists()


def _sessions(events):
    """The events of each session (from one `start` to the next)."""
    out = []
    for e in events:
        if e["event"] == "start" or not out:
            out.append([])
        out[-1].append(e)
    return out


def _check_counters(run: Path, total: int) -> None:
    events = read_events(run / "events.jsonl")
    assert events[-1]["event"] == "end" and events[-1]["status"] == "finished" and events[-1]["iter"] == total
    assert load_checkpoint(run / "last.pt")["iter"] == total
    for s in _sessions(events)[1:]:
        iters = [e["iter"] for e in s if e["event"] == "iter"]
        assert s[0]["resumed_at"] is not None and (not iters or iters[0] == s[0]["resumed_at"] + 1)


@pytest.fixture(scope="module")
def teacher(tiny_vessels, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("fi_teacher") / "run"
    run_training(tiny_cfg(tiny_vessels, iterations=2, val_every=2), run)
    return run


def test_killed_train_resumes_and_finishes(start, tiny_vessels, tmp_path):
    rng, run, total = random.Random(SEED), tmp_path / "run", 100
    args = ["--iterations", total, "--val-every", 3, "--batch-size", 2, "--patch-size", 32]
    cmd = ["train", "--data", tiny_vessels, "--model", "unet_tiny", "--out", run] + args
    for low, high in ((4, 30), (40, 70)):
        k = rng.randint(low, high)
        assert _kill_when(start(*cmd), lambda: any(e["event"] == "iter" and e["iter"] >= k
                                             for e in read_events(run / "events.jsonl")), rng.uniform(0, 0.2))
        _check_outputs(run, final=False)
        cmd = ["train", "--resume", run]
    _finish(start(*cmd))
    _check_outputs(run, final=True)
    _check_counters(run, total)
    assert _count(run / "events.jsonl", "start") == 3


def test_killed_distill_stage_resumes_from_its_checkpoint(start, tiny_vessels, teacher, tmp_path):
    rng, run, total, stage_total = random.Random(SEED + 1), tmp_path / "run", 4, 100
    cfg = tiny_cfg(tiny_vessels, iterations=total, val_every=3, batch_size=2)
    cfg.model.name, cfg.distill.teacher, cfg.distill.method = "unet_tiny", str(teacher), "graph_flow"
    cfg.distill.stage_iterations = {"paraphraser": stage_total}
    save_config(cfg, tmp_path / "cfg.yaml")
    cmd = ["distill", "--config", tmp_path / "cfg.yaml", "--out", run]
    for low, high in ((4, 30), (40, 70)):
        k = rng.randint(low, high)
        assert _kill_when(start(*cmd), lambda: _count(run / "events.jsonl", "stage_iter") >= k, rng.uniform(0, 0.05))
        _check_outputs(run, final=False)
        cmd = ["distill", "--resume", run]
    _finish(start(*cmd))
    _check_outputs(run, final=True)
    _check_counters(run, total)
    events = read_events(run / "events.jsonl")
    status = [e["status"] for e in events if e["event"] == "stage"]
    assert status[0] == "start" and status.count("start") == 1 and status[-1] == "done"
    for s in _sessions(events)[1:]:
        resumed = [e for e in s if e["event"] == "stage" and e["status"] == "resumed"]
        stage_iters = [e["iter"] for e in s if e["event"] == "stage_iter"]
        if resumed:  # the stage continues from its checkpoint (at most val_every iterations redone)
            assert resumed[0]["done"] >= 3 and stage_iters[0] == resumed[0]["done"]
    done = max(e["iter"] for e in events if e["event"] == "stage_iter")
    assert done == stage_total - 1 and (run / "stages" / "paraphraser.pt").is_file()


def test_killed_folder_infer_resumes_with_skip_existing(start, teacher, tmp_path):
    from napari_medkd.data.phantoms import vessel_phantom
    from napari_medkd.export.onnx_export import export_onnx

    rng = random.Random(SEED + 2)
    onnx_path = export_onnx(teacher, tmp_path / "m.onnx", exporter="torchscript").path
    src, out = tmp_path / "in", tmp_path / "masks"
    for i in range(N_IMAGES):
        write_png(src / f"img{i:02d}.png", vessel_phantom(192, i)[0])
    cmd = ["infer", "--model", onnx_path, "--input", src, "--output", out, "--threads", 1]
    killed = 0
    for attempt in range(2):
        k = len(list(out.glob("*_mask.png"))) + rng.randint(1, 6)
        killed += _kill_when(start(*cmd, *(["--skip-existing"] if attempt else [])),
                             lambda: len(list(out.glob("*_mask.png"))) >= k, rng.uniform(0, 0.05))
        for mask in out.glob("*_mask.png"):  # every visible mask is whole
            assert read_image(mask).array.shape[:2] == (192, 192)
    assert killed == 2
    _finish(start(*cmd, "--skip-existing"))
    masks = sorted(out.iterdir())
    assert [p.name for p in masks] == [f"img{i:02d}_mask.png" for i in range(N_IMAGES)]
    for mask in masks:
        assert np.isin(read_image(mask).array, [0, 1]).all()
