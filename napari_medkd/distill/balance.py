"""Loss balancing that every method gets: a warm-up ramp and a gradient-norm calibration of each term.

Measured on the student at the papers' weights (issue 12), feature and graph terms had gradients 3-108x
the segmentation gradient, with cosines to it near zero: whatever their name, they, not the labels, set
the direction of the first updates. Two mechanisms, both per term and logged in ``events.jsonl``:

- **Warm-up** (``distill.warmup = [start, end]``, shares of the budget): every term's weight is 0 before
  ``start``, rises linearly and is full from ``end`` on. The student first learns from its labels, then
  from the teacher.
- **Calibration** (``distill.balance = "grad"``): before the first step, on ``balance_batches`` batches,
  the gradient norm of each term (at weight 1) and of the segmentation loss are measured on the student's
  own parameters; the term's weight is then set so that ``||grad(w L_term)|| = ratio * ||grad L_seg||``
  and held fixed for the run (kept in the checkpoint, so a resumed run keeps it). ``ratio`` comes from the
  term spec (``ratio:`` in ``distill.terms``), else the term class's ``BALANCE_RATIO``, else
  ``distill.grad_ratio``. ``balance = "none"`` keeps the preset weights as they are. Adversarial terms
(their own critic, ``OWN_OPTIMIZER``) keep their preset weight: at calibration time the critic is
untrained, so its gradient then (1/200 of the segmentation gradient, measured) says nothing about its
pull once the critic has learnt, and scaling it up ~90x would hand the student to the critic.

Without labelled samples in the calibration batches (label-free distillation) there is no segmentation
gradient to measure against; the weights are then scaled so each term's gradient equals ``ratio`` times
that of the first term, i.e. the terms are balanced among themselves.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch


def ramp(progress: float, warmup: Optional[Sequence[float]]) -> float:
    """Weight multiplier at budget share ``progress``: 0 before ``warmup[0]``, 1 from ``warmup[1]``, linear
    in between; 1 throughout without a warm-up."""
    if not warmup:
        return 1.0
    start, end = float(warmup[0]), float(warmup[1])
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"distill.warmup must be [start, end] with 0 <= start <= end <= 1, got {list(warmup)}")
    if progress >= end:
        return 1.0
    if progress < start:
        return 0.0
    return (progress - start) / max(end - start, 1e-12)


def grad_norm(loss: torch.Tensor, params: List[torch.Tensor]) -> Tuple[float, Optional[torch.Tensor]]:
    """``(||d loss / d params||, flat gradient)``; (0, None) when the loss does not reach the params."""
    if not loss.requires_grad:
        return 0.0, None
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    if all(g is None for g in grads):
        return 0.0, None
    v = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)])
    return float(v.norm()), v


def measure(compute_parts: Callable[[Dict[str, Any]], Tuple[torch.Tensor, Dict[str, torch.Tensor]]],
            batches: Iterable[Dict[str, Any]], params: List[torch.Tensor]) -> Dict[str, Dict[str, float]]:
    """Mean gradient norms over ``batches`` of the segmentation loss (``"seg"``) and of each unweighted
    term, with each term's cosine to the segmentation gradient. ``compute_parts(batch)`` returns
    ``(seg_loss, {label: term_value})``."""
    sums: Dict[str, Dict[str, float]] = {}
    n = 0
    for batch in batches:
        seg, parts = compute_parts(batch)
        g_seg, v_seg = grad_norm(seg, params)
        rec = {"seg": {"norm": g_seg, "cos": 1.0}}
        for label, value in parts.items():
            g, v = grad_norm(value, params)
            cos = float(torch.dot(v, v_seg) / (g * g_seg)) if v is not None and v_seg is not None and g * g_seg > 0 \
                else math.nan
            rec[label] = {"norm": g, "cos": cos, "value": float(value.detach())}
        for label, r in rec.items():
            acc = sums.setdefault(label, {})
            for k, x in r.items():
                acc[k] = acc.get(k, 0.0) + (x if math.isfinite(x) else 0.0)
        n += 1
    return {label: {k: x / max(n, 1) for k, x in r.items()} for label, r in sums.items()}


def calibrated_weights(norms: Dict[str, Dict[str, float]], ratios: Dict[str, float],
                       fallback: Dict[str, float]) -> Dict[str, float]:
    """Per term the weight ``ratio * ||grad L_seg|| / ||grad L_term||`` (see the module docstring); a term
    whose gradient does not reach the student (or vanishes), or whose ratio is None, keeps its
    ``fallback`` weight."""
    labels = [k for k in norms if k != "seg"]
    ref = norms.get("seg", {}).get("norm", 0.0)
    if ref <= 0.0:  # no labelled sample: balance the terms among themselves
        ref = next((norms[k]["norm"] for k in labels if norms[k]["norm"] > 0.0), 0.0)
    out = {}
    for label in labels:
        g = norms[label]["norm"]
        calibrate = ratios.get(label) is not None and g > 1e-12 and ref > 0.0
        out[label] = float(ratios[label] * ref / g) if calibrate else float(fallback[label])
    return out


def ratio_table(norms: Dict[str, Dict[str, float]], weights: Dict[str, float]) -> Dict[str, Dict[str, float]]:
    """``||grad(w L_term)|| / ||grad L_seg||`` and the cosine of each term at ``weights``."""
    ref = norms.get("seg", {}).get("norm", 0.0)
    return {label: {"ratio": (weights[label] * r["norm"] / ref) if ref > 0 else math.nan, "cos": r["cos"]}
            for label, r in norms.items() if label != "seg"}
