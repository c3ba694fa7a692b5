"""The interface of one distillation term.

A *term* is an ``nn.Module`` computing one scalar loss from student and teacher taps. A *method*
(``napari_medkd.distill.methods``) is a weighted set of terms with the paper's defaults.

Engine contract (``napari_medkd.distill.engine``):

1. The engine builds the term with ``Term(teacher_info, student_info, num_classes, **params)``
   where ``*_info`` maps each tap name to ``TapInfo(channels, stride)`` measured on a probe input.
2. Each iteration it runs the teacher (eval, ``no_grad``) and the student with forward hooks on
   ``term.TAPS`` (plus ``logits``), builds a :class:`KDContext` and calls ``term(ctx)``.
3. ``term.parameters()`` (student-side adapters, projectors) join the student's optimiser unless
   the term sets ``OWN_OPTIMIZER``; they are never exported with the student.
4. A term with ``PRETRAIN_STAGE`` (a name, e.g. ``"paraphraser"``) gets
   ``term.pretrain(stage_ctx)`` once before distillation; its state is saved in the run folder
   and reused on resume.
5. Adversarial terms implement ``discriminator_loss(ctx)`` and ``discriminator_parameters()``; the
   engine steps a separate optimiser on it once per student step (``DISC_OPTIM`` gives its settings).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Optional

import torch
from torch import nn

from ...models.taps import TapInfo


@dataclass
class KDContext:
    s: Dict[str, torch.Tensor]            # student taps (with grad), always includes "logits"
    t: Dict[str, torch.Tensor]            # teacher taps (detached), always includes "logits"
    image: torch.Tensor                   # (B, C, *spatial) the input both models saw
    label: Optional[torch.Tensor] = None  # (B, *spatial) long class indices, or None
    labelled: Optional[torch.Tensor] = None  # (B,) bool: which samples have a real label
    student: Optional[nn.Module] = None
    teacher: Optional[nn.Module] = None
    extra: Dict[str, Any] = field(default_factory=dict)  # e.g. augmented views for GKD


@dataclass
class StageContext:
    """What a pre-training stage receives. ``iterations`` is the stage's whole length and ``start`` the
    iterations a resumed stage has already done: a stage loop runs ``range(start, iterations)`` (its
    learning-rate schedule and phases follow the global index), logs that index, and hands each optimiser
    it makes to ``keep_optimizer(name, opt)``, which restores a resumed stage's optimiser state into it
    and keeps it in the stage's checkpoints (distill/stages.py)."""
    teacher: nn.Module
    student: nn.Module
    batches: Callable[[], Iterator[Dict[str, torch.Tensor]]]  # yields {"image","label","labelled"}
    iterations: int
    device: torch.device
    log: Callable[[Dict[str, Any]], None] = lambda event: None
    should_stop: Callable[[], bool] = lambda: False
    start: int = 0
    keep_optimizer: Callable[[str, Any], None] = lambda name, opt: None


class DistillTerm(nn.Module):
    TAPS: tuple = ("logits",)
    NEEDS_LABELS: bool = False
    OWN_OPTIMIZER: bool = False
    PRETRAIN_STAGE: Optional[str] = None
    DISC_OPTIM: Optional[Dict[str, Any]] = None
    # Target ||grad(w L_term)|| / ||grad L_seg|| when distill.balance = grad (None: distill.grad_ratio)
    BALANCE_RATIO: Optional[float] = None
    # What the term promises, read by the contract tests (tests/test_terms_baselines.py), which run for
    # every registered term: ``params`` to build it small for a test; ``channel_agnostic`` when it compares
    # only structure (zero for a teacher tap that is the student's with channels repeated and upsampled);
    # ``same_channels`` when teacher and student taps need equal channel counts; ``skip``: why the
    # tap-only contract does not apply (the term's own tests cover it).
    CONTRACT: Dict[str, Any] = {}

    def __init__(self, teacher_info: Dict[str, TapInfo], student_info: Dict[str, TapInfo], num_classes: int):
        super().__init__()
        self.teacher_info = dict(teacher_info)
        self.student_info = dict(student_info)
        self.num_classes = int(num_classes)

    def forward(self, ctx: KDContext) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pretrain(self, stage: StageContext) -> None:  # pragma: no cover - only for staged terms
        raise NotImplementedError

    def discriminator_loss(self, ctx: KDContext) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def discriminator_parameters(self):
        return []
