"""The model zoo: shapes, encode/decode split, taps, sizes, gradients, cost and export.

The contract tests run for every name in ``MODELS.names()`` (role and dims from the registry meta):
a new model file is tested with no edit here. ``PAPER`` holds the published values of the known models."""
from __future__ import annotations

import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_medkd.models import FeatureTaps, build_model, count_macs, count_parameters, model_table, tap_info
from napari_medkd.models import cost as cost_mod
from napari_medkd.models.base import TAP_NAMES, SegModel
from napari_medkd.models.enet import max_unpool2x
from napari_medkd.models.taps import run_with_taps
from napari_medkd.registry import MODELS

torch.set_num_threads(2)

PAPER = {  # published values of the known models -- name: (role, dims, {tap: stride})
    "unet": ("teacher", 2, {"enc_low": 2, "enc_high": 8, "bottleneck": 16, "dec_low": 2}),
    "attention_unet": ("teacher", 2, {"enc_low": 2, "enc_high": 8, "bottleneck": 16, "dec_low": 2}),
    "unet_tiny": ("student", 2, {"enc_low": 2, "enc_high": 8, "bottleneck": 16, "dec_low": 2}),
    "enet": ("student", 2, {"enc_low": 4, "enc_high": 8, "bottleneck": 8, "dec_low": 4}),
    "espnet": ("student", 2, {"enc_low": 2, "enc_high": 8, "bottleneck": 8, "dec_low": 2}),
    "erfnet": ("student", 2, {"enc_low": 4, "enc_high": 8, "bottleneck": 8, "dec_low": 4}),
    "mobilenetv2_unet": ("student", 2, {"enc_low": 4, "enc_high": 8, "bottleneck": 32, "dec_low": 4}),
    "unet3d": ("teacher", 3, {"enc_low": 2, "enc_high": 8, "bottleneck": 16, "dec_low": 2}),
    "unet3d_tiny": ("student", 3, {"enc_low": 2, "enc_high": 8, "bottleneck": 16, "dec_low": 2}),
}
for _entry in PAPER.values():  # Graph Flow's cross-layer pair sits at H/4 (methods.md §2.2)
    _entry[2].update(enc_mid=4, dec_mid=4)
#: models whose stride-4 encoder and decoder taps cannot have equal channels (class-space decoder)
NO_EQUAL_MID_PAIR = {"espnet"}
PARAM_RANGES = {
    "unet": (2_000_000, 10_000_000), "attention_unet": (2_000_000, 12_000_000), "unet3d": (2_000_000, 10_000_000),
    "unet_tiny": (10_000, 100_000), "unet3d_tiny": (10_000, 100_000), "enet": (300_000, 400_000),
    "espnet": (150_000, 250_000), "erfnet": (1_800_000, 2_300_000), "mobilenetv2_unet": (3_000_000, 6_000_000),
}
NAMES = MODELS.names()


def _dims(name):
    return int(MODELS.meta(name)["dims"])


def _sizes(model: SegModel, dims: int):
    """Two valid spatial sizes: the smallest multiple of size_divisor >= 16 (3D) / 32 (2D), one side doubled."""
    div = model.size_divisor
    s = max(div, 16 if dims == 3 else 32)
    return (s,) * dims, (2 * s,) + (s,) * (dims - 1)


def test_registry_lists_every_model_with_role_and_dims():
    assert set(PAPER) <= set(NAMES)
    for name in NAMES:
        assert MODELS.meta(name)["role"] in ("teacher", "student"), name
        assert build_model(name).spatial_dims == _dims(name) in (2, 3)
    for name, (role, dims, _) in PAPER.items():
        assert (MODELS.meta(name)["role"], _dims(name)) == (role, dims)


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_for_two_sizes_and_channel_counts(name):
    torch.manual_seed(0)
    dims = _dims(name)
    for in_ch in (1, 3):
        model = build_model(name, in_channels=in_ch, num_classes=3)
        assert isinstance(model, SegModel) and model.in_channels == in_ch and model.num_classes == 3
        small, large = _sizes(model, dims)
        model.eval()
        with torch.no_grad():
            out = model(torch.randn((1, in_ch) + small))  # batch 1, eval
        assert out.shape == (1, 3) + small
        model.train()
        out = model(torch.randn((2, in_ch) + large))
        assert out.shape == (2, 3) + large
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_decode_of_encode_equals_forward_and_taps_are_consistent(name):
    torch.manual_seed(1)
    dims = _dims(name)
    model = build_model(name, in_channels=1, num_classes=2).eval()
    small, _ = _sizes(model, dims)
    side = small[0]
    strides = {tap: i.stride for tap, i in tap_info(model, 1, size=side).items() if tap != "logits"}
    x = torch.randn((2, 1) + small)
    with torch.no_grad():
        bottleneck, skips = model.encode(x)
        split = model.decode(bottleneck, skips)
        feats = run_with_taps(model, x, TAP_NAMES)
    assert torch.allclose(split, feats["logits"], atol=1e-6)
    assert set(feats) == set(TAP_NAMES)
    # the bottleneck tap is exactly what encode() returns (header exchange relies on it)
    assert torch.equal(feats["bottleneck"], bottleneck)
    for tap, stride in strides.items():
        assert feats[tap].shape[2:] == (side // stride,) * dims, (tap, feats[tap].shape)
    assert feats["enc_low"].shape[2:] == feats["dec_low"].shape[2:]
    assert feats["enc_mid"].shape[2:] == feats["dec_mid"].shape[2:] == (side // 4,) * dims
    # decode really starts from the given bottleneck (a swapped-in one changes the logits)
    b = bottleneck.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.decode(b, skips).square().sum(), b)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_tap_info_reports_channels_and_strides(name):
    model = build_model(name, in_channels=3, num_classes=4)
    model.train()
    info = tap_info(model, 3, size=20)  # rounded up to the size divisor
    assert model.training  # mode restored
    assert set(info) == set(TAP_NAMES)
    assert info["logits"].channels == 4 and info["logits"].stride == 1
    for tap, stride in PAPER.get(name, (None, None, {}))[2].items():
        assert info[tap].stride == stride
    x = torch.randn((1, 3) + (32,) * _dims(name))
    with torch.no_grad(), FeatureTaps(model.eval(), ["enc_low", "bottleneck"]) as taps:
        model(x)
    assert taps.features["enc_low"].shape[1] == info["enc_low"].channels
    assert taps.features["bottleneck"].shape[1] == info["bottleneck"].channels


def test_paper_tap_channels():
    t = {n: tap_info(build_model(n), 1, size=32) for n in ("enet", "espnet", "mobilenetv2_unet", "erfnet", "unet")}
    enet = t["enet"]
    assert (enet["enc_low"].channels, enet["enc_high"].channels, enet["dec_low"].channels) == (64, 128, 64)
    assert (t["espnet"]["enc_low"].channels, t["espnet"]["enc_high"].channels) == (16, 256)
    assert (t["mobilenetv2_unet"]["enc_low"].channels, t["mobilenetv2_unet"]["dec_low"].channels) == (24, 24)
    assert t["mobilenetv2_unet"]["bottleneck"].channels == 1280
    assert (t["erfnet"]["enc_low"].channels, t["erfnet"]["dec_low"].channels) == (64, 64)
    assert t["unet"]["enc_low"].channels == t["unet"]["dec_low"].channels
    assert (t["unet"]["enc_mid"].channels, t["unet"]["dec_mid"].channels) == (128, 128)
    assert (t["mobilenetv2_unet"]["enc_mid"].channels, t["mobilenetv2_unet"]["dec_mid"].channels) == (24, 24)
    assert (t["enet"]["enc_mid"].channels, t["erfnet"]["dec_mid"].channels) == (64, 64)
    assert (t["espnet"]["enc_mid"].channels, t["espnet"]["dec_mid"].channels) == (129, 2)  # class-space decoder


@pytest.mark.parametrize("name", NAMES)
def test_stride4_pair_has_equal_channels_unless_documented(name):
    """enc_mid/dec_mid: one encoder and one decoder tap at H/4 with one channel count (Graph Flow's pair);
    a model that cannot offer it is listed in NO_EQUAL_MID_PAIR and says so in its module docstring."""
    model = build_model(name, in_channels=1, num_classes=3)
    info = tap_info(model, 1, size=32)
    assert info["enc_mid"].stride == info["dec_mid"].stride == 4
    if name in NO_EQUAL_MID_PAIR:
        assert info["enc_mid"].channels != info["dec_mid"].channels
        assert "No equal-channel" in (sys.modules[type(model).__module__].__doc__ or "")
    else:
        assert info["enc_mid"].channels == info["dec_mid"].channels


@pytest.mark.parametrize("name", sorted(PARAM_RANGES))
def test_parameter_counts_in_range(name):
    lo, hi = PARAM_RANGES[name]
    n = count_parameters(build_model(name))
    assert lo <= n <= hi, f"{name}: {n} parameters"


def test_width_options_change_size():
    assert count_parameters(build_model("unet", width=0.5)) < count_parameters(build_model("unet")) / 3
    small = build_model("mobilenetv2_unet", width_mult=0.5).eval()
    assert count_parameters(small) < count_parameters(build_model("mobilenetv2_unet"))
    assert small(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name):
    torch.manual_seed(2)
    dims = _dims(name)
    model = build_model(name, in_channels=1, num_classes=3).train()
    small, _ = _sizes(model, dims)
    x = torch.randn((2, 1) + small)
    y = torch.randint(0, 3, (2,) + small)
    F.cross_entropy(model(x), y).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    nonzero = sum(int(p.grad.abs().sum() > 0) for p in model.parameters())
    assert nonzero >= 0.9 * len(list(model.parameters()))


def test_enet_unpool_equals_max_unpool():
    torch.manual_seed(3)
    x = torch.randn(2, 5, 8, 12)
    pooled, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    assert torch.equal(max_unpool2x(pooled, idx), F.max_unpool2d(pooled, idx, 2))
    big = torch.randn(1, 2, 64, 64)  # 4096 positions: more than bfloat16 can index exactly
    pooled, idx = F.max_pool2d(big, 2, 2, return_indices=True)
    half = max_unpool2x(pooled.bfloat16(), idx)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half.float(), F.max_unpool2d(pooled.bfloat16().float(), idx, 2))


def test_count_macs_matches_hand_count():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_macs(conv, (1, 3, 16, 16)) == 8 * 16 * 16 * 3 * 3 * 3
    strided = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    assert count_macs(strided, (2, 4, 16, 16)) == 2 * 6 * 8 * 8 * 4 * 9
    assert count_parameters(conv) == 8 * 3 * 9 and count_parameters(strided) == 6 * 4 * 9 + 6
    with pytest.raises(ValueError, match="input_shape"):
        count_macs(conv, (3, 16))


def test_model_table_rows(monkeypatch):
    monkeypatch.setattr(cost_mod, "SIZE_3D", 16)
    rows = {r["name"]: r for r in model_table(size=32)}
    assert set(NAMES) <= set(rows)
    for name in NAMES:
        r = rows[name]
        assert (r["role"], r["dims"]) == (MODELS.meta(name)["role"], _dims(name))
        assert r["params"] == count_parameters(build_model(name))
        assert r["macs"] > 0
    assert rows["mobilenetv2_unet"]["input_shape"] == (1, 1, 32, 32)
    assert rows["unet3d"]["input_shape"] == (1, 1, 16, 16, 16)
    assert rows["unet"]["macs"] > 10 * rows["unet_tiny"]["macs"]
    assert rows["unet"]["macs"] == count_macs(build_model("unet"), (1, 1, 32, 32))


def test_build_model_errors_are_clear():
    with pytest.raises(KeyError, match="unknown model 'nope'.*enet"):
        build_model("nope")
    with pytest.raises(TypeError, match="enet"):
        build_model("enet", bogus=1)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("unet", num_classes=0)


@pytest.mark.parametrize("name", ["enet", "espnet"])
def test_onnx_export_matches_torch(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(4)
    model = build_model(name, in_channels=1, num_classes=2).eval()
    path = tmp_path / f"{name}.onnx"
    axes = {0: "b", 2: "h", 3: "w"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 1, 32, 32),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": axes, "y": axes}, opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 1, 48, 24)  # another batch and size than the trace
    with torch.no_grad():
        ref = model(x).numpy()
    out = sess.run(None, {"x": x.numpy()})[0]
    assert out.shape == ref.shape
    assert abs(out - ref).max() < 1e-4
