"""Pre-training stages (Graph Flow's Paraphraser, GKD's MSAN) keep periodic checkpoints of their own
(``RUN/stages/NAME.partial.pt``): a stopped or killed run continues the stage where it was instead of
starting it again (issue 15, item 10)."""
import json
from pathlib import Path

import pytest

from napari_medkd.train.checkpoint import load_checkpoint
from napari_medkd.train.engine import run_training
from napari_medkd.train.events import read_events

from test_engine import tiny_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STAGE_ITERS = 12


@pytest.fixture(scope="module")
def teacher_run(tiny_vessels, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("stage_teacher") / "run"
    assert run_training(tiny_cfg(tiny_vessels, iterations=2, val_every=2), run)["status"] == "finished"
    return run


def _distill_cfg(data, teacher, method, stage):
    cfg = tiny_cfg(data, iterations=2, val_every=4, batch_size=2)
    cfg.distill.teacher, cfg.distill.method = str(teacher), method
    cfg.distill.stage_iterations = {stage: STAGE_ITERS}
    return cfg


def _stopper(after: int):
    seen = {"n": 0}

    def on_event(rec):
        seen["n"] += rec["event"] == "stage_iter"

    return on_event, (lambda: seen["n"] >= after)


@pytest.mark.parametrize("method,stage", [("graph_flow", "paraphraser"), ("gkd", "msan")])
def test_stopped_stage_resumes_from_its_own_checkpoint(tiny_vessels, teacher_run, tmp_path, method, stage):
    run = tmp_path / "run"
    on_event, stop = _stopper(7)
    res = run_training(_distill_cfg(tiny_vessels, teacher_run, method, stage), run, should_stop=stop,
                       on_event=on_event)
    assert res["status"] == "stopped"
    partial = run / "stages" / f"{stage}.partial.pt"
    done = json.loads(load_checkpoint(partial)["meta"])["done"]
    assert done == 7 and not (run / "stages" / f"{stage}.pt").exists()
    res = run_training(_distill_cfg(tiny_vessels, teacher_run, method, stage), run, resume=True)
    assert res["status"] == "finished" and res["iterations"] == 2
    events = read_events(run / "events.jsonl")
    stages = [e for e in events if e["event"] == "stage" and e["name"] == stage]
    assert [e["status"] for e in stages] == ["start", "stopped", "resumed", "done"]
    assert stages[2]["done"] == 7
    iters = [e["iter"] for e in events if e["event"] == "stage_iter"]
    assert iters == sorted(iters) and len(iters) == len(set(iters))  # the counter continues, nothing redone
    assert len(iters) >= STAGE_ITERS and iters[6] == 6 and iters[7] >= 7
    assert (run / "stages" / f"{stage}.pt").is_file() and not partial.exists()


def test_stage_checkpoints_are_periodic(tiny_vessels, teacher_run, tmp_path, monkeypatch):
    """Checkpoints every min(val_every, 50) stage iterations: a kill loses at most that many."""
    from napari_medkd.distill import stages

    saved = []
    real = stages.save_checkpoint
    monkeypatch.setattr(stages, "save_checkpoint",
                        lambda state, path: (saved.append((Path(path).name, json.loads(state["meta"]))),
                                             real(state, path))[1])
    cfg = _distill_cfg(tiny_vessels, teacher_run, "graph_flow", "paraphraser")
    run_training(cfg, tmp_path / "run")
    partials = [m["done"] for name, m in saved if name == "paraphraser.partial.pt"]
    assert partials == [4, 8]  # val_every = 4; the 12th iteration ends the stage: its final checkpoint
    assert saved[-1][0] == "paraphraser.pt" and saved[-1][1]["iterations"] == STAGE_ITERS


@pytest.mark.parametrize("method,stage", [("graph_flow", "paraphraser"), ("gkd", "msan")])
def test_a_resumed_stage_ends_where_an_unbroken_one_does(tiny_vessels, teacher_run, tmp_path, method, stage):
    """Weights, optimiser state (momentum, Adam moments), learning-rate schedule, GKD's P-SAE/MSAN phase
    split and the random streams all continue: the stopped-and-resumed stage's result equals the
    unbroken stage's."""
    import torch

    whole = tmp_path / "whole"
    run_training(_distill_cfg(tiny_vessels, teacher_run, method, stage), whole)
    broken = tmp_path / "broken"
    on_event, stop = _stopper(7)
    run_training(_distill_cfg(tiny_vessels, teacher_run, method, stage), broken, should_stop=stop, on_event=on_event)
    saved = load_checkpoint(broken / "stages" / f"{stage}.partial.pt")
    assert saved["optimizers"], "the stage's optimiser state is checkpointed"
    run_training(_distill_cfg(tiny_vessels, teacher_run, method, stage), broken, resume=True)
    a = load_checkpoint(whole / "stages" / f"{stage}.pt")["model"]
    b = load_checkpoint(broken / "stages" / f"{stage}.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
