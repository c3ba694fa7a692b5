"""Graph Flow: the paraphraser (Factor Transfer) and the variation-graph term."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from napari_medkd.distill.terms.base import KDContext, StageContext
from napari_medkd.models.taps import TapInfo
from napari_medkd.distill.terms.graph_flow import GraphFlowTerm, adapt_patch, salience_nodes
from napari_medkd.distill.terms.paraphraser import Paraphraser, paraphraser_parameter_count
from napari_medkd.models.base import SegModel
from napari_medkd.models.taps import run_with_taps
from napari_medkd.registry import TERMS

TAPS = ["enc_low", "dec_low", "bottleneck"]


class TinySeg(SegModel):
    """2-level conv encoder/decoder; enc_low and dec_low at H/2, bottleneck at H/4."""

    TAPS = {"enc_low": "enc1", "enc_high": "enc2", "bottleneck": "enc2", "dec_low": "dec1"}

    def __init__(self, in_channels=1, num_classes=2, ch=(8, 16)):
        super().__init__(in_channels, num_classes)
        c0, c1 = ch
        self.enc1 = nn.Sequential(nn.Conv2d(in_channels, c0, 3, 2, 1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(c0, c1, 3, 2, 1), nn.ReLU())
        self.up = nn.ConvTranspose2d(c1, c0, 2, 2)
        self.dec1 = nn.Sequential(nn.Conv2d(2 * c0, c0, 3, 1, 1), nn.ReLU())
        self.head = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(c0, num_classes, 1))

    def encode(self, x):
        e1 = self.enc1(x)
        return self.enc2(e1), [e1]

    def decode(self, b, skips):
        return self.head(self.dec1(torch.cat([self.up(b), skips[0]], 1)))


def infos(model, size=32):
    feats = run_with_taps(model, torch.zeros(1, model.in_channels, size, size), TAPS)
    return {k: TapInfo(v.shape[1], size // v.shape[-1]) for k, v in feats.items()}


def make_ctx(student, teacher, x):
    with torch.no_grad():
        t = {k: v.detach() for k, v in run_with_taps(teacher, x, TAPS).items()}
    return KDContext(s=run_with_taps(student, x, TAPS), t=t, image=x, student=student, teacher=teacher)


def perturbed(model, scale, seed=1):
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


def tap_ctx(t_low, t_dec, s_low, s_dec):
    return KDContext(s={"enc_low": s_low, "dec_low": s_dec}, t={"enc_low": t_low, "dec_low": t_dec},
                     image=torch.zeros(1))


def test_registered_with_defaults():
    assert TERMS.get("graph_flow") is GraphFlowTerm
    meta = TERMS.meta("graph_flow")
    assert meta["defaults"]["p"] == 3 and meta["defaults"]["reduction"] == "mean"
    assert meta["weights_by_reduction"]["sum"] == (1e-5, 1e-9)
    assert meta["defaults"]["normalize"] is True and meta["defaults"]["taps"] is None
    assert GraphFlowTerm.TAPS == ("enc_mid", "dec_mid") and GraphFlowTerm.PRETRAIN_STAGE == "paraphraser"


def test_paraphraser_architecture():
    assert paraphraser_parameter_count(256, 24) == 1_301_448  # 1.30M in methods.md
    assert paraphraser_parameter_count(256, 64) == 1_549_248  # 1.55M
    p = Paraphraser(8, 4)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in p.modules())
    acts = [m for m in p.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 6 and all(a.negative_slope == 0.1 for a in acts)
    x = torch.randn(2, 8, 10, 12)
    assert p.encode(x).shape == (2, 4, 10, 12) and p(x).shape == x.shape


def test_hand_computed_two_nodes():
    """Constant 3x3 patches -> two nodes per tap; values worked out by hand (unnormalised vertices, the
    paper's variant; the normalised hand value is in test_terms_departures.py)."""
    def tap(v1, v2):  # (1, 2, 3, 6): node 1 = columns 0-2, node 2 = columns 3-5
        t = torch.zeros(1, 2, 3, 6)
        t[0, :, :, :3] = torch.tensor(v1, dtype=torch.float32)[:, None, None]
        t[0, :, :, 3:] = torch.tensor(v2, dtype=torch.float32)[:, None, None]
        return t

    info = {"enc_low": TapInfo(2, 2), "dec_low": TapInfo(2, 2)}
    ctx = tap_ctx(tap([1, 0], [0, 1]), tap([1, 1], [1, 0]), tap([1, 0], [1, 0]), tap([1, 0], [0, 1]))
    r = 1 / math.sqrt(2)
    # dV^T = [(0,1), (1,-1)], dV^S = [(0,0), (-1,1)] -> squared differences 0+1+4+4 = 9
    # dA^T = [[0,r],[r,0]], dA^S = [[0,-1],[-1,0]] -> 2 (1 + r)^2
    mean_term = GraphFlowTerm(info, info, 2, use_paraphraser=False, lambda_vertex=2.0, lambda_edge=3.0,
                              normalize=False)
    value = mean_term(ctx)
    assert mean_term.last_parts["vertex"].item() == pytest.approx(9 / 4)
    assert mean_term.last_parts["edge"].item() == pytest.approx(2 * (1 + r) ** 2 / 4)
    assert value.item() == pytest.approx(2 * 9 / 4 + 3 * 2 * (1 + r) ** 2 / 4)
    sum_term = GraphFlowTerm(info, info, 2, use_paraphraser=False, reduction="sum", normalize=False)
    value = sum_term(ctx)
    assert sum_term.last_parts["vertex"].item() == pytest.approx(9)
    assert value.item() == pytest.approx(1e-5 * 9 + 1e-9 * 2 * (1 + r) ** 2)


def test_sum_equals_mean_times_count():
    torch.manual_seed(0)
    info = {"enc_low": TapInfo(4, 2), "dec_low": TapInfo(4, 2)}
    ctx = tap_ctx(*[torch.randn(2, 4, 12, 12) for _ in range(4)])
    mean_t = GraphFlowTerm(info, info, 2, use_paraphraser=False)
    sum_t = GraphFlowTerm(info, info, 2, use_paraphraser=False, reduction="sum",
                          lambda_vertex=1.0, lambda_edge=1.0)
    mean_t(ctx), sum_t(ctx)
    n = 16  # 12x12 with p = 3
    mean_v, mean_e = mean_t.last_parts["vertex"].item(), mean_t.last_parts["edge"].item()
    assert sum_t.last_parts["vertex"].item() == pytest.approx(mean_v * 2 * n * 4, rel=1e-5)
    assert sum_t.last_parts["edge"].item() == pytest.approx(mean_e * 2 * n * n, rel=1e-5)


def test_zero_for_paraphrased_teacher_taps_and_growth():
    torch.manual_seed(0)
    t_info = {"enc_low": TapInfo(8, 2), "dec_low": TapInfo(8, 2)}
    s_info = {"enc_low": TapInfo(4, 2), "dec_low": TapInfo(4, 2)}
    term = GraphFlowTerm(t_info, s_info, 2)
    t_low, t_dec = torch.randn(2, 8, 12, 12), torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        f_low, f_dec = term.paraphrasers["enc_low"].encode(t_low), term.paraphrasers["dec_low"].encode(t_dec)
    noise = torch.randn(2, 2, 4, 12, 12)
    values = [term(tap_ctx(t_low, t_dec, f_low + s * noise[0], f_dec + s * noise[1])).item()
              for s in (0, 0.05, 0.5)]
    assert values[0] < 1e-10
    assert values[0] < values[1] < values[2]


def test_zero_for_identical_models_and_growth():
    torch.manual_seed(0)
    teacher = TinySeg().eval()
    x = torch.randn(2, 1, 32, 32)
    term = GraphFlowTerm(infos(teacher), infos(teacher), 2, use_paraphraser=False)
    values = [term(make_ctx(perturbed(teacher, s), teacher, x)).item() for s in (0.0, 0.02, 0.2)]
    assert values[0] == pytest.approx(0.0, abs=1e-10)
    assert values[0] < values[1] < values[2]


def test_gradients_reach_student_never_teacher():
    torch.manual_seed(0)
    teacher, student = TinySeg(ch=(8, 16)).eval(), TinySeg(ch=(4, 6))
    term = GraphFlowTerm(infos(teacher), infos(student), 2)
    loss = term(make_ctx(student, teacher, torch.randn(2, 1, 32, 32)))
    loss.backward()
    assert torch.isfinite(loss) and set(term.last_parts) == {"vertex", "edge"}
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.enc1.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.dec1.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None and not p.requires_grad for p in term.parameters())


def test_resolution_and_channel_mismatch():
    torch.manual_seed(0)
    t_info = {"enc_low": TapInfo(8, 4), "dec_low": TapInfo(8, 4)}
    s_info = {"enc_low": TapInfo(4, 2), "dec_low": TapInfo(6, 2)}  # finer student, dec has other channels
    term = GraphFlowTerm(t_info, s_info, 2)
    s_low = torch.randn(2, 4, 16, 16, requires_grad=True)
    s_dec = torch.randn(2, 6, 16, 16, requires_grad=True)
    loss = term(tap_ctx(torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8), s_low, s_dec))
    loss.backward()
    assert torch.isfinite(loss) and s_low.grad.abs().sum() > 0 and s_dec.grad.abs().sum() > 0


def test_node_grid_is_capped():
    p = adapt_patch((300, 300), 3, 4096)
    assert p == 5  # ceil(300/4)^2 = 5625 > 4096, ceil(300/5)^2 = 3600
    assert salience_nodes(torch.randn(1, 2, 300, 300), p).shape == (1, 3600, 2)
    assert adapt_patch((40, 40, 40), 3, 4096) == 3
    assert salience_nodes(torch.randn(1, 2, 2, 2), 3).shape == (1, 1, 2)  # map smaller than a patch


def test_three_dimensional_taps():
    torch.manual_seed(0)
    t_info = {"enc_low": TapInfo(4, 2), "dec_low": TapInfo(4, 2)}
    s_info = {"enc_low": TapInfo(2, 2), "dec_low": TapInfo(2, 2)}
    term = GraphFlowTerm(t_info, s_info, 2, spatial_dims=3)
    loss = term(tap_ctx(torch.randn(1, 4, 6, 6, 6), torch.randn(1, 4, 6, 6, 6),
                        torch.randn(1, 2, 6, 6, 6), torch.randn(1, 2, 6, 6, 6)))
    assert torch.isfinite(loss) and loss > 0
    with pytest.raises(ValueError, match="spatial_dims"):
        taps_3d = [torch.randn(1, 4, 6, 6, 6)] * 2 + [torch.randn(1, 2, 6, 6, 6)] * 2
        GraphFlowTerm(t_info, s_info, 2)(tap_ctx(*taps_3d))


def test_bad_configuration_errors():
    info = {"enc_low": TapInfo(8, 2), "dec_low": TapInfo(8, 2)}
    small = {"enc_low": TapInfo(4, 2), "dec_low": TapInfo(4, 2)}
    with pytest.raises(ValueError, match="use_paraphraser=False"):
        GraphFlowTerm(info, small, 2, use_paraphraser=False)
    with pytest.raises(KeyError, match="dec_low"):
        GraphFlowTerm({"enc_low": TapInfo(8, 2)}, small, 2)
    with pytest.raises(ValueError, match="reduction"):
        GraphFlowTerm(info, small, 2, reduction="max")


def test_paraphraser_pretrain_lowers_loss_then_freezes():
    torch.manual_seed(0)
    teacher, student = TinySeg(ch=(8, 16)), TinySeg(ch=(4, 6))
    term = GraphFlowTerm(infos(teacher), infos(student), 2)
    before = copy.deepcopy(teacher.state_dict())
    g = torch.Generator().manual_seed(0)

    def batches():
        while True:
            yield {"image": torch.randn(2, 1, 32, 32, generator=g)}

    logs = []
    term.pretrain(StageContext(teacher, student, batches, 60, torch.device("cpu"), logs.append))
    assert len(logs) == 60 and set(logs[0]) >= {"stage", "iter", "loss"} and logs[0]["stage"] == "paraphraser"
    first = sum(e["loss"] for e in logs[:5]) / 5
    last = sum(e["loss"] for e in logs[-10:]) / 10
    assert last < 0.95 * first
    assert all(not p.requires_grad for p in term.paraphrasers.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())

    calls = []
    stop_after_3 = lambda: len(calls) >= 3  # noqa: E731
    term.pretrain(StageContext(teacher, student, batches, 50, torch.device("cpu"), calls.append,
                               stop_after_3))
    assert len(calls) == 3
