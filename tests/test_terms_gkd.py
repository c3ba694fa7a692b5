"""Generalizable KD: MSAN headers, P-SAE, the ACT stage and the DCGD / DICD terms."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from napari_medkd.distill.terms.base import KDContext, StageContext
from napari_medkd.models.taps import TapInfo
from napari_medkd.distill.terms.gkd_dcgd import DCGDTerm
from napari_medkd.distill.terms.gkd_dicd import DICDTerm
from napari_medkd.distill.terms.gkd_msan import PSAE, GKDAlignment, MSANHeader, augment
from napari_medkd.models.base import SegModel
from napari_medkd.models.taps import run_with_taps
from napari_medkd.registry import TERMS

TAPS = ["enc_low", "dec_low", "bottleneck"]
DIM, GRID = 16, 4


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


class IdentityHeader(nn.Module):
    """A lossless 'MSAN' (the flattened bottleneck) to isolate the DICD exchange path."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels

    def encode(self, feat):
        return feat.flatten(1)

    def decode(self, vec, size):
        return vec.reshape(vec.shape[0], self.channels, *size)


def infos(model, size=32):
    feats = run_with_taps(model, torch.zeros(1, model.in_channels, size, size), TAPS)
    return {k: TapInfo(v.shape[1], size // v.shape[-1]) for k, v in feats.items()}


def make_ctx(student, teacher, x, **extra):
    with torch.no_grad():
        t = {k: v.detach() for k, v in run_with_taps(teacher, x, TAPS).items()}
    return KDContext(s=run_with_taps(student, x, TAPS), t=t, image=x, student=student, teacher=teacher,
                     extra=extra)


def perturbed(model, scale, seed=1):
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return out


def blobs(n, size=32, generator=None):
    yy, xx = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    out = []
    for _ in range(n):
        c = torch.rand(2, generator=generator) * (size - 12) + 6
        r = torch.rand(1, generator=generator) * 5 + 3
        disc = (((yy - c[0]) ** 2 + (xx - c[1]) ** 2) < r ** 2).float()
        out.append(disc[None] + 0.1 * torch.randn(1, size, size, generator=generator))
    return torch.stack(out)


def alignment_for(teacher, student, **kw):
    return GKDAlignment.from_infos(infos(teacher), infos(student), dim=DIM, grid=GRID,
                                   psae_channels=(8, 16, 32), **kw)


def grads_nonzero(params):
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_registered():
    assert TERMS.get("gkd_dcgd") is DCGDTerm and TERMS.get("gkd_dicd") is DICDTerm
    assert TERMS.meta("gkd_dcgd")["defaults"]["tau"] == 0.1
    assert TERMS.meta("gkd_dicd")["defaults"]["dim"] == 512
    assert DCGDTerm.PRETRAIN_STAGE == DICDTerm.PRETRAIN_STAGE == "msan"


def test_msan_header_and_psae_shapes():
    torch.manual_seed(0)
    h = MSANHeader(6, dim=DIM, grid=GRID)
    for size in ((5, 7), (16, 16)):
        s = h.encode(torch.randn(2, 6, *size))
        assert s.shape == (2, DIM) and h.decode(s, size).shape == (2, 6, *size)
    with pytest.raises(ValueError, match="MSAN header expects"):
        h.encode(torch.randn(2, 5, 8, 8))
    p = PSAE(1, (4, 8, 8), dim=DIM, grid=GRID)
    assert p(torch.randn(2, 1, 32, 32)).shape == (2, 1, 32, 32)
    assert p(torch.randn(1, 1, 36, 28)).shape == (1, 1, 36, 28)
    assert p.latent(torch.randn(2, 3, 32, 32)).shape == (2, DIM)  # RGB averaged to one channel
    with pytest.raises(ValueError, match="P-SAE takes 2"):
        PSAE(2, (4, 8, 8), dim=DIM, grid=GRID).latent(torch.randn(1, 3, 32, 32))


def test_augment_keeps_shape_and_changes_views():
    x = torch.randn(3, 1, 16, 16)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = augment(x, generator=g1), augment(x, generator=g2)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)
    assert augment(torch.randn(2, 1, 8, 12)).shape == (2, 1, 8, 12)
    assert augment(torch.randn(1, 1, 4, 8, 8)).shape == (1, 1, 4, 8, 8)


def test_shared_alignment_wiring():
    teacher, student = TinySeg(ch=(8, 16)), TinySeg(ch=(4, 6))
    al = alignment_for(teacher, student)
    dc = DCGDTerm(infos(teacher), infos(student), 2, alignment=al)
    di = DICDTerm(infos(teacher), infos(student), 2, alignment=al)
    assert dc.stage_owner is di.stage_owner is al
    trainable = {id(p) for t in (dc, di) for p in t.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in al.student_msan.parameters()}
    assert "stage_owner" not in dict(dc.named_children())
    frozen_student = alignment_for(teacher, student, train_student_msan=False)
    assert not any(p.requires_grad for p in frozen_student.parameters())
    with pytest.raises(ValueError, match="shared alignment"):
        DCGDTerm(infos(student), infos(student), 2, alignment=al)
    with pytest.raises(ValueError, match="belong to the shared GKDAlignment"):
        DICDTerm(infos(teacher), infos(student), 2, alignment=al, dim=8)


def test_dcgd_zero_when_identical_and_grows():
    torch.manual_seed(0)
    teacher = TinySeg().eval()
    al = alignment_for(teacher, teacher)
    al.student_msan.load_state_dict(al.teacher_msan.state_dict())
    term = DCGDTerm(infos(teacher), infos(teacher), 2, alignment=al)
    x = blobs(3)
    views = [augment(x), augment(x)]
    values = [term(make_ctx(perturbed(teacher, s), teacher, x, views=views)).item()
              for s in (0.0, 0.002, 0.02)]
    assert values[0] < 1e-8
    assert values[0] < values[1] < values[2]
    assert set(term.last_parts) == {"intra", "inter"}


def test_dcgd_batch_of_one_is_finite():
    torch.manual_seed(0)
    teacher, student = TinySeg().eval(), TinySeg(ch=(4, 6))
    for k in (1, 2, 3):
        term = DCGDTerm(infos(teacher), infos(student), 2, num_views=k, dim=DIM, grid=GRID)
        loss = term(make_ctx(student, teacher, torch.randn(1, 1, 32, 32)))
        assert torch.isfinite(loss) and loss >= 0
        loss.backward()


def test_dcgd_gradients_reach_student_never_teacher():
    torch.manual_seed(0)
    teacher, student = TinySeg(ch=(8, 16)), TinySeg(ch=(4, 6))  # teacher left trainable on purpose
    al = alignment_for(teacher, student)
    term = DCGDTerm(infos(teacher), infos(student), 2, alignment=al)
    loss = term(make_ctx(student, teacher, blobs(2)))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert grads_nonzero(student.enc2.parameters()) and grads_nonzero(al.student_msan.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in al.teacher_msan.parameters())
    assert all(p.requires_grad for p in teacher.parameters()) and teacher.training  # restored after the call


def test_dicd_zero_with_lossless_headers_and_grows():
    torch.manual_seed(0)
    teacher = TinySeg().eval()
    al = alignment_for(teacher, teacher)
    al.teacher_msan, al.student_msan = IdentityHeader(16), IdentityHeader(16)
    term = DICDTerm(infos(teacher), infos(teacher), 2, alignment=al)
    x = torch.randn(2, 1, 32, 32)
    values = [term(make_ctx(perturbed(teacher, s), teacher, x)).item() for s in (0.0, 0.05, 0.5)]
    assert values[0] == pytest.approx(0.0, abs=1e-10)
    assert values[0] < values[1] < values[2]


def test_dicd_cross_terms_agree_for_identical_models():
    torch.manual_seed(0)
    teacher = TinySeg().eval()
    al = alignment_for(teacher, teacher)
    al.student_msan.load_state_dict(al.teacher_msan.state_dict())
    term = DICDTerm(infos(teacher), infos(teacher), 2, alignment=al, tau=2.0)
    term(make_ctx(copy.deepcopy(teacher), teacher, torch.randn(2, 1, 32, 32)))
    parts = term.last_parts
    assert parts["cross_student"].item() == pytest.approx(parts["cross_teacher"].item(), rel=1e-5)


def test_dicd_gradients():
    torch.manual_seed(0)
    teacher, student = TinySeg(ch=(8, 16)), TinySeg(ch=(4, 6))  # teacher left trainable on purpose
    al = alignment_for(teacher, student)
    term = DICDTerm(infos(teacher), infos(student), 2, alignment=al)
    x = torch.randn(2, 1, 32, 32)
    loss = term(make_ctx(student, teacher, x))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert grads_nonzero(student.enc2.parameters()) and grads_nonzero(student.dec1.parameters())
    assert grads_nonzero(al.student_msan.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in al.teacher_msan.parameters())
    assert all(p.requires_grad for p in teacher.parameters()) and teacher.training

    # the teacher-decoder branch alone trains the student encoder (through s^S), not its decoder
    student.zero_grad(set_to_none=True)
    only_t = DICDTerm(infos(teacher), infos(student), 2, alignment=al, w_student=0.0)
    only_t(make_ctx(student, teacher, x)).backward()
    assert grads_nonzero(student.enc2.parameters())
    assert not grads_nonzero(student.dec1.parameters()) and not grads_nonzero(student.head.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_act_pretrain_lowers_loss_and_freezes():
    torch.manual_seed(0)
    teacher, student = TinySeg(ch=(8, 16)), TinySeg(ch=(4, 6))
    al = alignment_for(teacher, student)
    dc = DCGDTerm(infos(teacher), infos(student), 2, alignment=al)
    t_before, s_before = copy.deepcopy(teacher.state_dict()), copy.deepcopy(student.state_dict())
    g = torch.Generator().manual_seed(0)

    def batches():
        while True:
            yield {"image": blobs(4, generator=g)}

    logs = []
    dc.pretrain(StageContext(teacher, student, batches, 120, torch.device("cpu"), logs.append))
    psae = [e["loss"] for e in logs if e["phase"] == "psae"]
    msan = [e["loss"] for e in logs if e["phase"] == "msan"]
    assert len(psae) == 60 and len(msan) == 60 and all(e["stage"] == "msan" for e in logs)
    assert {"teacher_rec", "student_align", "student_cons"} <= set(logs[-1])
    assert sum(psae[-10:]) / 10 < sum(psae[:5]) / 5
    assert sum(msan[-10:]) / 10 < 0.8 * sum(msan[:5]) / 5
    assert all(torch.equal(t_before[k], v) for k, v in teacher.state_dict().items())
    assert all(torch.equal(s_before[k], v) for k, v in student.state_dict().items())
    assert all(p.requires_grad for p in student.parameters()) and student.training
    assert not any(p.requires_grad for p in al.teacher_msan.parameters())
    assert not any(p.requires_grad for p in al.psae.parameters())
    assert all(p.requires_grad for p in al.student_msan.parameters())

    calls = []
    al.pretrain(StageContext(teacher, student, batches, 40, torch.device("cpu"), calls.append,
                             lambda: len(calls) >= 3))
    assert len(calls) == 3 and not any(p.requires_grad for p in al.teacher_msan.parameters())
