"""Regression tests for the plumbing around distillation (issue 12): semi-supervised batches, the teacher
cache on padded pixels, teachers with other preprocessing, loss balancing and class-balanced KL."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medkd.card import ModelCard
from napari_medkd.data.prepare import PreparedCase
from napari_medkd.distill.balance import calibrated_weights, ramp, ratio_table
from napari_medkd.distill.task import DistillError, build_distill_task, check_compatible
from napari_medkd.distill.terms.logit_kd import LogitKD, class_balance_weights
from napari_medkd.distill.terms.base import KDContext
from napari_medkd.io.image import MedicalImage
from napari_medkd.models import build_model
from napari_medkd.train.engine import run_training
from napari_medkd.train.events import read_events
from napari_medkd.train.sampler import PatchSampler

from test_engine import tiny_cfg


def _case(i, shape=(40, 40), labelled=True):
    rng = np.random.default_rng(i)
    lbl = np.zeros(shape, np.int64)
    lbl[10:20, 10:20] = 1
    ref = MedicalImage(np.zeros((1, 1), np.uint8), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    return PreparedCase(f"c{i}", rng.normal(size=(1,) + shape).astype(np.float32), lbl if labelled else None,
                        None, ref)


@pytest.fixture(scope="module")
def teacher_run(tiny_vessels, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("kd_teacher") / "run"
    assert run_training(tiny_cfg(tiny_vessels, model="unet_tiny", iterations=4), run)["status"] == "finished"
    return run


# -- semi-supervised batches ------------------------------------------------------------------------

def test_semi_batches_hold_the_configured_labelled_share():
    cases = [_case(0), _case(1)] + [_case(i, labelled=False) for i in range(2, 8)]  # 25 % of cases labelled
    sampler = PatchSampler(cases, 2, 32, 0.5, labelled_share=0.5, seed=0)
    for _ in range(20):
        b = sampler.sample(8)
        assert int(b["labelled"].sum()) == 4
    # without a share, samples are drawn over all cases: the old uniform behaviour, here about 25 % labelled
    uniform = PatchSampler(cases, 2, 32, 0.5, seed=0)
    share = np.mean([uniform.sample(8)["labelled"].mean() for _ in range(50)])
    assert 0.1 < share < 0.4
    with pytest.raises(ValueError, match="labelled_share"):
        PatchSampler(cases, 2, 32, 0.5, labelled_share=1.0)


def test_student_alone_trains_on_its_labelled_cases_only(tiny_vessels, teacher_run, tmp_path):
    """The baseline never fills its batches with maskless samples; the distilled run sees every case."""
    cfg = tiny_cfg(tiny_vessels, iterations=2)
    cfg.data.labelled_cases = 1
    cfg.data.unlabelled_root = str(tiny_vessels / "test" / "images")
    run_training(cfg, tmp_path / "alone")
    start = next(e for e in read_events(tmp_path / "alone" / "events.jsonl") if e["event"] == "start")
    assert start["labelled_cases"] == 1 and start["sampled_cases"] == 1
    cfg.distill.teacher, cfg.distill.method = str(teacher_run), "logit_kd"
    run_training(cfg, tmp_path / "kd")
    start = next(e for e in read_events(tmp_path / "kd" / "events.jsonl") if e["event"] == "start")
    assert start["labelled_cases"] == 1 and start["sampled_cases"] == start["train_cases"] + 2


def test_student_alone_without_any_mask_is_refused(tiny_vessels, tmp_path):
    cfg = tiny_cfg(tiny_vessels, iterations=2)
    cfg.data.labelled_cases = 0
    with pytest.raises(ValueError, match="none of the training cases has a mask"):
        run_training(cfg, tmp_path / "run")


# -- teacher cache on padded pixels -------------------------------------------------------------------

def test_cached_teacher_logits_cover_padded_pixels(tiny_vessels, teacher_run, tmp_path):
    """Images (64 px) smaller than the patch (96 px): the cached targets on the padding are the teacher's
    prediction on the padded input, never a blank (all-zero, i.e. uniform) target."""
    from napari_medkd.data.prepare import load_spec, prepare_case, preprocess_config

    cfg = tiny_cfg(tiny_vessels, iterations=1)
    cfg.data.patch_size = 96
    cfg.distill.teacher, cfg.distill.method, cfg.distill.cache_teacher = str(teacher_run), "logit_kd", True
    spec = load_spec(cfg.data)
    pcfg = preprocess_config(cfg.data, spec)
    cases = [prepare_case(c, pcfg) for c in spec.cases if c.split == "train"]
    student = build_model("unet_tiny", in_channels=1, num_classes=2)
    task = build_distill_task(student, 2, cfg=cfg, device="cpu", run_dir=tmp_path / "t")
    sampler = PatchSampler(cases, 2, 96, 0.5, seed=0)
    task._build_teacher_cache({"sampler": sampler, "emit": lambda *a, **k: None, "device": "cpu"})
    assert all(c.image.shape[1:] == (96, 96) for c in sampler.cases)
    for _ in range(5):
        b = sampler.sample(4)
        blank = (b["teacher_logits"] == 0).all(axis=1)
        assert not blank.any()
        assert b["teacher_logits"].shape == (4, 2, 96, 96)


def test_pad_to_patch_pads_like_sample_patch():
    c = _case(0, shape=(20, 30))
    sampler = PatchSampler([c], 2, 32, 0.0, do_augment=False, seed=0)
    sampler.pad_to_patch()
    img = sampler.cases[0].image
    assert img.shape == (1, 32, 32)
    np.testing.assert_array_equal(img[:, 6:26, 1:31], c.image)
    assert sampler.cases[0].label.shape == (32, 32) and sampler.cases[0].label[16:26, 11:21].all()


# -- teachers trained with other preprocessing --------------------------------------------------------

def _card(**pre):
    base = {"modality": "MR", "rgb_mode": "green", "ct_window": [-160.0, 240.0], "percentiles": [0.5, 99.5],
            "target_spacing": None, "slice_axis": 0}
    base.update(pre)
    return ModelCard("unet", 1, 3, preprocess=base, model_dims=2)


def test_teacher_with_other_preprocessing_is_refused_with_the_reason():
    student = _card().preprocess
    check_compatible(_card(), 3, 1, student)  # the same preprocessing: accepted
    check_compatible(_card(ct_window=[0, 100]), 3, 1, student)  # a CT window does not matter for MR
    with pytest.raises(DistillError, match="modality: teacher 'CT', this run 'MR'"):
        check_compatible(_card(modality="CT"), 3, 1, student)
    with pytest.raises(DistillError, match="target_spacing"):
        check_compatible(_card(target_spacing=[2.0, 2.0]), 3, 1, student)
    with pytest.raises(DistillError, match="slice_axis"):
        check_compatible(_card(slice_axis=2), 3, 1, student)
    with pytest.raises(DistillError, match="classes"):
        check_compatible(_card(), 2, 1, student)


def test_distilling_with_other_preprocessing_fails_before_training(tiny_vessels, teacher_run, tmp_path):
    cfg = tiny_cfg(tiny_vessels, iterations=2)
    cfg.data.target_spacing = [2.0, 2.0]
    cfg.distill.teacher, cfg.distill.method = str(teacher_run), "logit_kd"
    with pytest.raises(DistillError, match="target_spacing"):
        run_training(cfg, tmp_path / "run")


# -- loss balancing -----------------------------------------------------------------------------------

def test_warmup_ramp():
    assert ramp(0.1, [0.2, 0.6]) == 0.0 and ramp(0.4, [0.2, 0.6]) == pytest.approx(0.5)
    assert ramp(0.6, [0.2, 0.6]) == 1.0 and ramp(0.0, None) == 1.0 and ramp(0.3, [0.3, 0.3]) == 1.0
    with pytest.raises(ValueError, match="warmup"):
        ramp(0.5, [0.6, 0.2])


def test_calibrated_weights_hit_the_target_ratio():
    norms = {"seg": {"norm": 2.0, "cos": 1.0}, "big": {"norm": 216.0, "cos": 0.1}, "dead": {"norm": 0.0, "cos": math.nan}}
    w = calibrated_weights(norms, {"big": 0.5, "dead": 0.5}, {"big": 1.0, "dead": 3.0})
    assert ratio_table(norms, {"big": 1.0, "dead": 3.0})["big"]["ratio"] == pytest.approx(108.0)
    assert ratio_table(norms, w)["big"]["ratio"] == pytest.approx(0.5)
    assert w["dead"] == 3.0  # no gradient: keeps its preset weight
    adv = calibrated_weights(norms, {"big": None, "dead": 0.5}, {"big": 0.1, "dead": 3.0})
    assert adv["big"] == 0.1  # no ratio (an adversarial term): keeps its preset weight
    # no labelled sample: the terms are balanced among themselves
    w = calibrated_weights({"seg": {"norm": 0.0}, "a": {"norm": 4.0}, "b": {"norm": 40.0}}, {"a": 1.0, "b": 0.5},
                           {"a": 1.0, "b": 1.0})
    assert w["a"] * 4.0 == pytest.approx(4.0) and w["b"] * 40.0 == pytest.approx(2.0)


def test_balanced_run_logs_each_term_and_meets_its_ratio(tiny_vessels, teacher_run, tmp_path):
    """A distillation run calibrates once (a ``balance`` event with each term's ratio before and after),
    logs each term's effective weight per iteration (0 inside the warm-up), and keeps the weights on resume."""
    cfg = tiny_cfg(tiny_vessels, iterations=6)
    cfg.distill.teacher, cfg.distill.method = str(teacher_run), "ifvd"
    cfg.distill.warmup = [0.3, 0.6]
    run = tmp_path / "run"
    run_training(cfg, run)
    events = read_events(run / "events.jsonl")
    bal = [e for e in events if e["event"] == "balance"]
    assert len(bal) == 1
    terms = bal[0]["terms"]
    assert set(terms) == {"ifvd", "logit_kd"}
    assert terms["ifvd"]["ratio_after"] == pytest.approx(0.5, rel=1e-4)
    assert terms["logit_kd"]["ratio_after"] == pytest.approx(1.0, rel=1e-4)  # LogitKD.BALANCE_RATIO
    iters = [e for e in events if e["event"] == "iter"]
    assert iters[0]["terms"]["ifvd.w"] == 0.0
    assert iters[-1]["terms"]["ifvd.w"] == pytest.approx(terms["ifvd"]["weight"])
    cfg.train.iterations = 8
    run_training(cfg, run, resume=True)
    events = read_events(run / "events.jsonl")
    assert len([e for e in events if e["event"] == "balance"]) == 1  # not recalibrated
    last = [e for e in events if e["event"] == "iter"][-1]
    assert last["terms"]["ifvd.w"] == pytest.approx(terms["ifvd"]["weight"])


def test_balance_none_keeps_the_preset_weights(tiny_vessels, teacher_run, tmp_path):
    cfg = tiny_cfg(tiny_vessels, iterations=2)
    cfg.distill.teacher, cfg.distill.method = str(teacher_run), "ifvd"
    cfg.distill.balance, cfg.distill.warmup = "none", None
    run_training(cfg, tmp_path / "run")
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert not [e for e in events if e["event"] == "balance"]
    assert [e for e in events if e["event"] == "iter"][0]["terms"]["ifvd.w"] == 20.0


def test_per_term_ratio_from_the_config(tiny_vessels, teacher_run, tmp_path):
    cfg = tiny_cfg(tiny_vessels, iterations=1)
    cfg.distill.teacher = str(teacher_run)
    cfg.distill.terms = [{"name": "attention_transfer", "weight": 1.0, "ratio": 0.1}]
    run_training(cfg, tmp_path / "run")
    bal = next(e for e in read_events(tmp_path / "run" / "events.jsonl") if e["event"] == "balance")
    assert bal["terms"]["attention_transfer"]["ratio_after"] == pytest.approx(0.1, rel=1e-4)
    json.dumps(bal)


# -- class-balanced logit KD --------------------------------------------------------------------------

def test_class_balanced_kl_is_zero_on_agreement_and_weights_the_rare_class():
    t = torch.zeros(1, 2, 10, 10)
    t[:, 1, :2, :] = 5.0  # 20 % foreground
    w = class_balance_weights(t)
    assert w.mean().item() == pytest.approx(1.0)
    assert w[0, 0, 0].item() == pytest.approx(4 * w[0, 5, 5].item())  # inverse frequency: 80/20
    term = LogitKD({}, {}, 2, class_balanced=True)
    assert term(KDContext(s={"logits": t.clone()}, t={"logits": t}, image=t)).item() == pytest.approx(0.0, abs=1e-7)
    s = t.clone()
    s[:, 1, :2, :] = -5.0  # the student misses the foreground
    plain = LogitKD({}, {}, 2)(KDContext(s={"logits": s}, t={"logits": t}, image=t)).item()
    balanced = term(KDContext(s={"logits": s}, t={"logits": t}, image=t)).item()
    assert balanced > plain > 0


# -- offline pseudo-labels ----------------------------------------------------------------------------

def test_pseudo_label_trains_unlabelled_samples_on_the_teachers_masks():
    from napari_medkd.distill.terms.pseudo_label import PseudoLabel

    t = torch.zeros(2, 2, 8, 8)
    t[:, 1, :4] = 6.0
    term = PseudoLabel({}, {}, 2)
    agree = t.clone() * 3  # the same masks, sharper: lower loss than a student that disagrees
    wrong = -t
    both = torch.tensor([False, False])
    lo = term(KDContext(s={"logits": agree}, t={"logits": t}, image=t, labelled=both)).item()
    hi = term(KDContext(s={"logits": wrong}, t={"logits": t}, image=t, labelled=both)).item()
    assert hi > lo > 0
    s = wrong.clone().requires_grad_(True)
    value = term(KDContext(s={"logits": s}, t={"logits": t}, image=t, labelled=torch.tensor([True, True])))
    assert value.item() == 0.0  # labelled samples keep their own mask: no pseudo-label loss
    value = term(KDContext(s={"logits": s}, t={"logits": t}, image=t, labelled=torch.tensor([True, False])))
    value.backward()
    assert s.grad[0].abs().sum() == 0 and s.grad[1].abs().sum() > 0
