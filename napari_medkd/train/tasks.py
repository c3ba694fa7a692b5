"""What one training iteration computes. The engine is generic; a *task* supplies the loss.

``SupervisedTask`` trains a model alone with Dice + cross-entropy (MONAI ``DiceCELoss``). The
distillation task (``napari_medkd.distill.task``) adds a frozen teacher and distillation terms.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple


class SupervisedTask:
    name = "supervised"
    #: whether samples without a mask carry a loss (a teacher's terms do); if not, the sampler skips them
    uses_unlabelled = False

    def __init__(self, model, num_classes: int):
        from monai.losses import DiceCELoss

        self.model = model
        self.num_classes = num_classes
        self.seg_loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.progress = 0.0

    def modules_to_device(self, device) -> None:
        self.model.to(device)

    def param_groups(self) -> List[Dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def segmentation_loss(self, logits, label, labelled):
        """Dice + CE on the labelled samples only (zero when none is labelled)."""
        if labelled is not None and not bool(labelled.all()):
            if not bool(labelled.any()):
                return logits.sum() * 0.0
            logits, label = logits[labelled], label[labelled]
        return self.seg_loss(logits, label.unsqueeze(1))

    def compute(self, batch: Dict[str, Any], train_model) -> Tuple[Any, Dict[str, float]]:
        logits = train_model(batch["image"])
        loss = self.segmentation_loss(logits, batch["label"], batch.get("labelled"))
        return loss, {"seg": float(loss.detach())}

    def set_progress(self, fraction: float) -> None:
        """The share of the budget spent before this step (the distillation task ramps its terms by it)."""
        self.progress = float(fraction)

    def after_step(self, batch: Dict[str, Any]) -> Dict[str, float]:
        return {}

    def prepare(self, ctx) -> None:
        """Pre-training stages (none for supervised training)."""

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass
