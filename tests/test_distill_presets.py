"""Every registered distillation preset builds against real models and trains end to end."""
from pathlib import Path

import pytest
import torch

from napari_medkd.distill import load_all
from napari_medkd.distill.task import DistillError, DistillTask, build_distill_task
from napari_medkd.registry import METHODS
from napari_medkd.train.engine import run_training
from napari_medkd.train.events import read_events

from test_engine import tiny_cfg

load_all()


@pytest.fixture(scope="module")
def teacher_run(tiny_vessels, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("teacher") / "run"
    res = run_training(tiny_cfg(tiny_vessels, model="unet_tiny", iterations=4), run)
    assert res["status"] == "finished"
    return run


def distill_cfg(root, method, iterations=3, teacher=None):
    cfg = tiny_cfg(root, model="unet_tiny", iterations=iterations)
    cfg.distill.teacher, cfg.distill.method = (str(teacher) if teacher else None), method
    cfg.distill.stage_iterations = {"paraphraser": 2, "msan": 2}
    return cfg


@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_every_preset_trains_a_student(method, teacher_run, tiny_vessels, tmp_path):
    cfg = distill_cfg(tiny_vessels, method, teacher=teacher_run)
    run = tmp_path / method
    res = run_training(cfg, run)
    assert res["status"] == "finished"
    iters = [e for e in read_events(run / "events.jsonl") if e["event"] == "iter"]
    assert len(iters) == 3
    spec_labels = {t[0] if isinstance(t, tuple) else t.name for t in METHODS.meta(method).get("terms", [])}
    for ev in iters:
        assert torch.isfinite(torch.tensor(ev["loss"])), ev
        for label in spec_labels:
            assert label in ev["terms"] and ev["terms"][label] == ev["terms"][label], (method, ev["terms"])
    stages = [e for e in read_events(run / "events.jsonl") if e["event"] == "stage"]
    for st in stages:
        if st["status"] == "done":
            assert (run / "stages" / f"{st['name']}.pt").is_file()


def test_adversarial_terms_are_only_in_the_full_recipe_presets():
    """methods.md §6.7: the WGAN-GP terms are off by default; skd_adv / graph_flow_adv / graph_flow_paper
    are the published recipes with them, and otherwise the same terms and weights."""
    def terms(m):
        return [(t[0], t[1]) for t in METHODS.meta(m)["terms"]]

    adversarial = {"skd_holistic", "gf_adversarial"}
    for plain, full, adv in (("skd", "skd_adv", "skd_holistic"), ("graph_flow", "graph_flow_adv", "gf_adversarial")):
        assert not adversarial & {n for n, _ in terms(plain)}
        assert (adv, 0.1) in terms(full)
        assert [t for t in terms(full) if t[0] != adv] == terms(plain)
    assert "gf_adversarial" in {n for n, _ in terms("graph_flow_paper")}


def test_stage_is_reused_on_resume(teacher_run, tiny_vessels, tmp_path):
    cfg = distill_cfg(tiny_vessels, "gkd", iterations=2, teacher=teacher_run)
    run = tmp_path / "gkd"
    run_training(cfg, run)
    cfg.train.iterations = 4
    run_training(cfg, run, resume=True)
    statuses = [e["status"] for e in read_events(run / "events.jsonl") if e["event"] == "stage"]
    assert statuses.count("done") == 1 and "reused" in statuses


def test_teacher_with_other_classes_is_refused(tiny_msd, teacher_run, tmp_path):
    cfg = tiny_cfg(tiny_msd, model="unet_tiny", iterations=2)
    cfg.distill.teacher, cfg.distill.method = str(teacher_run), "logit_kd"
    with pytest.raises(DistillError, match="classes"):
        run_training(cfg, tmp_path / "bad")


def test_cached_teacher_logits_equal_the_teacher_on_the_fixed_view(teacher_run, tiny_vessels, tmp_path,
                                                                    monkeypatch):
    """With the whole 64x64 image as the patch and no augmentation, the cached logits in a batch are
    exactly the teacher's logits on that image; a run with the cache trains and logs the stage."""
    from napari_medkd.distill.task import load_teacher

    cfg = distill_cfg(tiny_vessels, "logit_kd", iterations=2, teacher=teacher_run)
    cfg.data.patch_size, cfg.data.augment = 64, False
    cfg.distill.cache_teacher = True
    run = tmp_path / "cached"
    captured = {}
    original = DistillTask.compute

    def compute(self, batch, model):
        captured.setdefault("batch", {k: v.clone() for k, v in batch.items()})
        return original(self, batch, model)

    monkeypatch.setattr(DistillTask, "compute", compute)
    res = run_training(cfg, run)
    assert res["status"] == "finished"
    stage = [e for e in read_events(run / "events.jsonl") if e["event"] == "stage" and e["status"] == "done"]
    assert stage and stage[0]["name"] == "teacher_cache"
    batch = captured["batch"]
    teacher, _ = load_teacher(teacher_run, "cpu")
    with torch.no_grad():
        expect = teacher(batch["image"])
    assert batch["teacher_logits"].shape == expect.shape
    assert torch.allclose(batch["teacher_logits"], expect, atol=2e-2, rtol=1e-2)  # stored as float16


def test_cache_is_refused_for_feature_methods(teacher_run, tiny_vessels, tmp_path):
    cfg = distill_cfg(tiny_vessels, "mskd", iterations=1, teacher=teacher_run)
    cfg.distill.cache_teacher = True
    with pytest.raises(DistillError, match="cache_teacher"):
        run_training(cfg, tmp_path / "r")



def test_semi_supervised_unlabelled_samples_only_feed_distillation(teacher_run, tiny_vessels, tmp_path):
    """Half the cases without labels plus an unlabelled folder: the run trains; on an all-unlabelled batch
    the segmentation loss is 0 and the loss is the weighted distillation terms alone."""
    from napari_medkd.models import build_model

    cfg = distill_cfg(tiny_vessels, "graph_flow", iterations=2, teacher=teacher_run)
    cfg.data.labelled_fraction = 0.5
    cfg.data.unlabelled_root = str(tiny_vessels / "test" / "images")
    run = tmp_path / "semi"
    res = run_training(cfg, run)
    assert res["status"] == "finished"

    student = build_model("unet_tiny", in_channels=1, num_classes=2)
    cfg.distill.method = "logit_kd"
    task = build_distill_task(student, 2, cfg=cfg, device="cpu", run_dir=tmp_path / "t")
    torch.manual_seed(0)
    batch = {"image": torch.randn(2, 1, 32, 32), "label": torch.ones(2, 32, 32, dtype=torch.long),
             "labelled": torch.tensor([False, False])}
    task.set_progress(1.0)  # past the warm-up: the term at its full weight
    loss, log = task.compute(batch, student)
    assert log["seg"] == 0.0 and log["logit_kd"] > 0 and log["logit_kd.w"] == 1.0
    assert abs(float(loss.detach()) - log["logit_kd"]) < 1e-5
    task.set_progress(0.0)  # inside the warm-up (distill.warmup [0.2, 0.6]): the term is off
    loss, log = task.compute(batch, student)
    assert log["logit_kd.w"] == 0.0 and float(loss.detach()) == 0.0
    batch["labelled"] = torch.tensor([True, False])
    _, log = task.compute(batch, student)
    assert log["seg"] > 0


def test_only_output_methods_need_only_the_teachers_outputs():
    """logit_kd and cwd read the teacher's logits alone (their outputs can be cached); feature methods,
    feature-tapping term overrides and a method without terms cannot."""
    from napari_medkd.distill.task import needs_only_outputs

    assert [m for m in sorted(METHODS.names()) if needs_only_outputs(m)] == [
        "cwd", "logit_kd", "logit_kd_cb", "pseudo_label", "pseudo_label_kd"]
    assert needs_only_outputs("mskd", [{"name": "logit_kd", "weight": 2.0}])
    assert not needs_only_outputs("logit_kd", [{"name": "cwd", "params": {"taps": ["enc_high"]}}])
    assert not needs_only_outputs("none")


def test_a_method_without_a_teacher_is_refused(tiny_vessels, tmp_path):
    cfg = distill_cfg(tiny_vessels, "logit_kd", iterations=1)
    with pytest.raises(ValueError, match="distill.teacher"):
        run_training(cfg, tmp_path / "r")
