"""One training engine for teachers, students and distillation.

``run_training(cfg, run_dir)`` trains the model named in ``cfg`` (or, with a task factory, a
distilled student) and keeps in ``run_dir``:

- ``config.yaml``   the resolved configuration
- ``events.jsonl``  JSON-lines progress (read by the CLI, the GUI and the benchmarks)
- ``metrics.csv``   validation Dice per class at each validation
- ``last.pt`` / ``best.pt``  atomic checkpoints (``torch.load(weights_only=True)``)

A stop request (``should_stop()``, a ``STOP`` file in the run folder, SIGTERM or SIGINT) is
honoured within one iteration: the engine saves ``last.pt`` and ends with status ``stopped``;
``run_training(..., resume=True)`` continues from there. Budgets: iterations, epochs
(``iters_per_epoch`` iterations each) or minutes of training time, whichever comes first.
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

from ..config import RunConfig, load_config, save_config
from ..metrics.overlap import dice_per_class
from .checkpoint import load_checkpoint, save_checkpoint
from .sampler import PatchSampler
from ..data.prepare import load_spec, prepare_case, preprocess_config, split_train_val
from .device import describe_device, resolve_device
from .distributed import any_true, broadcast_object, cleanup, init_distributed
from .events import EventLog


class RunExistsError(FileExistsError):
    pass


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


def _prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool) -> RunConfig:
    cfg_path = run_dir / "config.yaml"
    if resume:
        if not cfg_path.exists():
            raise FileNotFoundError(f"cannot resume: {run_dir} holds no config.yaml (not a run folder)")
        saved = load_config(cfg_path)
        # a resumed run keeps its data, model and method; only the budget may be extended
        saved.train.iterations = cfg.train.iterations or saved.train.iterations
        saved.train.epochs = cfg.train.epochs or saved.train.epochs
        saved.train.minutes = cfg.train.minutes or saved.train.minutes
        return saved
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunExistsError(f"run folder {run_dir} already exists and is not empty; "
                             "choose another --out, or resume it with --resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def run_training(cfg: RunConfig, run_dir: str | Path, *, resume: bool = False,
                 should_stop: Optional[Callable[[], bool]] = None,
                 task_factory: Optional[Callable[..., Any]] = None,
                 on_event: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    import torch

    from ..models.factory import build_model
    from .tasks import SupervisedTask

    run_dir = Path(run_dir)
    if not resume:
        budget_fraction(cfg.train, 0, 0.0)  # fails early without a budget
    device = resolve_device(cfg.train.device)
    dist_info = init_distributed(device)
    # only the main process decides about the run folder; the others get its answer
    prepared = None
    if dist_info.is_main:
        try:
            prepared = _prepare_run_dir(cfg, run_dir, resume)
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank
            prepared = exc
    prepared = broadcast_object(prepared, dist_info)
    if isinstance(prepared, Exception):
        cleanup(dist_info)
        raise prepared
    cfg = prepared
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

    stop = _StopFlag(run_dir, should_stop)
    if main and stop.file.exists():
        stop.file.unlink()
    old_handlers = _install_signal_handlers(stop)
    failed = False
    try:
        spec = load_spec(cfg.data)
        pcfg = preprocess_config(cfg.data, spec)
        train_cases, val_cases = split_train_val(spec.cases, cfg.data, tc.seed)
        if not train_cases:
            raise ValueError(f"{cfg.data.root}: no training cases")
        t0 = time.time()
        train_prep = [prepare_case(c, pcfg) for c in train_cases]
        val_prep = [prepare_case(c, pcfg) for c in val_cases] if main else []
        extra_cases = []
        if cfg.data.unlabelled_root:
            from ..data.datasets import load_dataset

            unl = load_dataset(cfg.data.unlabelled_root)
            extra_cases = [prepare_case(c, pcfg) for c in unl.cases]
            for c in extra_cases:
                c.label = None
        if cfg.data.labelled_fraction < 1.0:
            keep = int(round(len(train_prep) * cfg.data.labelled_fraction))
            order = np.random.default_rng(tc.seed + 1).permutation(len(train_prep))
            for i in order[keep:]:
                train_prep[i].label = None
        num_classes = max(spec.class_names) + 1
        in_channels = int(train_prep[0].image.shape[0])
        model = build_model(cfg.model.name, in_channels=in_channels, num_classes=num_classes, **cfg.model.kwargs)
        model_dims = getattr(model, "spatial_dims", 2)
        task = (task_factory or (lambda m, k, **kw: SupervisedTask(m, k)))(
            model, num_classes, cfg=cfg, device=device, run_dir=run_dir)
        task.modules_to_device(device)
        train_model = model
        if dist_info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        opt = torch.optim.AdamW(task.param_groups(), lr=tc.lr, weight_decay=tc.weight_decay)
        use_amp = tc.amp and device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        sampler = PatchSampler(train_prep + extra_cases, model_dims, cfg.data.patch_size, cfg.data.fg_prob,
                               cfg.data.slice_axis, cfg.data.augment, seed=tc.seed + 1000 * dist_info.rank)
        it, elapsed, best = 0, 0.0, -math.inf
        meta = {
            "model_name": cfg.model.name, "model_kwargs": cfg.model.kwargs, "in_channels": in_channels,
            "num_classes": num_classes, "class_names": {int(k): v for k, v in spec.class_names.items()},
            "preprocess": pcfg.to_dict(), "model_dims": model_dims, "data_root": str(cfg.data.root),
            "spacing": list(train_prep[0].reference.spacing),
        }
        last_path = run_dir / "last.pt"
        if resume and last_path.exists():
            state = load_checkpoint(last_path, map_location=device)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            task.load_state_dict(state.get("task", {}))
            it, elapsed = int(state["iter"]), float(state["elapsed"])
            best = float(state.get("best_metric", -math.inf))
            if "sampler" in state:
                sampler.set_state(json.loads(state["sampler"]))
            torch.set_rng_state(state["torch_rng"])
        emit("start", run_dir=str(run_dir), device=describe_device(device), model=cfg.model.name,
             params=sum(p.numel() for p in model.parameters()), train_cases=len(train_prep),
             val_cases=len(val_prep), unlabelled_cases=len(extra_cases), resumed_at=it if resume else None,
             world_size=dist_info.world_size, load_seconds=round(time.time() - t0, 2),
             budget={"iterations": total_iterations(tc), "minutes": tc.minutes}, task=task.name)
        task.prepare({"emit": emit, "sampler": sampler, "device": device, "stop": stop, "cfg": cfg,
                      "run_dir": run_dir, "is_main": main})

        def checkpoint(path: Path, best_metric: float) -> None:
            if not main:
                return
            save_checkpoint({
                "model": model.state_dict(), "optimizer": opt.state_dict(), "task": task.state_dict(),
                "iter": it, "elapsed": elapsed, "best_metric": best_metric, "meta": json.dumps(meta),
                "sampler": json.dumps(sampler.get_state()), "torch_rng": torch.get_rng_state(),
            }, path)

        last_val = -1

        def run_validation() -> None:
            nonlocal best, last_val
            last_val = it
            if not main:
                return
            res = validate(model, val_prep, device, cfg.data.slice_axis, num_classes) if val_prep else \
                {"dice": {}, "dice_mean": math.nan}
            emit("val", iter=it, **res)
            _append_metrics(run_dir / "metrics.csv", it, elapsed, res)
            score = res["dice_mean"] if math.isfinite(res["dice_mean"]) else -float(it)
            checkpoint(last_path, best)
            if score > best or not (run_dir / "best.pt").exists():
                best = max(best, score)
                checkpoint(run_dir / "best.pt", best)
                emit("checkpoint", iter=it, kind="best", dice_mean=res["dice_mean"])

        status = "finished"
        model.train()
        while True:
            frac = budget_fraction(tc, it, elapsed)
            if any_true(frac >= 1.0, dist_info, device):
                break
            if any_true(stop(), dist_info, device):
                status = "stopped"
                break
            t_it = time.time()
            lr = tc.lr * (1.0 - min(frac, 1.0)) ** 0.9
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            np_batch = sampler.sample(tc.batch_size)
            batch = {k: torch.as_tensor(v, device=device) for k, v in np_batch.items()}
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                loss, terms = task.compute(batch, train_model)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at iteration {it}; terms {terms}")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            terms.update(task.after_step(batch))
            it += 1
            elapsed += time.time() - t_it
            if main and (it % tc.log_every == 0 or it == 1):
                emit("iter", iter=it, loss=float(loss.detach()), terms=terms, lr=lr, elapsed=round(elapsed, 3),
                     progress=min(1.0, budget_fraction(tc, it, elapsed)))
            if it % tc.val_every == 0:
                run_validation()
        if status == "finished" and last_val != it:
            run_validation()
        else:
            checkpoint(last_path, best)
        emit("end", status=status, iter=it, elapsed=round(elapsed, 2), best_dice=best if best > -math.inf else None)
        return {"status": status, "iterations": it, "elapsed": elapsed, "best_dice": best, "run_dir": str(run_dir)}
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
