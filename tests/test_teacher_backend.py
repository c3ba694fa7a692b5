"""The teacher's backend in the KD step (``distill.teacher_backend``, ``teachers/backend.py``): a torch teacher
run by onnxruntime gives torch's logits and taps on real Hippocampus images within the fp32 tolerance, a KD
step with it gives the same loss as with torch, int8 and bf16 are kept only when their masks agree with
torch's, and ``auto`` keeps torch where a converted teacher cannot serve."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medkd.config import RunConfig
from napari_medkd.models.factory import build_model
from napari_medkd.models.taps import run_with_taps
from napari_medkd.teachers import register_module
from napari_medkd.teachers.backend import (FP32_TOL, MIN_DICE, accepted, build_fast, choose, native_bf16,
                                           onnx_teacher, parity)
from napari_medkd.train.engine import build_task, run_training
from napari_medkd.train.run_data import _load_data
from napari_medkd.train.sampler import PatchSampler

from conftest import SAMPLE

HIPPO = SAMPLE / "hippocampus"
PROJECT_TEACHER = Path("/work/main/results/teachers/cpu/hippocampus_unet_half")


def cfg_for(teacher: str, method: str, backend: str, iterations: int = 2) -> RunConfig:
    cfg = RunConfig()
    cfg.data.root, cfg.data.patch_size, cfg.data.labelled_fraction, cfg.data.val_fraction = str(HIPPO), 32, 0.5, 0.2
    cfg.model.name = "unet_tiny"
    cfg.train.iterations, cfg.train.batch_size, cfg.train.val_every, cfg.train.threads = iterations, 4, iterations, 1
    cfg.distill.teacher, cfg.distill.method, cfg.distill.teacher_backend = teacher, method, backend
    cfg.distill.balance, cfg.distill.warmup = "none", None
    return cfg


@pytest.fixture(scope="module")
def teacher(one_torch_thread):
    """A quarter-width U-Net (3 classes), given in Python: a torch teacher with every tap."""
    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, num_classes=3, width=0.25).eval()
    return net, register_module(net, "backend_test_unet")


@pytest.fixture(scope="module")
def data(teacher):
    return _load_data(cfg_for(teacher[1], "logit_kd", "torch"), True)


def real_batches(data, n=4, bs=4):
    """``n`` batches of real Hippocampus patches (32x32, the run's preprocessing) and their sampler."""
    sampler = PatchSampler(data.train_prep, 2, 32, 0.5, seed=0)
    return [torch.as_tensor(sampler.sample(bs)["image"]) for _ in range(n)], sampler


def test_onnxruntime_teacher_gives_torchs_logits_and_taps_on_real_images(teacher, data):
    net, _ = teacher
    taps = [t for t in net.tap_paths() if t != "logits"]
    fast = onnx_teacher(net, 1)
    assert set(taps) <= set(fast.tap_paths())
    batches, _ = real_batches(data)
    for x in batches:  # real Hippocampus patches, a batch size and patch size other than the export's
        with torch.no_grad():
            ref, got = run_with_taps(net, x, taps), run_with_taps(fast, x, taps)
        for name in taps + ["logits"]:
            assert got[name].shape == ref[name].shape, name
            assert float((got[name] - ref[name]).abs().max() / ref[name].abs().max()) < FP32_TOL, name
    check = parity(net, fast, batches, taps)
    assert check["max_rel_diff"] < FP32_TOL and check["argmax_agreement"] == 1.0 and accepted("onnxruntime", check)


@pytest.mark.parametrize("fast,rel", [("onnxruntime", 1e-4), ("torch_bf16", 2e-2)])
@pytest.mark.parametrize("method", ["logit_kd", "mskd"])
def test_a_kd_step_with_a_converted_teacher_gives_torchs_loss(teacher, data, method, fast, rel, tmp_path):
    """onnxruntime fp32: the same loss and student gradient as torch within 1e-4; bf16 (what ``auto`` takes
    on a CPU with native bf16): within 2 %."""
    losses, backends = {}, {}
    for backend in ("torch", fast):
        torch.manual_seed(1)
        student = build_model("unet_tiny", in_channels=1, num_classes=3)
        cfg = cfg_for(teacher[1], method, backend)
        task = build_task(student, 3, cfg, torch.device("cpu"), tmp_path / backend, data.pcfg.to_dict())
        task.modules_to_device(torch.device("cpu"))
        _, sampler = real_batches(data)
        events = []
        task.setup_backend({"sampler": sampler, "cfg": cfg, "emit": lambda ev, **kw: events.append(kw)})
        backends[backend] = (task.fast_teacher is not None, events)
        batch = {k: torch.as_tensor(v) for k, v in sampler.sample(4).items()}
        loss, log = task.compute(batch, student)
        loss.backward()
        losses[backend] = (float(loss), log, [p.grad.clone() for p in student.parameters() if p.grad is not None])
    assert backends["torch"] == (False, []) and backends[fast][0] and backends[fast][1][0]["backend"] == fast
    (a, log_a, g_a), (b, log_b, g_b) = losses["torch"], losses[fast]
    assert a == pytest.approx(b, rel=rel) and a > 0
    assert set(log_a) == set(log_b) and all(log_a[k] == pytest.approx(log_b[k], rel=rel, abs=1e-6) for k in log_a)
    ga, gb = torch.cat([g.flatten() for g in g_a]), torch.cat([g.flatten() for g in g_b])  # the student's update
    assert float((ga - gb).norm()) <= rel * float(ga.norm())


def test_int8_and_bf16_are_kept_only_when_their_masks_agree_with_torch(teacher, data):
    net, _ = teacher
    batches, _ = real_batches(data)
    for backend in ("onnxruntime_int8", "torch_bf16"):
        fast, facts = build_fast(net, [backend], batches, ["dec_low"])
        check = facts if fast is not None else facts["attempts"][0]  # a refused one is logged with its parity
        assert 0.0 <= check["dice_agreement"] <= 1.0 and check["max_rel_diff"] > 0.0  # not fp32-equal by design
        kept = check["dice_agreement"] >= MIN_DICE
        assert (fast is not None) == kept and facts["backend"] == (backend if kept else "torch")
        if kept:  # what the step will see: the same taps, the same shapes
            ref, got = run_with_taps(net, batches[0], ["dec_low"]), run_with_taps(fast, batches[0], ["dec_low"])
            assert all(got[k].float().shape == ref[k].shape for k in ref)
        else:
            assert "fallback" in facts


@pytest.mark.skipif(not PROJECT_TEACHER.is_dir(), reason="the project's trained Hippocampus teacher is not here")
def test_the_trained_teachers_int8_masks_agree_with_torch_on_real_images(data, one_torch_thread):
    from napari_medkd.train.run_model import load_run_model

    net = load_run_model(PROJECT_TEACHER).model.eval()
    batches, _ = real_batches(data, n=4, bs=8)
    fast, facts = build_fast(net, ["onnxruntime_int8"], batches, ["enc_high", "dec_low"])
    assert fast is not None, facts
    assert facts["dice_agreement"] >= MIN_DICE and facts["argmax_agreement"] >= MIN_DICE


def test_auto_chooses_a_converted_teacher_only_where_it_can_serve():
    kw = dict(device="cpu", is_torch=True, needs_parts=False, cached=False)
    assert choose("auto", **kw, bf16=True) == ["torch_bf16", "onnxruntime"]  # native bf16: fastest, else ORT fp32
    assert choose("auto", **kw, bf16=False) == ["onnxruntime"]
    assert choose("auto", **kw) == (["torch_bf16", "onnxruntime"] if native_bf16() else ["onnxruntime"])
    assert choose("auto", **{**kw, "cached": True}) == ["cache"]
    assert choose("auto", **{**kw, "needs_parts": True}) == ["torch"]     # GKD calls encode/decode
    assert choose("auto", **{**kw, "is_torch": False}) == ["torch"]       # an ONNX file runs in onnxruntime already
    assert choose("auto", **{**kw, "device": "cuda:0"}) == ["torch"]
    assert choose("onnxruntime_int8", **kw) == ["onnxruntime_int8"] and choose("torch", **kw) == ["torch"]
    with pytest.raises(ValueError, match="teacher_backend"):
        choose("tensorrt", **kw)


def test_a_backend_that_fails_its_check_hands_over_to_the_next(teacher, data):
    net, _ = teacher
    batches, _ = real_batches(data)
    fast, facts = build_fast(net, ["onnxruntime_int8", "onnxruntime"], batches, ["dec_low"])
    first = facts.get("fallback")  # int8 is kept when its masks agree; else onnxruntime fp32 runs, saying why
    assert fast is not None and facts["backend"] in ("onnxruntime_int8", "onnxruntime")
    assert (facts["backend"] == "onnxruntime") == (first is not None and first.startswith("onnxruntime_int8"))
    none, why = build_fast(torch.nn.Conv2d(1, 3, 3), ["onnxruntime"], batches, [])  # not a segmentation model
    assert none is None and why["backend"] == "torch" and "onnxruntime" in why["fallback"]


def test_a_run_logs_the_backend_its_teacher_ran_on(teacher, tmp_path):
    res = run_training(cfg_for(teacher[1], "logit_kd", "auto", iterations=2), tmp_path / "run")
    assert res["status"] == "finished"
    events = [json.loads(line) for line in open(tmp_path / "run" / "events.jsonl")]
    ev = [e for e in events if e["event"] == "teacher_backend"]
    want = "torch_bf16" if native_bf16() else "onnxruntime"
    assert len(ev) == 1 and ev[0]["backend"] == want and ev[0]["dice_agreement"] >= MIN_DICE
    assert np.isfinite([e["loss"] for e in events if e["event"] == "iter"]).all()


def test_mskd_terms_compute_their_maps_once_per_step_with_the_same_loss_and_gradient():
    from napari_medkd.distill.terms.base import KDContext
    from napari_medkd.distill.terms.mskd import MSKDFeatureFiltering, MSKDRegionGraph
    from napari_medkd.models.taps import TapInfo

    t_info = {"enc_high": TapInfo(16, 8), "dec_low": TapInfo(16, 2), "logits": TapInfo(3, 1)}
    s_info = {"enc_high": TapInfo(8, 8), "dec_low": TapInfo(8, 2), "logits": TapInfo(3, 1)}
    g = torch.Generator().manual_seed(0)
    t = {"enc_high": torch.randn(2, 16, 4, 4, generator=g), "dec_low": torch.randn(2, 16, 16, 16, generator=g)}
    s0 = {"enc_high": torch.randn(2, 8, 4, 4, generator=g), "dec_low": torch.randn(2, 8, 8, 8, generator=g)}
    terms = [MSKDFeatureFiltering(t_info, s_info, 3), MSKDRegionGraph(t_info, s_info, 3)]

    def run(shared: bool):
        s = {k: v.clone().requires_grad_(True) for k, v in s0.items()}
        ctxs = [KDContext(s=s, t=t, image=torch.zeros(1))] * 2 if shared else \
            [KDContext(s=s, t=t, image=torch.zeros(1)) for _ in terms]
        loss = sum(term(c) for term, c in zip(terms, ctxs))
        loss.backward()
        return float(loss), [s[k].grad for k in sorted(s)], ctxs[0].extra

    (a, ga, extra), (b, gb, _) = run(True), run(False)
    assert len(extra) == 2  # one entry per tap, read by both terms
    assert a == pytest.approx(b, rel=1e-6) and all(torch.allclose(x, y, rtol=1e-5, atol=1e-8) for x, y in zip(ga, gb))


def test_the_cli_sets_the_backend_and_offers_exactly_the_librarys_choices():
    from napari_medkd.cli import build_parser
    from napari_medkd.cli_common import config_from_args
    from napari_medkd.cli_teacher import BACKENDS as CLI_BACKENDS, _teacher_settings
    from napari_medkd.teachers.backend import BACKENDS

    assert tuple(CLI_BACKENDS) == tuple(BACKENDS)
    args = build_parser().parse_args(["distill", "--teacher", "t.onnx", "--data", "scans", "--iterations", "2",
                                      "--teacher-backend", "onnxruntime_int8"])
    cfg = config_from_args(args)
    _teacher_settings(cfg, args)
    assert cfg.distill.teacher_backend == "onnxruntime_int8"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["distill", "--teacher-backend", "tensorrt"])
