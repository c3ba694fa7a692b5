"""Holistic (adversarial) distillation with a SAGAN discriminator and WGAN-GP (methods.md §2.2, §4, §6.7).

The discriminator follows SKD's / Graph Flow's ``sagan_models.Discriminator``: four spectral-norm
4x4 stride-2 convs (conv_dim, x2, x4, x8) with LeakyReLU(0.1), self-attention after the third
and the fourth, a final 4x4 conv; its score is the mean of the output map. Its input is
``tanh(logits)``, optionally concatenated with the image. Maps smaller than the network needs
(< 16 px in, < 4 px before the last conv) are zero-padded; 3D maps use 3D convs.

:class:`AdversarialTerm` (registered as ``gf_adversarial`` with Graph Flow's settings; SKD's
``skd_holistic`` subclasses it):

- student loss ``E[D(z^T)] - E[D(z^S)]``: the generator loss ``-E[D(z^S)]`` plus a constant, so the
  gradient is WGAN's but the value is 0 when student and teacher agree (both scored in one pass);
- ``discriminator_loss = lambda_d * (E[D(z^S)] - E[D(z^T)] + lambda_gp * GP)`` in fp32 with
  ``GP = E[(||grad D(x_hat)||_2 - 1)^2]`` on random interpolations of the two logit maps.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ._common import conv_cls, register_term, resize, tap, teacher
from .base import DistillTerm, KDContext


class SelfAttention(nn.Module):
    """SAGAN self-attention over all positions; ``gamma`` starts at 0 (identity)."""

    def __init__(self, channels: int, spatial_dims: int = 2):
        super().__init__()
        conv = conv_cls(spatial_dims)
        inner = max(1, channels // 8)
        self.query, self.key = conv(channels, inner, 1), conv(channels, inner, 1)
        self.value = conv(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query(x).flatten(2), self.key(x).flatten(2), self.value(x).flatten(2)
        attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)          # (B, N, N)
        out = (v @ attn.transpose(1, 2)).view_as(x)
        return self.gamma * out + x


def _pad_to(x: torch.Tensor, minimum: int) -> torch.Tensor:
    pads = []
    for s in reversed(x.shape[2:]):
        extra = max(0, minimum - s)
        pads += [extra // 2, extra - extra // 2]
    return F.pad(x, pads) if any(pads) else x


class SAGANDiscriminator(nn.Module):
    """(B, in_channels, *sp) -> (B,) critic scores."""

    def __init__(self, in_channels: int, conv_dim: int = 64, spatial_dims: int = 2):
        super().__init__()
        conv = conv_cls(spatial_dims)
        dims = [in_channels, conv_dim, conv_dim * 2, conv_dim * 4, conv_dim * 8]
        self.blocks = nn.ModuleList(
            nn.Sequential(spectral_norm(conv(dims[i], dims[i + 1], 4, 2, 1)), nn.LeakyReLU(0.1)) for i in range(4))
        self.attn1 = SelfAttention(dims[3], spatial_dims)
        self.attn2 = SelfAttention(dims[4], spatial_dims)
        self.last = conv(dims[4], 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _pad_to(x, 16)
        for i, block in enumerate(self.blocks):
            out = block(out)
            if i == 2:
                out = self.attn1(out)
        out = self.attn2(out)
        return self.last(_pad_to(out, 4)).flatten(1).mean(1)


@contextmanager
def no_param_grad(module: nn.Module):
    """Use a module without accumulating gradients in its parameters (inputs still get them)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, f in flags:
            p.requires_grad_(f)


@register_term("gf_adversarial", paper="Zou et al., TMI 2023 (Graph Flow): holistic WGAN-GP term", section="§2.2")
class AdversarialTerm(DistillTerm):
    """WGAN-GP holistic distillation on the logit maps (see module doc)."""

    TAPS = ("logits",)
    CONTRACT = {"params": {"conv_dim": 8}}
    OWN_OPTIMIZER = True

    def __init__(self, teacher_info, student_info, num_classes, lambda_gp: float = 10.0, lambda_d: float = 1.0,
                 d_lr: float = 2e-5, d_betas: Sequence[float] = (0.9, 0.99), conv_dim: int = 64,
                 with_image: bool = False, image_channels: int = 1, spatial_dims: int = 2):
        super().__init__(teacher_info, student_info, num_classes)
        self.lambda_gp, self.lambda_d = float(lambda_gp), float(lambda_d)
        self.with_image, self.image_channels = bool(with_image), int(image_channels)
        self.spatial_dims = int(spatial_dims)
        in_ch = self.num_classes + (self.image_channels if self.with_image else 0)
        self.discriminator = SAGANDiscriminator(in_ch, int(conv_dim), self.spatial_dims)
        self.DISC_OPTIM = {"lr": float(d_lr), "betas": tuple(float(b) for b in d_betas)}

    def discriminator_parameters(self):
        return list(self.discriminator.parameters())

    def _inputs(self, ctx: KDContext):
        name = type(self).__name__
        s, t = tap(ctx.s, "logits", "student", name), teacher(tap(ctx.t, "logits", "teacher", name))
        if s.shape[1] != self.num_classes or t.shape[1] != self.num_classes:
            raise ValueError(f"{name}: built for {self.num_classes} classes but got student logits "
                             f"{tuple(s.shape)} and teacher logits {tuple(t.shape)}")
        if t.dim() - 2 != self.spatial_dims:
            raise ValueError(f"{name} was built for spatial_dims={self.spatial_dims} but the logits have shape "
                             f"{tuple(t.shape)}; pass params {{'spatial_dims': {t.dim() - 2}}}")
        return resize(s, t.shape[2:]), t

    def _critic(self, z: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(z)
        if self.with_image:
            img = image.to(x.dtype)
            if img.shape[1] != self.image_channels:
                raise ValueError(f"{type(self).__name__}: built with image_channels={self.image_channels} but the "
                                 f"image has shape {tuple(image.shape)}")
            x = torch.cat([x, resize(img, x.shape[2:]).repeat(z.shape[0] // img.shape[0], *[1] * (img.dim() - 1))], 1)
        return self.discriminator(x)

    def forward(self, ctx: KDContext) -> torch.Tensor:
        s, t = self._inputs(ctx)
        b = s.shape[0]
        with no_param_grad(self.discriminator):  # the student's step never trains D
            scores = self._critic(torch.cat([s, t.to(s.dtype)]), ctx.image)
        return (scores[b:].mean() - scores[:b].mean()).float()

    def gradient_penalty(self, s: torch.Tensor, t: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        alpha = torch.rand(s.shape[0], *[1] * (s.dim() - 1), device=s.device, dtype=s.dtype)
        x_hat = (alpha * t + (1 - alpha) * s).requires_grad_(True)
        grad, = torch.autograd.grad(self._critic(x_hat, image).sum(), x_hat, create_graph=True)
        return (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()

    def discriminator_loss(self, ctx: KDContext) -> torch.Tensor:
        s, t = self._inputs(ctx)
        s = s.detach().float()
        image = ctx.image.detach().float()
        with torch.autocast(s.device.type, enabled=False):
            b = s.shape[0]
            scores = self._critic(torch.cat([s, t]), image)
            wasserstein = scores[:b].mean() - scores[b:].mean()
            return self.lambda_d * (wasserstein + self.lambda_gp * self.gradient_penalty(s, t, image))
