"""Regression tests for the term departures from methods.md that made terms scale-dependent (issue 12, bug 4).

- Graph Flow: vertices normalised before differencing (invariant to rescaling either network), default
  taps at H/4 (``enc_mid``/``dec_mid``) and the documented fallbacks;
- MSKD: scale-free FMM maps, so the FFD gate spans (0, 1) (its background half fires) and FFD/RGD are
  invariant to rescaling the features;
- CWD: the feature mode (``tap``) with its 1x1 adapter, and the pinned limitation of logit-CWD.
"""
from __future__ import annotations

import math

import pytest
import torch

from napari_medkd.distill.methods import build_terms, TermSpec
from napari_medkd.distill.terms.base import KDContext
from napari_medkd.distill.terms.cwd import ChannelWiseDistillation
from napari_medkd.distill.terms.graph_flow import GraphFlowTerm, normalize_nodes
from napari_medkd.distill.terms.mskd import (MSKDFeatureFiltering, MSKDRegionGraph, confidence_gate,
                                             scale_free_fmm)
from napari_medkd.models import build_model, tap_info
from napari_medkd.models.taps import TapInfo, run_with_taps
from napari_medkd.registry import METHODS

torch.set_num_threads(2)
MID = ("enc_mid", "dec_mid")


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def gf_ctx(t_low, t_dec, s_low, s_dec, names=("enc_low", "dec_low")):
    a, b = names
    return KDContext(s={a: s_low, b: s_dec}, t={a: t_low, b: t_dec}, image=torch.zeros(1))


# -- Graph Flow ------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", [True, "node"])
@pytest.mark.parametrize("use_paraphraser", [True, False])
def test_graph_flow_invariant_to_rescaling_either_network(normalize, use_paraphraser):
    """The student's taps (together or each on its own) and the teacher's compared tensors -- its taps
    without the paraphraser, its factors with it (the frozen paraphraser is not scale-equivariant: it has
    biases and LeakyReLUs, and it was trained on the teacher's own scale) -- may be rescaled freely."""
    torch.manual_seed(0)
    t_ch = 8 if use_paraphraser else 4
    t_info = {"enc_low": TapInfo(t_ch, 2), "dec_low": TapInfo(t_ch, 2)}
    s_info = {"enc_low": TapInfo(4, 2), "dec_low": TapInfo(4, 2)}
    term = GraphFlowTerm(t_info, s_info, 2, normalize=normalize, use_paraphraser=use_paraphraser)
    t_low, t_dec = rand(2, t_ch, 12, 12, seed=1), rand(2, t_ch, 12, 12, seed=2)
    s_low, s_dec = rand(2, 4, 12, 12, seed=3), rand(2, 4, 12, 12, seed=4)
    base = float(term(gf_ctx(t_low, t_dec, s_low, s_dec)))
    parts = dict(term.last_parts)
    assert base > 0
    cases = [gf_ctx(t_low, t_dec, 10 * s_low, 10 * s_dec),       # the student x10
             gf_ctx(t_low, t_dec, 10 * s_low, 3 * s_dec)]        # each student tap its own scale
    if use_paraphraser:
        factors = term.teacher_factors
        term.teacher_factors = lambda feat, tap: 0.1 * factors(feat, tap)   # the teacher's factors x0.1
        cases.append(gf_ctx(t_low, t_dec, s_low, s_dec))
    else:
        cases.append(gf_ctx(0.1 * t_low, 0.1 * t_dec, s_low, s_dec))      # the teacher x0.1
    for scaled in cases:
        assert float(term(scaled)) == pytest.approx(base, rel=1e-5)
        for k in ("vertex", "edge"):
            assert float(term.last_parts[k]) == pytest.approx(float(parts[k]), rel=1e-5)


def test_graph_flow_unnormalised_variant_is_scale_dependent():
    """The old behaviour, kept as normalize=False for the paper's recipe: it changes under x10."""
    info = {"enc_low": TapInfo(4, 2), "dec_low": TapInfo(4, 2)}
    term = GraphFlowTerm(info, info, 2, use_paraphraser=False, normalize=False)
    taps = [rand(2, 4, 12, 12, seed=i) for i in range(4)]
    base = float(term(gf_ctx(*taps)))
    assert float(term(gf_ctx(taps[0], taps[1], 10 * taps[2], 10 * taps[3]))) > 10 * base


def test_graph_flow_normalised_hand_value():
    """The two-node example of test_terms_graphflow.py with map-RMS normalised vertices."""
    def tap(v1, v2):
        t = torch.zeros(1, 2, 3, 6)
        t[0, :, :, :3] = torch.tensor(v1, dtype=torch.float32)[:, None, None]
        t[0, :, :, 3:] = torch.tensor(v2, dtype=torch.float32)[:, None, None]
        return t

    info = {"enc_low": TapInfo(2, 2), "dec_low": TapInfo(2, 2)}
    ctx = gf_ctx(tap([1, 0], [0, 1]), tap([1, 1], [1, 0]), tap([1, 0], [1, 0]), tap([1, 0], [0, 1]))
    term = GraphFlowTerm(info, info, 2, use_paraphraser=False)
    term(ctx)
    # RMS over nodes and channels: (1,0),(0,1) and (1,0),(1,0) -> x sqrt2; (1,1),(1,0) -> x 2/sqrt3.
    a, b = 2 / math.sqrt(3), math.sqrt(2)
    # dV^T - dV^S = [(a - b, a), (a + b, -2b)] -> squares sum 3a^2 + 2b^2 + 2b^2 = 16, mean over 4 = 4
    assert float(term.last_parts["vertex"]) == pytest.approx(((a - b) ** 2 + a ** 2 + (a + b) ** 2 + 4 * b * b) / 4)
    assert float(term.last_parts["vertex"]) == pytest.approx(4.0)
    r = 1 / math.sqrt(2)
    assert float(term.last_parts["edge"]) == pytest.approx(2 * (1 + r) ** 2 / 4)  # cosines: unchanged
    nodes = rand(3, 5, 7)
    assert normalize_nodes(nodes, "map").pow(2).mean((1, 2)).sqrt() == pytest.approx(torch.ones(3), rel=1e-5)
    assert normalize_nodes(nodes, "node").pow(2).mean(2).sqrt() == pytest.approx(torch.ones(3, 5), rel=1e-5)
    assert torch.equal(normalize_nodes(torch.zeros(1, 2, 3)), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="normalize"):
        GraphFlowTerm(info, info, 2, use_paraphraser=False, normalize="bogus")


def test_graph_flow_default_taps_are_the_stride4_pair_on_unet():
    t_info = tap_info(build_model("unet"), 1, size=32)
    s_info = tap_info(build_model("unet_tiny"), 1, size=32)
    [(_, _, term)] = [x for x in METHODS.get("graph_flow")(t_info, s_info, 2) if x[0] == "graph_flow"]
    assert term.TAPS == MID
    assert all(info[t].stride == 4 for info in (t_info, s_info) for t in term.TAPS)
    assert term.k == s_info["enc_mid"].channels == 16
    assert all(p.in_channels == 128 and p.factor_channels == 16 for p in term.paraphrasers.values())


def test_graph_flow_runs_on_real_stride4_taps_and_falls_back_for_espnet():
    """unet -> espnet: ESPNet's stride-4 decoder tap is in class space (2 channels), so both student taps
    are channel-pooled to the smaller count; models without enc_mid/dec_mid get enc_low/dec_low."""
    torch.manual_seed(0)
    teacher, student = build_model("unet").eval(), build_model("espnet")
    t_info, s_info = tap_info(teacher, 1, size=32), tap_info(student, 1, size=32)
    [(_, _, term)] = build_terms([TermSpec("graph_flow")], t_info, s_info, 2)
    assert term.TAPS == MID and term.k == min(s_info["enc_mid"].channels, s_info["dec_mid"].channels) == 2
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        t = run_with_taps(teacher, x, MID)
    s = run_with_taps(student, x, MID)
    for n in MID:
        s[n].retain_grad()
    loss = term(KDContext(s=s, t=t, image=x))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(s[n].grad is not None and s[n].grad.abs().sum() > 0 for n in MID)
    legacy = {"enc_low": TapInfo(8, 2), "dec_low": TapInfo(8, 2)}
    assert GraphFlowTerm(legacy, legacy, 2, use_paraphraser=False).TAPS == ("enc_low", "dec_low")
    mixed = {**legacy, "enc_mid": TapInfo(8, 4), "dec_mid": TapInfo(8, 4)}
    assert GraphFlowTerm(mixed, legacy, 2).TAPS == ("enc_low", "dec_low")   # the student lacks the pair
    assert GraphFlowTerm(mixed, mixed, 2).TAPS == MID
    assert GraphFlowTerm(mixed, mixed, 2, taps=("enc_low", "dec_low")).TAPS == ("enc_low", "dec_low")


# -- MSKD ------------------------------------------------------------------------------------------
def three_level_map(size=20):
    """One channel: 90% mid tissue (1), a dark 5% (0) and a bright 5% (2) -- clear fg and bg."""
    f = torch.ones(1, 1, size, size)
    f[0, 0, :1, :] = 0.0
    f[0, 0, -1:, :] = 2.0
    return f


def test_mskd_gate_spans_both_halves():
    for f in (three_level_map(), 5 * three_level_map()):
        m = scale_free_fmm(f)
        q, pi = torch.sigmoid(m), confidence_gate(m)
        assert (q < 0.05).any() and (q > 0.95).any()         # confident background and foreground
        assert (pi < 0.75).any() and (pi > 0.95).any()
        assert (pi[q < 0.5] > 0.95).any()                     # the background half fires
    two_level = torch.zeros(1, 1, 20, 20)
    two_level[0, 0, :2] = 3.0                                 # 10% bright foreground
    pi = confidence_gate(scale_free_fmm(two_level))
    assert (pi < 0.75).any() and (pi > 0.95).any()
    old = torch.sigmoid(scale_free_fmm(three_level_map(), normalize=False))
    assert (old >= 0.5).all()                                  # the old gate: stuck at q >= 0.5


def test_mskd_ffd_weights_use_the_scale_free_gate():
    info = {"dec_low": TapInfo(1, 1), "logits": TapInfo(2, 1)}
    term = MSKDFeatureFiltering(info, info, 2, taps=("dec_low",))
    w = term.weights(KDContext(s={}, t={}, image=torch.zeros(1)), scale_free_fmm(three_level_map()))
    assert float(w.mean()) == pytest.approx(1.0)
    assert float(w[0, 0, 0].mean()) == pytest.approx(float(w[0, 0, -1].mean()), rel=1e-5)  # dark == bright
    assert float(w[0, 0, 0].mean()) > 1.2 * float(w[0, 0, 10].mean())        # both above the mid tissue


@pytest.mark.parametrize("term_cls,params", [(MSKDFeatureFiltering, {}), (MSKDFeatureFiltering, {"gate": "gt"}),
                                             (MSKDRegionGraph, {}), (MSKDRegionGraph, {"nodes": "class"})])
def test_mskd_invariant_to_rescaling_features(term_cls, params):
    t_info = {"enc_high": TapInfo(16, 2), "dec_low": TapInfo(16, 2), "logits": TapInfo(3, 1)}
    s_info = {"enc_high": TapInfo(8, 2), "dec_low": TapInfo(8, 2), "logits": TapInfo(3, 1)}
    term = term_cls(t_info, s_info, 3, **params)
    t = {"enc_high": rand(2, 16, 16, 16, seed=1), "dec_low": rand(2, 16, 16, 16, seed=2),
         "logits": rand(2, 3, 32, 32, seed=3)}
    s = {"enc_high": rand(2, 8, 8, 8, seed=4), "dec_low": rand(2, 8, 8, 8, seed=5), "logits": t["logits"]}
    label = torch.randint(0, 3, (2, 32, 32), generator=torch.Generator().manual_seed(6))

    def value(ss, tt):
        return float(term(KDContext(s=ss, t=tt, image=torch.zeros(1), label=label)))

    base = value(s, t)
    assert base > 0
    s10 = {k: (10 * v if k != "logits" else v) for k, v in s.items()}
    t01 = {k: (0.1 * v if k != "logits" else v) for k, v in t.items()}
    assert value(s10, t) == pytest.approx(base, rel=1e-5)
    assert value(s, t01) == pytest.approx(base, rel=1e-5)
    legacy = term_cls(t_info, s_info, 3, normalize=False, **params)
    old = float(legacy(KDContext(s=s, t=t, image=torch.zeros(1), label=label)))
    assert float(legacy(KDContext(s=s10, t=t, image=torch.zeros(1), label=label))) != pytest.approx(old, rel=1e-2)


def test_mskd_constant_map_is_finite():
    f = torch.full((1, 3, 8, 8), 2.0, requires_grad=True)
    m = scale_free_fmm(f)
    m.sum().backward()
    assert torch.equal(m.detach(), torch.zeros_like(m)) and torch.isfinite(f.grad).all()


# -- CWD -------------------------------------------------------------------------------------------
def cwd_ctx(s_feat, t_feat, s_logits=None, t_logits=None):
    lg = torch.zeros(s_feat.shape[0], 2, 8, 8)
    return KDContext(s={"dec_low": s_feat, "logits": lg if s_logits is None else s_logits},
                     t={"dec_low": t_feat, "logits": lg if t_logits is None else t_logits}, image=torch.zeros(1))


def test_cwd_feature_mode_zero_positive_and_adapter_gradients():
    same = {"dec_low": TapInfo(16, 2), "logits": TapInfo(2, 1)}
    t = rand(2, 16, 8, 8, seed=1)
    plain = ChannelWiseDistillation(same, same, 2, tap="dec_low")
    assert plain.TAPS == ("dec_low",) and len(plain.adapters) == 0
    assert float(plain(cwd_ctx(t.clone(), t))) < 1e-6
    assert float(plain(cwd_ctx(rand(2, 16, 8, 8, seed=2), t))) > 1e-3
    ident = ChannelWiseDistillation(same, same, 2, tap="dec_low", adapter="always", adapter_bn=False)
    assert float(ident(cwd_ctx(t.clone(), t)).detach()) < 1e-6            # the identity adapter at init
    narrow = {"dec_low": TapInfo(6, 2), "logits": TapInfo(2, 1)}
    term = ChannelWiseDistillation(same, narrow, 2, tap="dec_low")
    s = rand(2, 6, 4, 4, seed=3).requires_grad_(True)             # fewer channels and a coarser grid
    loss = term(cwd_ctx(s, t))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in term.adapters.parameters())
    assert s.grad.abs().sum() > 0
    both = ChannelWiseDistillation(same, narrow, 2, taps=("logits", "dec_low"))
    assert both.TAPS == ("logits", "dec_low") and "dec_low" in both.adapters
    with pytest.raises(ValueError, match="tap or taps"):
        ChannelWiseDistillation(same, same, 2, tap="dec_low", taps=("enc_low",))


def test_logit_cwd_cannot_teach_the_per_pixel_decision():
    """Adding a constant to one logit channel flips every pixel's argmax but leaves logit-CWD unchanged
    (a per-channel spatial softmax is shift-invariant): the documented limitation."""
    info = {"logits": TapInfo(2, 1)}
    term = ChannelWiseDistillation(info, info, 2)
    zt = rand(2, 2, 8, 8, seed=1)
    zs = zt.clone()
    zs[:, 0] += 100.0                                             # the student says "background" everywhere
    assert (zs.argmax(1) == 0).all() and (zt.argmax(1) == 1).any()
    ctx = KDContext(s={"logits": zs}, t={"logits": zt}, image=torch.zeros(1))
    other = KDContext(s={"logits": rand(2, 2, 8, 8, seed=2)}, t={"logits": zt}, image=torch.zeros(1))
    # zero up to float32 rounding of a softmax over logits shifted by 100 (~1e-6, by thread count)
    assert float(term(ctx)) < 1e-5 < 1e-3 * float(term(other))
