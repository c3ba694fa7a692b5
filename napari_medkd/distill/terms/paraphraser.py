"""The Factor Transfer paraphraser (Kim et al., NeurIPS 2018) as Graph Flow uses it.

A teacher-side convolutional autoencoder that maps a teacher tap (``C_T`` channels) to ``k``
"factor" channels, ``k`` being the student's channel count at that tap, so teacher and student
features can be compared without a student-side translator (methods.md §2.2):

    encoder: conv3x3 C_T->C_T, C_T->k, k->k          (LeakyReLU(0.1) after each, no BN)
    decoder: convT3x3 k->k, k->C_T, C_T->C_T          (LeakyReLU(0.1) after each, no BN)

Stage 1 (:func:`train_paraphrasers`) trains it to reconstruct the frozen teacher feature (L1 by
default; SGD lr 0.01, momentum 0.9, wd 2e-4, poly decay 0.9); afterwards it is frozen and only the
encoder half (the reference code's "mode 1") is used to produce the teacher factors.
"""
from __future__ import annotations

from typing import Dict, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ...models.taps import FeatureTaps
from .base import StageContext


def conv_classes(spatial_dims: int):
    """(Conv, ConvTranspose) for 2 or 3 spatial dimensions."""
    if spatial_dims == 2:
        return nn.Conv2d, nn.ConvTranspose2d
    if spatial_dims == 3:
        return nn.Conv3d, nn.ConvTranspose3d
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def set_frozen(module: nn.Module, frozen: bool) -> None:
    """Switch a module between frozen (eval, no gradients) and trainable (train, gradients)."""
    for p in module.parameters():
        p.requires_grad_(not frozen)
    module.train(not frozen)


class Paraphraser(nn.Module):
    """Teacher-side autoencoder ``C_T -> k -> C_T`` (all 3x3, stride 1, LeakyReLU(0.1), no BN)."""

    def __init__(self, in_channels: int, factor_channels: int, spatial_dims: int = 2,
                 negative_slope: float = 0.1):
        super().__init__()
        if in_channels < 1 or factor_channels < 1:
            raise ValueError(f"Paraphraser needs positive channel counts, got {in_channels} -> "
                             f"{factor_channels}")
        conv, convt = conv_classes(spatial_dims)
        c, k = int(in_channels), int(factor_channels)
        self.in_channels, self.factor_channels, self.spatial_dims = c, k, spatial_dims
        act = lambda: nn.LeakyReLU(negative_slope)  # noqa: E731
        self.encoder = nn.Sequential(conv(c, c, 3, 1, 1), act(), conv(c, k, 3, 1, 1), act(),
                                     conv(k, k, 3, 1, 1), act())
        self.decoder = nn.Sequential(convt(k, k, 3, 1, 1), act(), convt(k, c, 3, 1, 1), act(),
                                     convt(c, c, 3, 1, 1), act())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher factors (reference "mode 1")."""
        return self.encoder(x)

    def decode(self, factors: torch.Tensor) -> torch.Tensor:
        return self.decoder(factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction (reference "mode 0")."""
        return self.decoder(self.encoder(x))


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind in ("l2", "mse"):
        return F.mse_loss(pred, target)
    raise ValueError(f"paraphraser loss must be 'l1' or 'mse', got {kind!r}")


def train_paraphrasers(paraphrasers: Dict[str, Paraphraser], stage: StageContext,
                       stage_name: str = "paraphraser", loss: str = "l1", lr: float = 0.01,
                       momentum: float = 0.9, weight_decay: float = 2e-4, power: float = 0.9) -> None:
    """Stage 1 of Factor Transfer: reconstruct the frozen teacher's taps, then freeze the paraphrasers.

    ``paraphrasers`` maps a teacher tap name to its paraphraser; all are trained together (one
    teacher forward per batch, the losses summed). Logs ``{"stage", "iter", "loss", "lr"}`` per
    iteration and stops early when ``stage.should_stop()``.
    """
    modules = list(paraphrasers.values())
    for m in modules:
        set_frozen(m, False)
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    stage.keep_optimizer(stage_name, opt)
    total = max(1, int(stage.iterations))
    teacher = stage.teacher
    was_training = teacher.training
    teacher.eval()
    batches = stage.batches()
    try:
        for it in range(int(stage.start), total):
            if stage.should_stop():
                break
            cur_lr = lr * (1.0 - it / total) ** power
            for g in opt.param_groups:
                g["lr"] = cur_lr
            image = next(batches)["image"]
            with torch.no_grad(), FeatureTaps(teacher, list(paraphrasers)) as taps:
                teacher(image)
            value = sum(reconstruction_loss(p(taps.features[name].detach().float()),
                                            taps.features[name].detach().float(), loss)
                        for name, p in paraphrasers.items())
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            stage.log({"stage": stage_name, "iter": it, "loss": float(value.detach()), "lr": cur_lr})
    finally:
        teacher.train(was_training)
        for m in modules:
            set_frozen(m, True)


def paraphraser_parameter_count(in_channels: int, factor_channels: int) -> int:
    """Parameters of a 2D paraphraser (256 -> 24: 1,301,448; 256 -> 64: 1,549,248)."""
    return sum(p.numel() for p in Paraphraser(in_channels, factor_channels).parameters())


__all__: Iterable[str] = ["Paraphraser", "train_paraphrasers", "reconstruction_loss", "set_frozen",
                          "conv_classes", "paraphraser_parameter_count"]
