"""Generalizable KD (Qi et al., JBHI 2024): MSAN headers, the P-SAE and the ACT stage [R].

Reconstruction choices (methods.md §2.4; the paper's training code is not public):

- :class:`MSANHeader` ``H^m = (E^m, D^m)``. ``E``: adaptive-average-pool the bottleneck to a fixed
  ``grid^n`` (so the spatial MLP does not depend on the input size), flatten each channel,
  ``Linear(grid^n->hidden) -> GELU -> Linear(hidden->1)`` (a ``C``-vector, as the released ``Mlp``),
  then ``Linear(C->d)`` into the shared ``d``-dim space. ``D``: ``Linear(d->C)``, per channel
  ``Linear(1->hidden) -> GELU -> Linear(hidden->grid^n)``, reshaped to ``C x grid^n`` and resized
  (bilinear/trilinear) to the bottleneck size asked for.
- :class:`PSAE`: a small image autoencoder (three stride-2 convs to ``H/8``, the same header
  giving a ``d``-dim latent, three stride-2 transposed convs, 1x1 head). Multi-channel images are
  averaged to one channel when the P-SAE has one input channel. Its latent is the
  domain-invariant target ``s^{P-SAE}``.
- ACT (:meth:`GKDAlignment.pretrain`, stage ``"msan"``), teacher and student frozen (eval, no grad):
  phase 1 trains the P-SAE on reconstruction (MSE); phase 2 trains both MSANs with
  ``w_rec * L_rec + w_align * L_align + w_cons * L_cons`` where, on two random augmentations
  ``x1, x2`` (flips, rot90, intensity jitter) of each batch, ``L_rec = MSE(D(E(F)), F)``,
  ``L_align = 1 - cos(s^m, s^{P-SAE})`` and ``L_cons = 1 - cos(s^m(x1), s^m(x2))``. Both phases use
  Adam; ``psae_fraction`` of the stage's iterations go to phase 1.
- Afterwards the teacher MSAN and the P-SAE are frozen; the student MSAN stays trainable
  during distillation when ``train_student_msan`` (default) is set.

One :class:`GKDAlignment` is shared by the ``gkd_dcgd`` and ``gkd_dicd`` terms (build it once in
the method factory and pass ``alignment=``); the terms expose it as ``stage_owner`` so the
engine pre-trains it once.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import DistillTerm, StageContext
from ...models.taps import TapInfo
from .paraphraser import conv_classes, set_frozen


@contextmanager
def frozen(module: nn.Module):
    """Run a module in eval mode with no parameter gradients; restore both afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        for m, t in modes:
            m.training = t


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def augment(x: torch.Tensor, jitter: float = 0.1,
            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One random view per sample: flips of each spatial axis, rot90 in the last two axes
    (multiples of 180 degrees when they differ in size) and intensity ``x * a + b`` with
    ``a ~ U(1 +- jitter)``, ``b ~ U(+- jitter * std(x))``. The shape is kept."""
    nd = x.dim() - 2
    square = x.shape[-1] == x.shape[-2]
    out = []
    for v in x:
        r = torch.rand(nd + 3, generator=generator)
        for d in range(nd):
            if r[d] < 0.5:
                v = v.flip(d + 1)
        k = int(r[nd] * 4) % 4 if square else 2 * (int(r[nd] * 2) % 2)
        v = torch.rot90(v, k, dims=(-2, -1))
        scale = 1.0 + jitter * (2 * float(r[nd + 1]) - 1)
        spread = float(v.detach().float().std()) if v.numel() > 1 else 0.0
        shift = jitter * (2 * float(r[nd + 2]) - 1) * spread
        out.append(v * scale + shift)
    return torch.stack(out)


class MSANHeader(nn.Module):
    """Model-specific alignment network: bottleneck ``(B, C, *sp)`` <-> semantic vector ``(B, d)``."""

    def __init__(self, channels: int, dim: int = 512, grid: int = 8, hidden: int = 64, spatial_dims: int = 2):
        super().__init__()
        self.channels, self.dim = int(channels), int(dim)
        self.grid, self.spatial_dims = int(grid), int(spatial_dims)
        cells = self.grid ** self.spatial_dims
        self.down = nn.Sequential(nn.Linear(cells, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.to_vec = nn.Linear(self.channels, self.dim)
        self.from_vec = nn.Linear(self.dim, self.channels)
        self.up = nn.Sequential(nn.Linear(1, hidden), nn.GELU(), nn.Linear(hidden, cells))

    def encode(self, feat: torch.Tensor) -> torch.Tensor:
        if feat.dim() - 2 != self.spatial_dims or feat.shape[1] != self.channels:
            raise ValueError(f"MSAN header expects (B, {self.channels}, {self.spatial_dims} spatial dims), "
                             f"got {tuple(feat.shape)}")
        pool = F.adaptive_avg_pool2d if self.spatial_dims == 2 else F.adaptive_avg_pool3d
        cells = pool(feat.float(), self.grid).flatten(2)           # (B, C, grid^n)
        return self.to_vec(self.down(cells).squeeze(-1))           # (B, d)

    def decode(self, vec: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        c = self.from_vec(vec).unsqueeze(-1)                       # (B, C, 1)
        maps = self.up(c).reshape(vec.shape[0], self.channels, *([self.grid] * self.spatial_dims))
        return resize(maps, size)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(feat), feat.shape[2:])


class PSAE(nn.Module):
    """Pre-trained semantic autoencoder: image -> ``d``-dim latent -> image."""

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64, 128), dim: int = 512,
                 grid: int = 8, hidden: int = 64, spatial_dims: int = 2):
        super().__init__()
        conv, convt = conv_classes(spatial_dims)
        self.in_channels = int(in_channels)
        enc, prev = [], self.in_channels
        for c in channels:
            enc += [conv(prev, c, 3, 2, 1), nn.ReLU(inplace=True)]
            prev = c
        self.encoder = nn.Sequential(*enc)
        self.header = MSANHeader(prev, dim, grid, hidden, spatial_dims)
        dec, outs = [], list(channels[-2::-1]) + [channels[0]]
        for c in outs:
            dec += [convt(prev, c, 2, 2), nn.ReLU(inplace=True)]
            prev = c
        dec.append(conv(prev, self.in_channels, 1))
        self.decoder = nn.Sequential(*dec)

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[1] == self.in_channels:
            return image.float()
        if self.in_channels == 1:
            return image.float().mean(1, keepdim=True)
        raise ValueError(f"the P-SAE takes {self.in_channels} channel(s) but the images have "
                         f"{image.shape[1]}")

    def latent(self, image: torch.Tensor) -> torch.Tensor:
        return self.header.encode(self.encoder(self.prepare(image)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.prepare(image)
        f = self.encoder(x)
        return resize(self.decoder(self.header.decode(self.header.encode(f), f.shape[2:])), x.shape[2:])


def _one_minus_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-8)).mean()


class GKDAlignment(nn.Module):
    """Teacher MSAN + student MSAN + P-SAE, shared by the GKD terms; :meth:`pretrain` is ACT."""

    PRETRAIN_STAGE = "msan"

    def __init__(self, teacher_channels: int, student_channels: int, dim: int = 512, grid: int = 8,
                 hidden: int = 64, spatial_dims: int = 2, in_channels: int = 1,
                 psae_channels: Sequence[int] = (32, 64, 128),
                 train_student_msan: bool = True, lr: float = 1e-3, psae_fraction: float = 0.5,
                 w_rec: float = 1.0, w_align: float = 1.0, w_cons: float = 1.0, jitter: float = 0.1):
        super().__init__()
        self.teacher_msan = MSANHeader(teacher_channels, dim, grid, hidden, spatial_dims)
        self.student_msan = MSANHeader(student_channels, dim, grid, hidden, spatial_dims)
        self.psae = PSAE(in_channels, psae_channels, dim, grid, hidden, spatial_dims)
        self.train_student_msan = bool(train_student_msan)
        self.lr, self.psae_fraction, self.jitter = float(lr), float(psae_fraction), float(jitter)
        self.w_rec, self.w_align, self.w_cons = float(w_rec), float(w_align), float(w_cons)
        self._freeze()

    @classmethod
    def from_infos(cls, teacher_info: Dict[str, TapInfo], student_info: Dict[str, TapInfo],
                   tap: str = "bottleneck", **kwargs) -> "GKDAlignment":
        for side, info in (("teacher", teacher_info), ("student", student_info)):
            if tap not in info:
                raise KeyError(f"GKD needs the {side}'s '{tap}' tap; it has {sorted(info)}")
        return cls(teacher_info[tap].channels, student_info[tap].channels, **kwargs)

    def _freeze(self) -> None:
        set_frozen(self.teacher_msan, True)
        set_frozen(self.psae, True)
        set_frozen(self.student_msan, not self.train_student_msan)

    # -- ACT --------------------------------------------------------------------------------------
    def pretrain(self, stage: StageContext) -> None:
        total = max(1, int(stage.iterations))
        n_psae = max(1, int(round(total * self.psae_fraction)))
        n_msan = max(1, total - n_psae)
        batches = stage.batches()
        start = int(stage.start)  # a resumed stage: phases follow the global iteration index
        try:
            with frozen(stage.teacher), frozen(stage.student):
                if start < n_psae:
                    start = self._train_psae(stage, batches, n_psae, start)
                if not stage.should_stop() and start >= n_psae:
                    self._train_msans(stage, batches, n_msan - (start - n_psae), start)
        finally:
            self._freeze()

    def _train_psae(self, stage: StageContext, batches, n: int, start: int = 0) -> int:
        """P-SAE iterations ``start .. n - 1``; returns the global index reached."""
        set_frozen(self.psae, False)
        opt = torch.optim.Adam(self.psae.parameters(), lr=self.lr)
        stage.keep_optimizer("psae", opt)
        it = start - 1
        for it in range(start, n):
            if stage.should_stop():
                it -= 1
                break
            x = self.psae.prepare(next(batches)["image"])
            loss = F.mse_loss(self.psae(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            stage.log({"stage": self.PRETRAIN_STAGE, "phase": "psae", "iter": it,
                       "loss": float(loss.detach())})
        set_frozen(self.psae, True)
        return it + 1

    def _train_msans(self, stage: StageContext, batches, n: int, start: int) -> None:
        set_frozen(self.teacher_msan, False)
        set_frozen(self.student_msan, False)
        params = list(self.teacher_msan.parameters()) + list(self.student_msan.parameters())
        opt = torch.optim.Adam(params, lr=self.lr)
        stage.keep_optimizer("msan", opt)
        for i in range(n):
            if stage.should_stop():
                break
            loss, parts = self.act_loss(stage.teacher, stage.student, next(batches)["image"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            stage.log({"stage": self.PRETRAIN_STAGE, "phase": "msan", "iter": start + i,
                       "loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}})

    def act_loss(self, teacher: nn.Module, student: nn.Module, image: torch.Tensor):
        """ACT objective on two augmentations of ``image`` (models run without gradients)."""
        x1, x2 = augment(image, self.jitter), augment(image, self.jitter)
        with torch.no_grad():
            z1, z2 = self.psae.latent(x1), self.psae.latent(x2)
            feats = {"teacher": (teacher.encode(x1)[0].float(), teacher.encode(x2)[0].float()),
                     "student": (student.encode(x1)[0].float(), student.encode(x2)[0].float())}
        total, parts = 0.0, {}
        for name, header in (("teacher", self.teacher_msan), ("student", self.student_msan)):
            b1, b2 = feats[name]
            s1, s2 = header.encode(b1), header.encode(b2)
            rec = 0.5 * (F.mse_loss(header.decode(s1, b1.shape[2:]), b1)
                         + F.mse_loss(header.decode(s2, b2.shape[2:]), b2))
            align = 0.5 * (_one_minus_cos(s1, z1) + _one_minus_cos(s2, z2))
            cons = _one_minus_cos(s1, s2)
            total = total + self.w_rec * rec + self.w_align * align + self.w_cons * cons
            parts.update({f"{name}_rec": rec.detach(), f"{name}_align": align.detach(),
                          f"{name}_cons": cons.detach()})
        return total, parts


class GKDTerm(DistillTerm):
    """Base of the GKD terms: holds (or builds) the shared :class:`GKDAlignment`.

    Pass ``alignment=`` to share one instance between terms; otherwise the remaining keyword
    arguments build a private one (``GKDAlignment.from_infos``).
    """

    PRETRAIN_STAGE = "msan"
    CONTRACT = {"skip": "runs the student and teacher models themselves (ctx.student/teacher, bottleneck "
                        "exchange); tests/test_terms_gkd.py holds its contract"}

    def __init__(self, teacher_info, student_info, num_classes, alignment: Optional[GKDAlignment] = None,
                 **alignment_kw):
        super().__init__(teacher_info, student_info, num_classes)
        name = type(self).__name__
        if alignment is None:
            alignment = GKDAlignment.from_infos(teacher_info, student_info, **alignment_kw)
        elif alignment_kw:
            raise ValueError(f"{name}: options {sorted(alignment_kw)} belong to the shared GKDAlignment; "
                             f"set them where it is built")
        for side, info, header in (("teacher", teacher_info, alignment.teacher_msan),
                                   ("student", student_info, alignment.student_msan)):
            if "bottleneck" in info and info["bottleneck"].channels != header.channels:
                raise ValueError(f"{name}: the {side} bottleneck has {info['bottleneck'].channels} channels "
                                 f"but the shared alignment's {side} MSAN expects {header.channels}")
        self.alignment = alignment

    @property
    def stage_owner(self) -> GKDAlignment:
        return self.alignment

    def pretrain(self, stage: StageContext) -> None:
        self.alignment.pretrain(stage)
