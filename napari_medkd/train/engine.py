"""One training engine for teachers, students and distillation.

``run_training(cfg, run_dir)`` trains the model named in ``cfg`` (a distilled student when
``cfg.distill`` names a teacher and a method or terms) and keeps in ``run_dir``:

- ``config.yaml``   the resolved configuration
- ``events.jsonl``  JSON-lines progress (read by the CLI, the GUI and the benchmarks)
- ``metrics.csv``   validation Dice per class at each validation
- ``last.pt`` / ``best.pt``  atomic checkpoints (``torch.load(weights_only=True)``)

A stop request (``should_stop()``, a ``STOP`` file in the run folder, SIGTERM or SIGINT) is
honoured within one iteration: the engine saves ``last.pt`` and ends with status ``stopped``;
``run_training(..., resume=True)`` continues from there. Budgets: iterations, epochs
(``iters_per_epoch`` iterations each) or minutes of training time, whichever comes first.

The run folder is locked for the life of the run, a new run may replace one that failed before its first
checkpoint (or any, with ``overwrite``), and killed writers' temporary files are removed (``run_dir.py``);
a resumed run's ``metrics.csv`` is cut back to its checkpoint.

The phases, in order: agree on the run folder (``_agree_on_run_dir``), load the data
(``_load_data``), build model, task and optimiser (``_build``), restore a resumed run
(``_restore``), the loop (``_train_loop``, checkpoints in ``_checkpoint``/``_run_validation``)
and the end (``_finish``).
"""
from __future__ import annotations

import csv
import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..config import RunConfig, save_config
from ..metrics.overlap import dice_per_class
from .checkpoint import load_checkpoint, save_checkpoint
from .run_data import _Data, _load_data, _make_sampler
from .card_build import model_card
from .device import describe_device, resolve_device
from .distributed import any_true, broadcast_object, cleanup, init_distributed
from .events import EventLog
from .run_dir import RunExistsError, open_run_dir, rollback_metrics  # noqa: F401 - RunExistsError: the API


def total_iterations(tc) -> Optional[int]:
    caps = [v for v in (tc.iterations, (tc.epochs * tc.iters_per_epoch) if tc.epochs else None) if v]
    return min(caps) if caps else None


def budget_fraction(tc, it: int, elapsed: float) -> float:
    fracs = []
    total = total_iterations(tc)
    if total:
        fracs.append(it / total)
    if tc.minutes:
        fracs.append(elapsed / (tc.minutes * 60.0))
    if not fracs:
        raise ValueError("no budget: set train.iterations, train.epochs or train.minutes")
    return max(fracs)


class _StopFlag:
    def __init__(self, run_dir: Path, should_stop: Optional[Callable[[], bool]]):
        self.file = run_dir / "STOP"
        self.should_stop = should_stop
        self.signalled = False

    def __call__(self) -> bool:
        return self.signalled or self.file.exists() or bool(self.should_stop and self.should_stop())


def _install_signal_handlers(flag: _StopFlag):
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}

    def handler(signum, frame):
        flag.signalled = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.signal(sig, handler)
    return old


def validate(model, cases, device, slice_axis: int, num_classes: int) -> Dict[str, Any]:
    from ..models.predict import predict_labels

    per_class: List[np.ndarray] = []
    for c in cases:
        if c.label is None:
            continue
        pred = predict_labels(model, c.image, fov=c.fov, device=device, slice_axis=slice_axis)
        per_class.append(dice_per_class(pred, c.label, num_classes, fov=c.fov))
    if not per_class:
        return {"dice": {}, "dice_mean": math.nan}
    mean = np.nanmean(np.stack(per_class), 0)
    return {"dice": {str(k + 1): float(v) for k, v in enumerate(mean)}, "dice_mean": float(np.nanmean(mean))}


def build_task(model, num_classes: int, cfg: RunConfig, device, run_dir: Path, preprocess=None):
    """The task ``cfg`` asks for: distillation when ``cfg.distill`` names a teacher and a method (other
    than ``none``) or terms, else the supervised task."""
    from .tasks import SupervisedTask

    dc = cfg.distill
    distills = bool(dc.terms) or (dc.method or "none") != "none"
    if distills and not dc.teacher:
        raise ValueError(f"distill.method {dc.method!r} / distill.terms need distill.teacher (a teacher run folder, "
                         "ONNX, TorchScript or MONAI bundle)")
    if dc.teacher and distills:
        from ..distill.task import build_distill_task

        return build_distill_task(model, num_classes, cfg=cfg, device=device, run_dir=run_dir, preprocess=preprocess)
    return SupervisedTask(model, num_classes)


def _agree_on_run_dir(cfg: RunConfig, run_dir: Path, resume: bool, dist_info, overwrite: bool = False):
    """Only the main process locks and prepares the run folder (``run_dir.open_run_dir``); the others get
    its answer. Returns the configuration, the lock (None on other ranks) and notices for the user."""
    prepared, lock, notes = None, None, []
    if dist_info.is_main:
        try:
            prepared, lock, notes = open_run_dir(cfg, run_dir, resume, overwrite)
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank
            prepared = exc
    prepared = broadcast_object(prepared, dist_info)
    if isinstance(prepared, Exception):
        cleanup(dist_info)
        raise prepared
    return prepared, lock, notes


class _Run:
    """What the phases of one training run share."""

    def __init__(self, cfg: RunConfig, run_dir: Path, device, dist_info, emit):
        self.cfg, self.tc, self.run_dir, self.device, self.dist_info = cfg, cfg.train, run_dir, device, dist_info
        self.main, self.emit = dist_info.is_main, emit
        self.it, self.elapsed, self.best, self.last_val = 0, 0.0, -math.inf, -1
        self.last_path = run_dir / "last.pt"


def _build(r: _Run, data: _Data) -> None:
    """Model, task, optimiser, mixed precision, patch sampler and model card of the run."""
    import torch

    from ..models.factory import build_model

    cfg, tc, device, dist_info = r.cfg, r.tc, r.device, r.dist_info
    spec, pcfg, train_prep = data.spec, data.pcfg, data.train_prep
    num_classes = max(spec.class_names) + 1
    in_channels = int(train_prep[0].image.shape[0])
    model = build_model(cfg.model.name, in_channels=in_channels, num_classes=num_classes, **cfg.model.kwargs)
    model_dims = getattr(model, "spatial_dims", 2)
    task = build_task(model, num_classes, cfg, device, r.run_dir, preprocess=pcfg.to_dict())
    task.modules_to_device(device)
    r.train_model = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        r.train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    r.opt = torch.optim.AdamW(task.param_groups(), lr=tc.lr, weight_decay=tc.weight_decay)
    r.use_amp = tc.amp and device.type == "cuda"
    r.amp_dtype = torch.bfloat16 if r.use_amp and torch.cuda.is_bf16_supported() else torch.float16
    r.scaler = torch.amp.GradScaler("cuda", enabled=r.use_amp and r.amp_dtype == torch.float16)
    r.sampler = _make_sampler(cfg, task, train_prep + data.extra_cases, model_dims, seed=tc.seed + 1000 * dist_info.rank)
    card = model_card(cfg, spec.class_names, pcfg.to_dict(), in_channels, num_classes, model_dims,
                      train_prep[0].reference.spacing, distilled=task.name == "distill")
    if getattr(task, "source", None) is not None:  # where the teacher came from travels with the student
        card.teacher_info = task.source.provenance()
    r.model, r.task, r.num_classes, r.card, r.val_prep = model, task, num_classes, card, data.val_prep


def _restore(r: _Run) -> None:
    """Continue a resumed run from its ``last.pt`` (weights, optimiser, task, sampler, RNG)."""
    import torch

    if not r.last_path.exists():
        return
    state = load_checkpoint(r.last_path, map_location=r.device)
    r.model.load_state_dict(state["model"])
    r.opt.load_state_dict(state["optimizer"])
    r.task.load_state_dict(state.get("task", {}))
    r.it, r.elapsed = int(state["iter"]), float(state["elapsed"])
    r.best = float(state.get("best_metric", -math.inf))
    if "sampler" in state:
        r.sampler.set_state(json.loads(state["sampler"]))
    torch.set_rng_state(state["torch_rng"])


def _checkpoint(r: _Run, path: Path, best_metric: float) -> None:
    import torch

    if not r.main:
        return
    save_checkpoint({
        "model": r.model.state_dict(), "optimizer": r.opt.state_dict(), "task": r.task.state_dict(),
        "iter": r.it, "elapsed": r.elapsed, "best_metric": best_metric, "meta": r.card.to_checkpoint(),
        "sampler": json.dumps(r.sampler.get_state()), "torch_rng": torch.get_rng_state(),
    }, path)


NOT_VALIDATED = ("no validation cases: this run was never validated; best.pt holds the last weights, "
                 "not the best ones (give it validation data, e.g. more cases or data.val_fraction)")


def _run_validation(r: _Run) -> None:
    """Validate (main process), log, keep ``last.pt`` and, on a better score, ``best.pt``."""
    r.last_val = r.it
    if not r.main:
        return
    res = validate(r.model, r.val_prep, r.device, r.cfg.data.slice_axis, r.num_classes) if r.val_prep else \
        {"dice": {}, "dice_mean": math.nan}
    agreed = None
    if not math.isfinite(res["dice_mean"]) and hasattr(r.task, "agreement"):  # unlabelled validation scans
        agreed = r.task.agreement(r.model, r.val_prep, r.device, r.cfg.data.slice_axis)
        res["agreement"] = agreed
    r.emit("val", iter=r.it, **res)
    _append_metrics(r.run_dir / "metrics.csv", r.it, r.elapsed, res)
    score = res["dice_mean"] if math.isfinite(res["dice_mean"]) else (agreed["dice_mean"] if agreed else None)
    _checkpoint(r, r.last_path, r.best)
    if score is None:  # nothing to validate on: best.pt holds the latest weights, and the run says so
        _checkpoint(r, r.run_dir / "best.pt", r.best)
        if not getattr(r, "told_not_validated", False):
            r.told_not_validated = True
            r.emit("notice", message=NOT_VALIDATED)
        return
    if score > r.best or not (r.run_dir / "best.pt").exists():
        r.best = max(r.best, score)
        _checkpoint(r, r.run_dir / "best.pt", r.best)
        r.emit("checkpoint", iter=r.it, kind="best", dice_mean=res["dice_mean"])


def _step(r: _Run, frac: float) -> None:
    """One optimiser step at budget fraction ``frac`` (poly learning-rate decay)."""
    import torch

    tc, t_it = r.tc, time.time()
    lr = tc.lr * (1.0 - min(frac, 1.0)) ** 0.9
    for g in r.opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    r.task.set_progress(min(frac, 1.0))
    np_batch = r.sampler.sample(tc.batch_size)
    batch = {k: torch.as_tensor(v, device=r.device) for k, v in np_batch.items()}
    with torch.autocast(r.device.type, dtype=r.amp_dtype, enabled=r.use_amp):
        loss, terms = r.task.compute(batch, r.train_model)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {float(loss)} at iteration {r.it}; terms {terms}")
    r.opt.zero_grad(set_to_none=True)
    r.scaler.scale(loss).backward()
    r.scaler.step(r.opt)
    r.scaler.update()
    terms.update(r.task.after_step(batch))
    r.it += 1
    r.elapsed += time.time() - t_it
    if r.main and (r.it % tc.log_every == 0 or r.it == 1):
        r.emit("iter", iter=r.it, loss=float(loss.detach()), terms=terms, lr=lr, elapsed=round(r.elapsed, 3),
               progress=min(1.0, budget_fraction(tc, r.it, r.elapsed)))


def _train_loop(r: _Run, stop: _StopFlag) -> str:
    """Steps until the budget is spent (``finished``) or a stop is requested (``stopped``)."""
    r.model.train()
    while True:
        frac = budget_fraction(r.tc, r.it, r.elapsed)
        if any_true(frac >= 1.0, r.dist_info, r.device):
            return "finished"
        if any_true(stop(), r.dist_info, r.device):
            return "stopped"
        _step(r, frac)
        if r.it % r.tc.val_every == 0:
            _run_validation(r)


def _finish(r: _Run, status: str) -> Dict[str, Any]:
    if status == "finished" and r.last_val != r.it:
        _run_validation(r)
    else:
        _checkpoint(r, r.last_path, r.best)
    best = r.best if r.best > -math.inf else None  # None: never validated (best.pt = the last weights)
    r.emit("end", status=status, iter=r.it, elapsed=round(r.elapsed, 2), best_dice=best)
    return {"status": status, "iterations": r.it, "elapsed": r.elapsed, "best_dice": best, "run_dir": str(r.run_dir)}


def _train(r: _Run, stop: _StopFlag, resume: bool) -> Dict[str, Any]:
    t0 = time.time()
    data = _load_data(r.cfg, r.main, r.run_dir)
    _build(r, data)
    if resume:
        _restore(r)
        if r.main:
            rollback_metrics(r.run_dir / "metrics.csv", r.it)
    r.emit("start", run_dir=str(r.run_dir), device=describe_device(r.device), model=r.cfg.model.name,
           params=sum(p.numel() for p in r.model.parameters()), train_cases=len(data.train_prep),
           val_cases=len(data.val_prep), unlabelled_cases=len(data.extra_cases),
           labelled_cases=r.sampler.n_labelled, sampled_cases=len(r.sampler.cases), resumed_at=r.it if resume else None,
           world_size=r.dist_info.world_size, load_seconds=round(time.time() - t0, 2),
           budget={"iterations": total_iterations(r.tc), "minutes": r.tc.minutes}, task=r.task.name)
    r.task.prepare({"emit": r.emit, "sampler": r.sampler, "device": r.device, "stop": stop, "cfg": r.cfg,
                    "run_dir": r.run_dir, "is_main": r.main})
    return _finish(r, _train_loop(r, stop))


def run_training(cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                 should_stop: Optional[Callable[[], bool]] = None,
                 on_event: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Train as ``cfg`` says in ``run_dir`` (a new folder; ``overwrite``: replace an earlier run there) or
    continue the run there (``resume``). The folder is locked for the life of the run."""
    run_dir = Path(run_dir)
    if not resume:
        budget_fraction(cfg.train, 0, 0.0)  # fails early without a budget
    device = resolve_device(cfg.train.device)
    dist_info = init_distributed(device)
    cfg, lock, notes = _agree_on_run_dir(cfg, run_dir, resume, dist_info, overwrite)
    try:
        return _run_locked(cfg, run_dir, resume, device, dist_info, notes, should_stop, on_event)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(cfg: RunConfig, run_dir: Path, resume: bool, device, dist_info, notes: List[str],
                should_stop, on_event) -> Dict[str, Any]:
    import torch

    tc = cfg.train
    budget_fraction(tc, 0, 0.0)
    if tc.threads:
        torch.set_num_threads(int(tc.threads))
    torch.manual_seed(tc.seed + dist_info.rank)
    main = dist_info.is_main
    if main:
        save_config(cfg, run_dir / "config.yaml")
    log = EventLog(run_dir / "events.jsonl", enabled=main)

    def emit(event: str, **fields):
        rec = log.write(event, **fields)
        if on_event is not None and main:
            on_event(rec)
        return rec

    for note in notes:
        emit("notice", message=note)
    stop = _StopFlag(run_dir, should_stop)
    if main and stop.file.exists():
        stop.file.unlink()
    old_handlers = _install_signal_handlers(stop)
    failed = False
    try:
        return _train(_Run(cfg, run_dir, device, dist_info, emit), stop, resume)
    except BaseException as exc:
        failed = True
        emit("error", message=f"{type(exc).__name__}: {exc}")
        emit("end", status="failed")
        raise
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        log.close()
        cleanup(dist_info, sync=not failed)


def _append_metrics(path: Path, it: int, elapsed: float, res: Dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        keys = sorted(res["dice"])
        if new:
            w.writerow(["iter", "elapsed_s", "dice_mean"] + [f"dice_{k}" for k in keys])
        w.writerow([it, round(elapsed, 2), res["dice_mean"]] + [res["dice"][k] for k in keys])
