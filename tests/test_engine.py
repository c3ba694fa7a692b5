"""The training engine: run folder contents, checkpoints, stop/resume, 2D/3D, DDP."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from napari_medkd.card import ModelCard
from napari_medkd.config import RunConfig
from napari_medkd.train.checkpoint import load_checkpoint
from napari_medkd.train.engine import RunExistsError, run_training
from napari_medkd.train.events import read_events

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(root, model="unet_tiny", iterations=6, **train):
    cfg = RunConfig()
    cfg.data.root = str(root)
    cfg.data.patch_size = 32
    cfg.model.name = model
    cfg.train.iterations = iterations
    cfg.train.batch_size = 4
    cfg.train.val_every = 3
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_run_folder_holds_config_events_metrics_and_atomic_checkpoints(tiny_vessels, tmp_path):
    run = tmp_path / "run"
    res = run_training(tiny_cfg(tiny_vessels), run)
    assert res["status"] == "finished" and res["iterations"] == 6
    for name in ("config.yaml", "events.jsonl", "metrics.csv", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*.tmp"))
    events = read_events(run / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("iter") == 6 and kinds.count("val") == 2
    assert events[-1]["status"] == "finished"
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["iter"] == 6
    card = ModelCard.from_checkpoint(state["meta"])
    assert card.num_classes == 2 and card.in_channels == 1  # green channel of RGB fundus
    assert card.teacher == "" and card.method == "" and card.model_dims == 2
    assert len((run / "metrics.csv").read_text(encoding="utf-8").strip().splitlines()) == 3


def test_existing_run_folder_is_never_overwritten(tiny_vessels, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep", encoding="utf-8")
    with pytest.raises(RunExistsError):
        run_training(tiny_cfg(tiny_vessels), run)
    assert (run / "precious.txt").read_text(encoding="utf-8") == "keep"


def test_stop_request_then_resume_completes_the_budget(tiny_vessels, tmp_path):
    run = tmp_path / "run"
    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] > 3

    res = run_training(tiny_cfg(tiny_vessels, iterations=8), run, should_stop=stop_after_three)
    assert res["status"] == "stopped" and res["iterations"] == 3
    assert load_checkpoint(run / "last.pt")["iter"] == 3
    res2 = run_training(tiny_cfg(tiny_vessels, iterations=8), run, resume=True)
    assert res2["status"] == "finished" and res2["iterations"] == 8
    starts = [e for e in read_events(run / "events.jsonl") if e["event"] == "start"]
    assert starts[-1]["resumed_at"] == 3


def test_stop_file_is_honoured(tiny_vessels, tmp_path):
    run = tmp_path / "run"
    seen = []

    def on_event(rec):
        seen.append(rec)
        if rec["event"] == "iter" and rec["iter"] == 2:
            (run / "STOP").write_text("", encoding="utf-8")

    res = run_training(tiny_cfg(tiny_vessels, iterations=50), run, on_event=on_event)
    assert res["status"] == "stopped" and res["iterations"] == 2


def test_training_lowers_the_loss(tiny_vessels, tmp_path):
    cfg = tiny_cfg(tiny_vessels, iterations=40, lr=1e-2)
    cfg.train.val_every = 1000
    run_training(cfg, tmp_path / "run")
    losses = [e["loss"] for e in read_events(tmp_path / "run" / "events.jsonl") if e["event"] == "iter"]
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8


@pytest.mark.parametrize("model", ["unet_tiny", "unet3d_tiny"])
def test_volumes_train_slice_wise_and_in_3d(tiny_msd, tmp_path, model):
    cfg = tiny_cfg(tiny_msd, model=model, iterations=2)
    cfg.train.val_every = 2
    cfg.data.patch_size = 16
    res = run_training(cfg, tmp_path / "run")
    assert res["status"] == "finished"
    card = ModelCard.from_checkpoint(load_checkpoint(tmp_path / "run" / "best.pt")["meta"])
    assert card.num_classes == 3 and card.model_dims == (3 if model.endswith("3d_tiny") else 2)


def test_no_budget_is_an_error(tiny_vessels, tmp_path):
    cfg = tiny_cfg(tiny_vessels, iterations=None)
    with pytest.raises(ValueError, match="budget"):
        run_training(cfg, tmp_path / "run")


def _cli(*args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "napari_medkd", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_killed_run_resumes_from_last_checkpoint(tiny_vessels, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_vessels), "--model", "unet_tiny", "--out", str(run), "--iterations",
            "400", "--val-every", "2", "--patch-size", "32", "--batch-size", "2"]
    proc = _cli(*args)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "last.pt").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = load_checkpoint(run / "last.pt")["iter"]
    assert 0 < done_before < 400
    proc = _cli("train", "--resume", str(run), "--iterations", str(done_before + 4))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert load_checkpoint(run / "last.pt")["iter"] == done_before + 4


def test_two_process_ddp_on_gloo(tiny_vessels, tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "napari_medkd", "train", "--data", str(tiny_vessels), "--model", "unet_tiny", "--out", str(run),
           "--iterations", "4", "--val-every", "4", "--patch-size", "32", "--batch-size", "2", "--device", "cpu"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    events = read_events(run / "events.jsonl")
    assert events[0]["world_size"] == 2
    assert events[-1]["status"] == "finished" and events[-1]["iter"] == 4


def test_without_validation_cases_best_pt_is_the_last_and_the_run_says_so(tiny_vessels, tmp_path):
    """No validation data: best.pt is the last checkpoint (not the first validation's), the run was never
    validated (best_dice None, a notice in events.jsonl), never a negative 'Dice'."""
    import torch

    cfg = tiny_cfg(tiny_vessels, iterations=9)
    cfg.data.val_fraction = 0.0
    run = tmp_path / "run"
    res = run_training(cfg, run)
    assert res["status"] == "finished" and res["best_dice"] is None
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["iter"] == 9
    events = read_events(run / "events.jsonl")
    notices = [e for e in events if e["event"] == "notice" and "never validated" in e["message"]]
    assert len(notices) == 1
    assert events[-1]["event"] == "end" and events[-1]["best_dice"] is None
