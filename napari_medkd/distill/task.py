"""The distillation task: a frozen teacher, a student and a weighted set of distillation terms.

Built by the generic engine (``run_training(cfg)`` calls ``build_distill_task``) when ``cfg.distill``
names a teacher (a run folder, an ONNX, TorchScript or MONAI bundle file, a registered module:
``teachers/``): each iteration runs the teacher (eval, no gradients) and the student with forward
hooks on the taps the terms need, adds the weighted terms to the student's segmentation loss (labelled samples
only) and logs every term. Terms with trainable parts join the optimiser; adversarial terms get
their own optimiser; terms with a pre-training stage run it first and keep it in
``RUN_DIR/stages/`` so a resumed run reuses it (or continues it from its last stage checkpoint).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..card import ModelCard
from ..models.taps import FeatureTaps
from ..train.tasks import SupervisedTask
from .balance import calibrated_weights, measure, ramp, ratio_table
from .methods import TermSpec, build_terms
from .stages import run_stages
from .teacher_fit import method_needs, refusal, spec_taps, term_pairs
from .terms.base import KDContext


class DistillError(ValueError):
    pass


def load_teacher(run: str | Path, device) -> Tuple[torch.nn.Module, ModelCard]:
    from ..train.run_model import load_run_model

    lm = load_run_model(run, device=device)
    teacher = lm.model
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, lm.card


#: preprocessing settings a teacher and its student must share (``PreprocessConfig`` keys); ``ct_window``
#: only matters for CT and ``slice_axis`` only when the teacher is a 2D model run over volumes
_SHARED_PREPROCESS = ("modality", "rgb_mode", "percentiles", "target_spacing", "ct_window", "slice_axis")


def _comparable(v: Any) -> Any:
    """Lists and tuples of numbers (spacing, percentiles, window) as tuples rounded to 1e-6; else as is."""
    return tuple(round(float(x), 6) for x in v) if isinstance(v, (list, tuple)) else v


def _preprocess_mismatch(teacher: Dict[str, Any], student: Dict[str, Any], teacher_dims: int) -> List[str]:
    out = []
    for key in _SHARED_PREPROCESS:
        if key not in teacher or key not in student:
            continue
        if key == "ct_window" and student.get("modality") != "CT":
            continue
        if key == "rgb_mode" and student.get("modality") != "RGB":
            continue
        if key == "slice_axis" and teacher_dims != 2:
            continue
        a, b = teacher[key], student[key]
        if _comparable(a) != _comparable(b):
            out.append(f"{key}: teacher {a!r}, this run {b!r}")
    return out


def check_compatible(teacher: ModelCard, num_classes: int, in_channels: int, preprocess: Dict) -> None:
    """Refuse a teacher that would be fed input unlike what it was trained on: other classes, other input
    channels, or other preprocessing (normalisation, RGB mode, spacing, slicing), naming each difference."""
    if teacher.num_classes != num_classes:
        raise DistillError(f"the teacher predicts {teacher.num_classes} classes but the data set has "
                           f"{num_classes}")
    if teacher.in_channels != in_channels:
        raise DistillError(f"the teacher takes {teacher.in_channels} input channel(s) but the data gives "
                           f"{in_channels}; use the teacher's preprocessing (rgb_mode)")
    diffs = _preprocess_mismatch(dict(teacher.preprocess or {}), dict(preprocess or {}), int(teacher.model_dims or 2))
    if diffs:
        raise DistillError("the teacher was trained with other preprocessing than this run uses ("
                           + "; ".join(diffs) + "); set the same data options as the teacher's run "
                           "(its config.yaml) so it sees the input it knows")


class DistillTask(SupervisedTask):
    name = "distill"
    uses_unlabelled = True

    def __init__(self, student, num_classes: int, teacher, terms: List[Tuple[str, float, Any]],
                 run_dir: Path, stage_iterations: Optional[Dict[str, int]] = None, seg_weight: float = 1.0,
                 cache_teacher: bool = False, balance: str = "none", grad_ratio: float = 0.5,
                 warmup: Optional[List[float]] = None, balance_batches: int = 4, source=None,
                 cache_dir: Optional[str] = None, preprocess: Optional[Dict[str, Any]] = None,
                 teacher_backend="torch", threads: Optional[int] = None):
        """``source``: the :class:`~napari_medkd.teachers.Teacher` whose ``module`` is ``teacher``;
        ``cache_dir``: keep the cached teacher outputs on disk there (``teachers/cache.py``), else in memory;
        ``teacher_backend``: how the teacher runs in each step, or the backends to try in order
        (``teachers/backend.py``; set up in ``prepare``)."""
        super().__init__(student, num_classes)
        self.source, self.cache_dir, self.preprocess = source, cache_dir, dict(preprocess or {})
        if balance not in ("none", "grad"):
            raise DistillError(f"distill.balance must be 'none' or 'grad', got {balance!r}")
        self.teacher = teacher
        self.backends = [teacher_backend] if isinstance(teacher_backend, str) else list(teacher_backend)
        self.teacher_backend, self.threads, self.fast_teacher = self.backends[0], threads, None
        self.terms = terms
        self.balance, self.grad_ratio, self.balance_batches = balance, float(grad_ratio), int(balance_batches)
        self.warmup = list(warmup) if warmup else None
        ramp(0.0, self.warmup)  # fails early on a bad warm-up
        self.weights: Dict[str, float] = {label: float(w) for label, w, _ in terms}
        self.calibrated = False
        self.run_dir = Path(run_dir)
        self.stage_iterations = dict(stage_iterations or {})
        self.seg_weight = seg_weight
        self.taps = sorted({t for _, _, term in terms for t in term.TAPS if t != "logits"})
        self.cache_teacher = bool(cache_teacher)
        if self.cache_teacher and self.taps:
            raise DistillError(f"cache_teacher keeps only the teacher's outputs, but the method's terms need the "
                               f"teacher features {self.taps}; use it with output-only methods (logit_kd, cwd) "
                               "or switch it off")
        self._disc = [(label, term) for label, _, term in terms if hasattr(term, "discriminator_parameters")
                      and list(term.discriminator_parameters())]
        self._disc_opts = {}
        self._last_ctx: Optional[KDContext] = None

    def modules_to_device(self, device) -> None:
        self.device = device
        self.model.to(device)
        self.teacher.to(device)
        for _, _, term in self.terms:
            term.to(device)
        for label, term in self._disc:
            cfg = dict(term.DISC_OPTIM or {"lr": 1e-4, "betas": (0.5, 0.9)})
            self._disc_opts[label] = torch.optim.Adam(term.discriminator_parameters(), lr=cfg["lr"],
                                                      betas=tuple(cfg.get("betas", (0.9, 0.99))))

    def param_groups(self) -> List[Dict[str, Any]]:
        groups = super().param_groups()
        disc_ids = {id(p) for _, term in self._disc for p in term.discriminator_parameters()}
        seen = {id(p) for g in groups for p in g["params"]}
        extra = []
        for _, _, term in self.terms:  # adapters, projectors, student-side headers (never discriminators)
            for p in term.parameters():
                if p.requires_grad and id(p) not in disc_ids and id(p) not in seen:
                    seen.add(id(p))
                    extra.append(p)
        if extra:
            groups.append({"params": extra})
        return groups

    def _forward(self, batch, train_model) -> KDContext:
        x = batch["image"]
        if "teacher_logits" in batch:  # cached for the fixed (non-jittered) view, turned with the patch
            t = {"logits": batch["teacher_logits"].float()}
        else:
            teacher = self.fast_teacher or self.teacher  # the step's backend (teachers/backend.py)
            with torch.no_grad():
                with FeatureTaps(teacher, self.taps) as tt:
                    t_logits = teacher(x)
            t = {k: v.detach().float() for k, v in tt.features.items()}
            t["logits"] = t_logits.detach().float()
        with FeatureTaps(self.model, self.taps) as st:
            s_logits = train_model(x)
        s = dict(st.features)
        s["logits"] = s_logits
        labelled = batch.get("labelled")
        return KDContext(s=s, t=t, image=x, label=batch["label"], labelled=labelled, student=self.model,
                         teacher=self.teacher)

    def compute(self, batch, train_model):
        ctx = self._forward(batch, train_model)
        seg = self.segmentation_loss(ctx.s["logits"], batch["label"], ctx.labelled)
        total = self.seg_weight * seg
        log = {"seg": float(seg.detach())}
        r = ramp(self.progress, self.warmup)
        for label, _, term in self.terms:
            value = term(ctx)
            weight = self.weights[label] * r
            total = total + weight * value
            log[label] = float(value.detach())
            log[f"{label}.w"] = weight
            for part, v in (getattr(term, "last_parts", None) or {}).items():
                log[f"{label}.{part}"] = float(v)
        self._last_ctx = ctx
        return total, log

    def after_step(self, batch) -> Dict[str, float]:
        out = {}
        ctx = self._last_ctx
        if ctx is None or not self._disc:
            return out
        ctx.s = {k: v.detach() for k, v in ctx.s.items()}
        for label, term in self._disc:
            opt = self._disc_opts[label]
            with torch.autocast(ctx.image.device.type, enabled=False):
                d_loss = term.discriminator_loss(ctx)
            opt.zero_grad(set_to_none=True)
            d_loss.backward()
            opt.step()
            out[f"{label}.D"] = float(d_loss.detach())
        self._last_ctx = None
        return out

    # pre-training stages -------------------------------------------------------------------
    def _build_teacher_cache(self, ctx) -> None:
        """Teacher logits of every whole training image (slices for 2D models on volumes), once."""
        from ..models.predict import predict_logits

        sampler, emit = ctx["sampler"], ctx["emit"]
        sampler.pad_to_patch()  # patches never reach past the cached logits: no blank targets on padding
        t0 = time.time()
        emit("stage", name="teacher_cache", status="start", cases=len(sampler.cases))
        info: Dict[str, Any] = {}
        if self.cache_dir is not None and self.source is not None:  # on disk, shared by students (teachers/cache.py)
            from ..teachers.cache import cached_logits

            cached, info = cached_logits(
                self.source, sampler.cases, self.cache_dir, view={"preprocess": self.preprocess, "axis": sampler.axis},
                compute=lambda c: predict_logits(self.teacher, c.image, device=ctx["device"], slice_axis=sampler.axis))
            info = {k: v for k, v in info.items() if k not in ("seconds", "megabytes")}
        else:
            cached = [predict_logits(self.teacher, c.image, device=ctx["device"], slice_axis=sampler.axis)
                      .astype(np.float16) for c in sampler.cases]
        sampler.set_extras(cached, "teacher_logits")
        mb = sum(a.nbytes for a in cached) / 2 ** 20
        emit("stage", name="teacher_cache", status="done", seconds=round(time.time() - t0, 2), megabytes=round(mb, 1),
             **info)

    def prepare(self, ctx) -> None:
        if self.warmup and ctx["sampler"].n_labelled == 0:  # label-free: nothing to learn first, so no warm-up
            self.warmup = None
            ctx["emit"]("notice", message="no labelled cases: the distillation terms start at full weight "
                                          "(distill.warmup is for learning from labels first)")
        if self.cache_teacher:
            self._build_teacher_cache(ctx)
        else:
            self.setup_backend(ctx)
        if self._pretrain_stages(ctx) and self.balance == "grad" and not self.calibrated:
            self.calibrate(ctx)

    def setup_backend(self, ctx) -> None:
        """Convert the teacher for ``teacher_backend`` (checked on 4 real training batches, drawn without moving
        the sampler on) and log what runs it; a teacher that fails the check stays in torch."""
        from ..teachers.backend import build_fast

        if self.backends[0] in ("torch", "cache"):
            return
        sampler, bs = ctx["sampler"], ctx["cfg"].train.batch_size
        state = sampler.get_state()
        batches = [torch.as_tensor(sampler.sample(bs)["image"]).float() for _ in range(4)]
        sampler.set_state(state)
        self.fast_teacher, facts = build_fast(self.teacher, self.backends, batches, self.taps, self.threads)
        self.teacher_backend = str(facts["backend"])
        ctx["emit"]("teacher_backend", **facts)

    def agreement(self, model, cases, device, slice_axis: int) -> Optional[Dict[str, Any]]:
        """Agreement of ``model`` with the teacher on ``cases`` (validation without labels)."""
        from .agreement import teacher_agreement

        return teacher_agreement(self, model, cases, device, slice_axis)

    def term_ratio(self, label: str, term) -> Optional[float]:
        """The target ``||grad(w L_term)|| / ||grad L_seg||`` of a term (see ``distill/balance.py``); None for
        an adversarial term, which keeps its preset weight."""
        if getattr(term, "OWN_OPTIMIZER", False):
            return None
        for r in (getattr(term, "balance_ratio", None), getattr(type(term), "BALANCE_RATIO", None)):
            if r is not None:
                return float(r)
        return self.grad_ratio

    def gradient_norms(self, batches) -> Dict[str, Dict[str, float]]:
        """Mean gradient norms (on the student's own parameters) of the segmentation loss and of each term
        at weight 1, with cosines, over ``batches``; the student's batch-norm statistics are left as found."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        buffers = {k: v.clone() for k, v in self.model.named_buffers()}

        def parts(batch):
            c = self._forward(batch, self.model)
            return self.segmentation_loss(c.s["logits"], batch["label"], c.labelled), \
                {label: term(c) for label, _, term in self.terms}

        self.model.train()
        try:
            return measure(parts, batches, params)
        finally:
            self.model.load_state_dict(buffers, strict=False)

    def calibrate(self, ctx) -> None:
        """Set each term's weight from its gradient norm (``distill.balance = grad``), once, and log it."""
        device, bs = ctx["device"], ctx["cfg"].train.batch_size
        batches = [{k: torch.as_tensor(v, device=device) for k, v in ctx["sampler"].sample(bs).items()}
                   for _ in range(max(1, self.balance_batches))]
        norms = self.gradient_norms(batches)
        preset = {label: float(w) for label, w, _ in self.terms}
        ratios = {label: self.term_ratio(label, term) for label, _, term in self.terms}
        self.weights = calibrated_weights(norms, ratios, preset)
        self.calibrated = True
        before, after = ratio_table(norms, preset), ratio_table(norms, self.weights)
        ctx["emit"]("balance", seg_grad=norms["seg"]["norm"], terms={
            label: {"preset_weight": preset[label], "weight": self.weights[label], "target_ratio": ratios[label],
                    "ratio_before": before[label]["ratio"], "ratio_after": after[label]["ratio"],
                    "cos_seg": before[label]["cos"], "grad": norms[label]["norm"]} for label in preset})

    def _pretrain_stages(self, ctx) -> bool:
        """Run (resume, or reuse) every term's pre-training stage (``distill/stages.py``: kept in
        ``RUN/stages/``, with periodic checkpoints); False when a stop request cut one short."""
        return run_stages(self, ctx)

    def state_dict(self) -> Dict[str, Any]:
        return {"terms": {label: term.state_dict() for label, _, term in self.terms},
                "disc_opts": {k: o.state_dict() for k, o in self._disc_opts.items()},
                "weights": json.dumps({"weights": self.weights, "calibrated": self.calibrated})}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for label, _, term in self.terms:
            if label in state.get("terms", {}):
                term.load_state_dict(state["terms"][label])
        for k, o in self._disc_opts.items():
            if k in state.get("disc_opts", {}):
                o.load_state_dict(state["disc_opts"][k])
        if "weights" in state:
            saved = json.loads(state["weights"])
            self.weights.update({k: float(v) for k, v in saved["weights"].items() if k in self.weights})
            self.calibrated = bool(saved["calibrated"])


def needs_only_outputs(method: Optional[str] = None, terms: Optional[List[Dict[str, Any]]] = None) -> bool:
    """True when the terms of ``terms`` (a ``distill.terms`` list) or else of the preset ``method`` read
    the teacher's outputs (logits) alone, so its outputs can be cached once per image
    (``distill.cache_teacher``); False for a method without terms."""
    pairs = term_pairs(method, terms)
    return bool(pairs) and all(set(spec_taps(n, p)) <= {"logits"} for n, p in pairs)


def check_fit(source, dc, student_dims: int) -> None:
    """Refuse a method a teacher from a file cannot serve (taps it lacks, parts it does not expose), naming the
    methods it can, and a teacher of other dimensions than the student without the output cache."""
    why = refusal(dc.method or "none", dc.terms, source.taps, source.has_parts, source.describe())
    if why:
        raise DistillError(why)
    if source.dims != student_dims and not dc.cache_teacher:
        raise DistillError(f"{source.describe()} is {source.dims}D and the student {student_dims}D: such a teacher "
                           "teaches through its cached outputs only (distill.cache_teacher with an output-only method)")


def build_distill_task(student, num_classes: int, *, cfg, device=None, run_dir=None,
                       preprocess: Optional[Dict[str, Any]] = None) -> DistillTask:
    """The distillation task ``cfg.distill`` describes (teacher run, method preset or ``terms``, stage
    lengths, teacher cache) for the freshly built ``student``; the engine calls it."""
    from ..models.factory import tap_info
    from ..registry import METHODS

    from ..teachers import open_teacher
    from ..teachers.backend import choose
    from ..teachers.cache import default_cache_dir

    dc = cfg.distill
    if not dc.teacher:
        raise DistillError("distillation needs distill.teacher (a run folder, an ONNX or TorchScript file, a MONAI "
                           "bundle folder, or a module registered with teachers.register_module)")
    source = open_teacher(dc.teacher, preprocess=dc.teacher_preprocess, taps=dc.teacher_taps, device=device or "cpu",
                          threads=cfg.train.threads)
    teacher, t_card = source.module, source.card
    in_ch = student.in_channels
    check_compatible(t_card, num_classes, in_ch, preprocess or {})
    if source.kind != "run":  # a run folder's teacher serves every method, as it always has
        check_fit(source, dc, getattr(student, "spatial_dims", 2))
    size = max(32, cfg.data.patch_size)
    t_info = tap_info(teacher, in_ch, size=size)
    s_info = tap_info(student, in_ch, size=size)
    dims = getattr(student, "spatial_dims", 2)
    if dc.terms:
        terms = build_terms([TermSpec(**s) for s in dc.terms], t_info, s_info, num_classes, dims)
    else:
        terms = METHODS.get(dc.method or "none")(t_info, s_info, num_classes, spatial_dims=dims)
    cache_dir = dc.teacher_cache_dir or (str(default_cache_dir()) if source.kind != "run" else None)
    cached = bool(dc.cache_teacher) or dc.teacher_backend == "cache"
    backend = choose(dc.teacher_backend, device=str(device or "cpu"), is_torch=source.kind != "onnx",
                     needs_parts=method_needs(dc.method, dc.terms)[1], cached=cached)
    return DistillTask(student, num_classes, teacher, terms, Path(run_dir),
                       stage_iterations=dc.stage_iterations, cache_teacher=cached,
                       balance=dc.balance, grad_ratio=dc.grad_ratio, warmup=dc.warmup,
                       balance_batches=dc.balance_batches, source=source, cache_dir=cache_dir, preprocess=preprocess,
                       teacher_backend=backend, threads=cfg.train.threads)
