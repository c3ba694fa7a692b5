"""Pre-training stages of distillation terms (the Paraphraser of Graph Flow, the MSAN of GKD), resumable.

A finished stage is kept in ``RUN/stages/NAME.pt`` and reused by a resumed run. While a stage runs,
``RUN/stages/NAME.partial.pt`` holds its progress: the stage owner's weights, the stage iterations
done, and the patch sampler's and torch's random state. It is written atomically every
``min(train.val_every, 50)`` stage iterations or 60 seconds, and when a stop is requested; a resumed
run loads it and runs the remaining iterations, its ``stage_iter`` counters continuing. The stage loop
(in the term, ``distill/terms/``) runs from the global index ``StageContext.start``, so its learning-rate
schedule and phases go on where they stopped, and hands its optimisers to
``StageContext.keep_optimizer``: their state (momentum, Adam moments) is in the partial checkpoint too
and is loaded back into the optimiser the resumed loop makes.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict

import torch

from ..train.checkpoint import load_checkpoint, save_checkpoint
from .terms.base import StageContext

#: at most this many stage iterations, or seconds, between two stage checkpoints
CHECKPOINT_EVERY, CHECKPOINT_SECONDS = 50, 60.0


class StageProgress:
    """The periodic checkpoints of one running stage (``partial``), counted in stage iterations."""

    def __init__(self, owner, name: str, stages_dir: Path, ctx: Dict[str, Any], total: int):
        self.owner, self.name, self.sampler, self.is_main = owner, name, ctx["sampler"], ctx["is_main"]
        self.total = total
        self.partial = stages_dir / f"{name}.partial.pt"
        self.every = max(1, min(int(ctx["cfg"].train.val_every), CHECKPOINT_EVERY))
        self.done = self.saved = 0
        self.t_saved = time.time()
        self.optimizers: Dict[str, Any] = {}
        self.saved_optimizers: Dict[str, Any] = {}

    def keep_optimizer(self, name: str, opt) -> None:
        """Checkpoint ``opt`` with the stage; a resumed stage's saved state for ``name`` is loaded into it."""
        if name in self.saved_optimizers:
            opt.load_state_dict(self.saved_optimizers.pop(name))
        self.optimizers[name] = opt

    def restore(self) -> int:
        """Load the partial checkpoint, if any; returns the stage iterations it had done."""
        if not self.partial.is_file():
            return 0
        state = load_checkpoint(self.partial)
        meta = json.loads(state["meta"])
        self.owner.load_state_dict(state["model"])
        self.sampler.set_state(json.loads(meta["sampler"]))
        torch.set_rng_state(state["torch_rng"])
        self.saved_optimizers = dict(state.get("optimizers") or {})
        self.done = self.saved = int(meta["done"])
        return self.done

    def step(self) -> None:
        """One stage iteration is done; checkpoint when due (not after the last: the stage's own follows)."""
        self.done += 1
        if self.done >= self.total:
            return
        if self.done - self.saved >= self.every or time.time() - self.t_saved >= CHECKPOINT_SECONDS:
            self.save()

    def save(self) -> None:
        if self.is_main and self.done > self.saved:
            save_checkpoint({"model": self.owner.state_dict(), "torch_rng": torch.get_rng_state(),
                             "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                             "meta": json.dumps({"stage": self.name, "done": self.done,
                                                 "sampler": json.dumps(self.sampler.get_state())})}, self.partial)
        self.saved, self.t_saved = self.done, time.time()

    def finish(self, path: Path, iterations: int) -> None:
        """Keep the finished stage in ``path``; its partial checkpoint goes."""
        if self.is_main:
            save_checkpoint({"model": self.owner.state_dict(), "meta": json.dumps({"stage": self.name,
                             "iterations": iterations})}, path)
            self.partial.unlink(missing_ok=True)


def _batches(sampler, batch_size: int, device):
    def batches():
        while True:
            b = sampler.sample(batch_size)
            yield {k: torch.as_tensor(v, device=device) for k, v in b.items()}
    return batches


def run_stage(task, owner, stage: str, ctx: Dict[str, Any]) -> bool:
    """Run (resume, or reuse) ``owner``'s pre-training ``stage``; False when a stop request cut it short."""
    emit, stages_dir = ctx["emit"], task.run_dir / "stages"
    path = stages_dir / f"{stage}.pt"
    iters = int(task.stage_iterations.get(stage, 200))
    progress = StageProgress(owner, stage, stages_dir, ctx, iters)
    if path.exists():
        owner.load_state_dict(load_checkpoint(path)["model"])
        if ctx["is_main"]:
            progress.partial.unlink(missing_ok=True)
        emit("stage", name=stage, status="reused", path=str(path))
        return True
    before = progress.restore()
    emit("stage", name=stage, status="resumed" if before else "start", iterations=iters, done=before)
    t0 = time.time()

    def log(ev):
        emit("stage_iter", name=stage, **{**ev, "iter": int(ev.get("iter", 0))})  # the loop's global index
        progress.step()

    if iters - before > 0:
        batches = _batches(ctx["sampler"], ctx["cfg"].train.batch_size, ctx["device"])
        owner.pretrain(StageContext(task.teacher, task.model, batches, iters, ctx["device"], log, ctx["stop"],
                                    start=before, keep_optimizer=progress.keep_optimizer))
    if ctx["stop"]() and progress.done < iters:
        progress.save()
        emit("stage", name=stage, status="stopped", done=progress.done, path=str(progress.partial))
        return False
    progress.finish(path, iters)
    emit("stage", name=stage, status="done", seconds=round(time.time() - t0, 2), done=progress.done)
    return True


def run_stages(task, ctx: Dict[str, Any]) -> bool:
    """Every term's pre-training stage, once per owner (shared parts are pre-trained once); False when
    a stop request cut one short."""
    done = set()
    for _, _, term in task.terms:
        stage = getattr(term, "PRETRAIN_STAGE", None)
        owner = getattr(term, "stage_owner", term)
        if not stage or id(owner) in done:
            continue
        done.add(id(owner))
        if not run_stage(task, owner, stage, ctx):
            return False
    return True
