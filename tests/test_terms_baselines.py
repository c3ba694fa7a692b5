"""Every registered distillation term's contract (zero at agreement, monotone, gradients, finite on
empty classes), plus hand values of the baseline, EMKD and MSKD terms.

The contract cases come from ``TERMS.names()``: a new term file is tested with no edit here. Its
construction parameters and promises come from the term class's ``CONTRACT`` (see ``DistillTerm``).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from napari_medkd.distill.terms._common import pool_nodes
from napari_medkd.distill.terms.base import KDContext
from napari_medkd.models.taps import TapInfo
from napari_medkd.registry import TERMS

K = 3
FEATS = ("enc_low", "enc_high", "bottleneck", "dec_low")
SMALL_D = {"conv_dim": 8}

# extra parameter variants of registered terms, on top of one default case per registered term
VARIANTS = [
    ("logit_kd_tau4", "logit_kd", {"tau": 4.0}),
    ("cwd_feature", "cwd", {"taps": ("logits", "enc_high")}),
    ("mskd_ffd_gt", "mskd_ffd", {"gate": "gt"}),
    ("mskd_rgd_class", "mskd_rgd", {"nodes": "class"}),
]


def _contract(name):
    return dict(getattr(TERMS.get(name), "CONTRACT", {}) or {})


def _cases():
    """(case id, registered name, params, channel-agnostic) for every registered term and variant."""
    out = []
    for case, name, extra in [(n, n, {}) for n in TERMS.names()] + VARIANTS:
        c = _contract(name)
        marks = [pytest.mark.skip(reason=f"{name}: {c['skip']}")] if c.get("skip") else []
        out.append(pytest.param(case, name, {**c.get("params", {}), **extra}, bool(c.get("channel_agnostic")),
                                id=case, marks=marks))
    return out


def _adversarial(name):
    return bool(TERMS.get(name).OWN_OPTIMIZER)


CASES = _cases()
ADVERSARIAL = {n for n in TERMS.names() if _adversarial(n)}
AGNOSTIC = [c for c in CASES if c.values[3]]


def infos(channels):
    return {n: TapInfo(channels, 2) for n in FEATS} | {"logits": TapInfo(K, 1)}


def build(name, params, t_ch=16, s_ch=16):
    return TERMS.get(name)(infos(t_ch), infos(s_ch), K, **params)


def labels(b=2, size=32):
    lab = torch.zeros(b, size, size, dtype=torch.long)
    for i in range(b):
        lab[i, 4 + i:14 + i, 5:15] = 1
        lab[i, 18:28, 16 + i:30] = 2
    return lab


def teacher_taps(ch=16, size=16, b=2, img=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    taps = {n: torch.randn(b, ch, size, size, generator=g) for n in FEATS}
    taps["logits"] = 3 * torch.randn(b, K, img, img, generator=g)
    return taps


def ctx(s, t, label=None, labelled=None):
    image = torch.randn(next(iter(t.values())).shape[0], 1, 32, 32)
    return KDContext(s=s, t=t, image=image, label=label, labelled=labelled)


def perturbed(t, eps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {k: v + eps * torch.randn(v.shape, generator=g) for k, v in t.items()}


@pytest.mark.parametrize("case,name,params,_", CASES)
def test_zero_when_student_equals_teacher(case, name, params, _):
    torch.manual_seed(0)
    term = build(name, params)
    t = teacher_taps()
    s = {k: v.clone() for k, v in t.items()}
    assert abs(float(term(ctx(s, t, labels())))) < 1e-6


@pytest.mark.parametrize("case,name,params,_", AGNOSTIC)
def test_channel_agnostic_zero_for_same_structure(case, name, params, _):
    """Teacher = the student's tap with every channel twice, bilinearly upsampled 16 -> 32."""
    term = build(name, params, t_ch=48, s_ch=24)
    s = teacher_taps(ch=24, size=16)
    t = {k: F.interpolate(torch.cat([v, v], 1), size=32, mode="bilinear", align_corners=False) if k in FEATS else v
         for k, v in s.items()}
    assert abs(float(term(ctx(s, t, labels())))) < 1e-5


@pytest.mark.parametrize("case,name,params,_", [c for c in CASES if c.values[1] not in ADVERSARIAL])
def test_grows_with_perturbation(case, name, params, _):
    term = build(name, params)
    t = teacher_taps()
    values = [float(term(ctx(perturbed(t, eps), t, labels()))) for eps in (0.0, 0.1, 0.3, 1.0)]
    assert values[0] < 1e-6
    assert all(b > a for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("case,name,params,agnostic", CASES)
def test_gradients_reach_student_never_teacher(case, name, params, agnostic):
    torch.manual_seed(0)
    s_ch, s_size = (24, 8) if agnostic else (16, 16)
    t_ch = s_ch if _contract(name).get("same_channels") else 64
    term = build(name, params, t_ch=t_ch, s_ch=s_ch)
    t = {k: v.requires_grad_(True) for k, v in teacher_taps(ch=t_ch, size=16).items()}
    s = {k: v.requires_grad_(True) for k, v in teacher_taps(ch=s_ch, size=s_size, seed=3).items()}
    loss = term(ctx(s, t, labels()))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for n in term.TAPS:
        assert s[n].grad is not None and torch.isfinite(s[n].grad).all() and s[n].grad.abs().sum() > 0, n
    assert all(v.grad is None for v in t.values())
    if name in ADVERSARIAL:  # the student's loss never trains the discriminator
        assert all(p.grad is None for p in term.discriminator_parameters())
    else:
        for p in term.parameters():  # adapters train with the student
            assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("case,name,params,_", CASES)
def test_empty_classes_and_unlabelled_samples_are_finite(case, name, params, _):
    term = build(name, params)
    t = teacher_taps()
    for label, labelled in ((torch.zeros(2, 32, 32, dtype=torch.long), None),
                            (labels(), torch.tensor([True, False])),
                            (None, None),
                            (torch.full((2, 32, 32), 255, dtype=torch.long), None)):  # all ignored
        s = {k: v.requires_grad_(True) for k, v in perturbed(t, 0.5).items()}
        loss = term(ctx(s, t, label, labelled))
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(s[n].grad).all() for n in term.TAPS if s[n].grad is not None)


def test_unlabelled_samples_use_teacher_argmax():
    term = build("emkd_rad", {})
    t = teacher_taps()
    s = perturbed(t, 0.5)
    pseudo = t["logits"].argmax(1)
    fallback = term(ctx(s, t, labels(), torch.tensor([False, False])))
    assert torch.allclose(fallback, term(ctx(s, t, pseudo)))
    assert not torch.allclose(fallback, term(ctx(s, t, labels())))


# -- hand-computed values ------------------------------------------------------------------------
def _single(name, params, s, t, label=None, num_classes=None):
    k = num_classes or t["logits"].shape[1]
    ti = {n: TapInfo(v.shape[1], 1) for n, v in t.items()}
    si = {n: TapInfo(v.shape[1], 1) for n, v in s.items()}
    return float(TERMS.get(name)(ti, si, k, **params)(KDContext(s=s, t=t, image=torch.zeros(1), label=label)))


def test_logit_kd_hand_value_and_log_softmax_invariance():
    zs = torch.tensor([[[[0.0, 1.0], [2.0, 0.0]], [[1.0, 0.0], [0.0, 0.5]]]])   # 1x2x2x2
    zt = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 2.0], [1.0, 0.0]]]])
    tau, expected = 2.0, 0.0
    for i in range(2):
        for j in range(2):
            es = [math.exp(zs[0, c, i, j].item() / tau) for c in range(2)]
            et = [math.exp(zt[0, c, i, j].item() / tau) for c in range(2)]
            ps, pt = [e / sum(es) for e in es], [e / sum(et) for e in et]
            expected += sum(pt[c] * math.log(pt[c] / ps[c]) for c in range(2)) / 4
    expected *= tau ** 2
    got = _single("logit_kd", {"tau": tau}, {"logits": zs}, {"logits": zt})
    assert got == pytest.approx(expected, rel=1e-5)
    for name, t in (("logit_kd", 1.0), ("logit_kd", 4.0), ("emkd_pmd", 4.0)):
        raw = _single(name, {"tau": t}, {"logits": zs}, {"logits": zt})
        logsm = _single(name, {"tau": t}, {"logits": zs}, {"logits": F.log_softmax(zt, 1)})
        assert logsm == pytest.approx(raw, abs=1e-6)
    probs = _single("logit_kd", {"tau": 4.0}, {"logits": zs}, {"logits": F.softmax(zt, 1)})
    assert abs(probs - _single("logit_kd", {"tau": 4.0}, {"logits": zs}, {"logits": zt})) > 1e-3


def test_skd_pixel_hand_value():
    zs, zt = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1), torch.zeros(1, 2, 1, 1)
    ce = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    kl = ce - math.log(2.0)
    assert _single("skd_pixel", {}, {"logits": zs}, {"logits": zt}) == pytest.approx(kl, rel=1e-5)
    raw = _single("skd_pixel", {"subtract_entropy": False}, {"logits": zs}, {"logits": zt})
    assert raw == pytest.approx(ce, rel=1e-5)


def test_attention_transfer_hand_value():
    fs = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    ft = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    got = _single("attention_transfer", {"taps": ("enc_low",)}, {"enc_low": fs, "logits": fs},
                  {"enc_low": ft, "logits": ft})
    assert got == pytest.approx(2 - math.sqrt(2), rel=1e-5)
    pixel = _single("attention_transfer", {"taps": ("enc_low",), "reduction": "pixel"},
                    {"enc_low": fs, "logits": fs}, {"enc_low": ft, "logits": ft})
    assert pixel == pytest.approx((2 - math.sqrt(2)) / 4, rel=1e-5)


def test_skd_pairwise_two_nodes():
    ft = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)   # nodes (1,0), (0,1): cos 0
    fs = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).T.reshape(1, 2, 1, 2)   # nodes (1,0), (1,1): cos 1/sqrt2
    lg = torch.zeros(1, 2, 1, 2)
    got = _single("skd_pairwise", {"patch": 1}, {"bottleneck": fs, "logits": lg}, {"bottleneck": ft, "logits": lg})
    assert got == pytest.approx(2 * 0.5 / 4, rel=1e-5)


def test_cwd_hand_value():
    zt, zs = torch.zeros(1, 1, 1, 2), torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert _single("cwd", {"tau": 1.0}, {"logits": zs}, {"logits": zt}) == pytest.approx(expected, rel=1e-5)


def test_ifvd_hand_value():
    ft = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)   # prototype (.5,.5): cos 1/sqrt2 each
    fs = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).T.reshape(1, 2, 1, 2)   # prototype (1,0): cos 1 each
    lg, lab = torch.zeros(1, 2, 1, 2), torch.zeros(1, 1, 2, dtype=torch.long)
    got = _single("ifvd", {}, {"dec_low": fs, "logits": lg}, {"dec_low": ft, "logits": lg}, label=lab)
    assert got == pytest.approx((1 - 1 / math.sqrt(2)) ** 2, rel=1e-5)


def _release_rad(s, t, gt):
    """EMKD release (utils/loss_functions.py ``region_affinity_distillation``), binary one-hot gt."""
    def contrast(x, g):
        m0, m1 = g[:, 0:1], g[:, 1:2]
        r0 = (x * m0).sum((2, 3)) / m0.sum((2, 3))
        r1 = (x * m1).sum((2, 3)) / (m1.sum((2, 3)) + 1.0)
        return F.cosine_similarity(r0, r1, dim=1)

    g = F.interpolate(gt, s.shape[2:])
    return (contrast(s, g) - contrast(t, g)).pow(2).mean()


def test_emkd_rad_binary_matches_release_and_multiclass_ignores_absent_classes():
    torch.manual_seed(0)
    s, t = torch.randn(2, 8, 16, 16), torch.randn(2, 32, 16, 16)
    lab = (labels() > 0).long()
    lg2, lg3 = torch.zeros(2, 2, 32, 32), torch.zeros(2, 3, 32, 32)
    ref = float(_release_rad(s, t, F.one_hot(lab, 2).permute(0, 3, 1, 2).float()))
    p = {"taps": ("enc_low",)}
    assert _single("emkd_rad", p, {"enc_low": s, "logits": lg2}, {"enc_low": t, "logits": lg2}, lab) == \
        pytest.approx(ref, rel=1e-5)
    three = _single("emkd_rad", p, {"enc_low": s, "logits": lg3}, {"enc_low": t, "logits": lg3}, lab)
    assert three == pytest.approx(ref, rel=1e-5)   # class 2 is absent: no pair involves it
    full = _single("emkd_rad", p, {"enc_low": s, "logits": lg3}, {"enc_low": t, "logits": lg3}, labels())
    assert full > 0 and full != pytest.approx(ref)


def test_mskd_hand_values():
    gamma = 0.6
    ft, fs = torch.tensor([0.0, 2.0]).view(1, 1, 1, 2), torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)
    lg = torch.zeros(1, 2, 1, 2)
    pi = [0.5, 1 / (1 + math.exp(-2.0))]
    w0 = pi[0] ** gamma / ((pi[0] ** gamma + pi[1] ** gamma) / 2)
    # normalize=False: the unnormalised maps these hand values use (the scale-free default: test_terms_departures)
    got = _single("mskd_ffd", {"taps": ("dec_low",), "normalize": False}, {"dec_low": fs, "logits": lg},
                  {"dec_low": ft, "logits": lg})
    assert got == pytest.approx(w0 / 2, rel=1e-5)
    # RGD, 2 pixel nodes: teacher (1,0),(0,1) -> m = (.5,.5), cos 0; student (1,0),(1,0) -> m = w0' twice, cos 1
    ft = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)
    fs = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).T.reshape(1, 2, 1, 2)
    ws = math.e / (1 + math.e)
    got = _single("mskd_rgd", {"taps": ("dec_low",), "patch": 1, "normalize": False},
                  {"dec_low": fs, "logits": lg}, {"dec_low": ft, "logits": lg})
    assert got == pytest.approx((ws - 0.5) ** 2 + 0.5, rel=1e-5)


# -- structure -----------------------------------------------------------------------------------
def test_registry_metadata_and_taps():
    for name in TERMS.names():
        meta = TERMS.meta(name)
        assert meta["paper"] and meta["section"].startswith("§") and isinstance(meta["defaults"], dict)
        assert TERMS.get(name).TAPS
        assert set(_contract(name)) <= {"params", "channel_agnostic", "same_channels", "skip"}, name
        if not _contract(name).get("skip"):
            assert build(name, _contract(name).get("params", {})).TAPS
    assert {v[1] for v in VARIANTS} <= set(TERMS.names())
    assert {"logit_kd", "cwd", "ifvd", "mskd_rgd", "skd_holistic", "graph_flow"} <= set(TERMS.names())
    assert {"skd_holistic", "gf_adversarial"} <= ADVERSARIAL and "logit_kd" not in ADVERSARIAL
    assert TERMS.meta("emkd_pmd")["defaults"]["tau"] == 4.0
    assert TERMS.meta("mskd_ffd")["defaults"]["gamma"] == 0.6
    assert build("emkd_imd", {}).TAPS == ("enc_low", "enc_high") and build("emkd_imd", {}).p == 4.0
    assert build("skd_pairwise", {}).TAPS == ("bottleneck",)


def test_mskd_is_parameter_free_and_cwd_adapter_only_when_needed():
    for params in ({}, {"nodes": "class"}):
        assert list(build("mskd_rgd", params, 64, 24).parameters()) == []
    assert list(build("mskd_ffd", {}, 64, 24).parameters()) == []
    assert list(build("cwd", {"taps": ("enc_high",)}, 16, 16).parameters()) == []
    assert len(list(build("cwd", {"taps": ("enc_high",)}, 64, 24).parameters())) > 0
    with pytest.raises(ValueError, match="adapter"):
        build("cwd", {"taps": ("enc_high",), "adapter": "none"}, 64, 24)


def test_bad_inputs_raise_clear_errors():
    term = build("attention_transfer", {})
    t = teacher_taps()
    with pytest.raises(KeyError, match="enc_high"):
        term(ctx({"enc_low": t["enc_low"], "logits": t["logits"]}, t))
    with pytest.raises(ValueError, match="classes"):
        build("logit_kd", {})(ctx({"logits": torch.zeros(2, 2, 32, 32)}, t))
    with pytest.raises(KeyError, match="nowhere"):
        build("ifvd", {"tap": "nowhere"})
    with pytest.raises(ValueError, match="region_source"):
        build("emkd_rad", {"region_source": "oracle"})


def test_3d_taps_and_node_cap():
    torch.manual_seed(0)
    t = {n: torch.randn(1, 8, 4, 8, 8) for n in FEATS} | {"logits": torch.randn(1, K, 8, 16, 16)}
    s = {n: torch.randn(1, 4, 2, 4, 4, requires_grad=True) for n in FEATS} | {"logits": torch.randn(1, K, 8, 16, 16)}
    lab = torch.randint(0, K, (1, 8, 16, 16))
    for name in ("attention_transfer", "skd_pairwise", "ifvd", "emkd_rad", "mskd_ffd", "mskd_rgd"):
        loss = build(name, {}, 8, 4)(ctx(s, t, lab))
        assert torch.isfinite(loss) and loss > 0, name
    assert pool_nodes(torch.randn(1, 2, 200, 200), 2, "max", max_nodes=64 * 64).shape[1] <= 64 * 64


# -- discriminator -------------------------------------------------------------------------------
def test_discriminator_settings():
    skd_h, gf = build("skd_holistic", SMALL_D), build("gf_adversarial", SMALL_D)
    assert skd_h.OWN_OPTIMIZER and gf.OWN_OPTIMIZER
    assert gf.DISC_OPTIM == {"lr": 2e-5, "betas": (0.9, 0.99)} and gf.lambda_gp == 10.0 and gf.lambda_d == 1.0
    assert skd_h.DISC_OPTIM["lr"] == 4e-4 and skd_h.lambda_d == 0.1
    assert {id(p) for p in gf.parameters()} == {id(p) for p in gf.discriminator_parameters()}


@pytest.mark.parametrize("with_image", [False, True])
def test_discriminator_step_lowers_its_loss(with_image):
    torch.manual_seed(0)
    term = build("gf_adversarial", {**SMALL_D, "with_image": with_image})
    t = teacher_taps()
    s = {k: v.requires_grad_(True) for k, v in perturbed(t, 2.0).items()}
    c = ctx(s, t, labels())
    for _ in range(10):  # settle spectral-norm power iterations
        term.discriminator(torch.randn(2, term.discriminator.blocks[0][0].in_channels, 32, 32))

    def d_loss():
        torch.manual_seed(1)  # same interpolation weights for the gradient penalty
        return term.discriminator_loss(c)

    opt = torch.optim.Adam(term.discriminator_parameters(), lr=1e-3, betas=term.DISC_OPTIM["betas"])
    before = d_loss()
    gp = term.gradient_penalty(s["logits"].detach(), t["logits"], c.image)
    assert torch.isfinite(gp) and gp > 0
    opt.zero_grad()
    before.backward()
    assert all(v.grad is None for v in s.values())   # the D step never reaches the student
    opt.step()
    assert float(d_loss().detach()) < float(before.detach())
