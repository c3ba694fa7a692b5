"""What several ``medkd`` subcommand modules share: the budget options, the run configuration built from
them, the progress lines of a training run and the CLI's own error. A module beside ``cli.py`` (the same
layer), so that ``cli.py`` and ``cli_teacher.py`` both use it without importing each other."""
from __future__ import annotations

import argparse

from .cli_args import non_negative_int, positive_float, positive_int


class CLIError(Exception):
    pass


def add_budget(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("budget and training options (override the config)")
    g.add_argument("--iterations", type=positive_int)
    g.add_argument("--epochs", type=positive_int)
    g.add_argument("--minutes", type=positive_float)
    g.add_argument("--batch-size", type=positive_int)
    g.add_argument("--patch-size", type=positive_int)
    g.add_argument("--lr", type=positive_float)
    g.add_argument("--seed", type=non_negative_int)
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps")
    g.add_argument("--val-every", type=positive_int)
    g.add_argument("--threads", type=positive_int)
    g.add_argument("--config", help="YAML run configuration (yaml.safe_load)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or killed run in RUN_DIR")


def config_from_args(args) -> "RunConfig":  # noqa: F821 - imported inside
    from .config import RunConfig, load_config

    cfg = load_config(args.config) if getattr(args, "config", None) else RunConfig()
    over = {
        "data": {"root": getattr(args, "data", None), "patch_size": args.patch_size},
        "model": {"name": getattr(args, "model", None)},
        "train": {"iterations": args.iterations, "epochs": args.epochs, "minutes": args.minutes,
                  "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "device": args.device,
                  "val_every": args.val_every, "threads": args.threads},
        "distill": {"teacher": getattr(args, "teacher", None), "method": getattr(args, "method", None)},
    }
    cfg = cfg.merged(over)
    if not (args.resume or cfg.data.root):
        raise CLIError("--data is required (or a config with data.root)")
    if not (cfg.train.iterations or cfg.train.epochs or cfg.train.minutes or args.resume):
        cfg.train.minutes = 10.0
    return cfg


def _val_line(rec) -> str:
    line = f"[val   {rec['iter']:>6}] Dice {rec.get('dice')} mean={rec.get('dice_mean')}"
    agreed = rec.get("agreement")
    if agreed:  # validation scans without masks: the student against the teacher
        line += (f"; no masks, agreement with the teacher: Dice {agreed.get('dice')} mean={agreed.get('dice_mean'):.4f}, "
                 f"voxels {agreed.get('voxel_agreement'):.4f}")
    return line


def print_event(rec) -> None:
    ev = rec.get("event")
    if ev == "start":
        print(f"[start] {rec.get('model')} on {rec.get('device')}: {rec.get('params', 0):,} parameters, "
              f"{rec.get('train_cases')} training / {rec.get('val_cases')} validation cases", flush=True)
    elif ev == "stage":
        if rec.get("status") in ("start", "done", "reused", "resumed", "stopped"):
            at = f" at stage iteration {rec.get('done')}" if rec.get("status") in ("resumed", "stopped") else ""
            cache = f" ({rec['computed']} computed, {rec['reused']} reused from {rec['folder']})" \
                if "computed" in rec else ""
            print(f"[stage] {rec.get('name')}: {rec.get('status')}{at}{cache}", flush=True)
    elif ev == "notice":
        print(f"[note] {rec.get('message')}", flush=True)
    elif ev == "iter" and (rec["iter"] % 50 == 0 or rec["iter"] == 1):
        terms = " ".join(f"{k}={v:.4g}" for k, v in (rec.get("terms") or {}).items() if v is not None)
        print(f"[iter {rec['iter']:>6}] loss={rec['loss']:.4f} {terms} lr={rec['lr']:.2e} "
              f"t={rec['elapsed']:.0f}s", flush=True)
    elif ev == "val":
        print(_val_line(rec), flush=True)
    elif ev == "end":
        print(f"[end] {rec.get('status')} after {rec.get('iter')} iterations, {rec.get('elapsed')} s", flush=True)


def train_and_report(cfg, args) -> int:
    """Run training in ``--out`` (or continue ``--resume``) with the progress lines; print the result as JSON;
    0 when the budget was spent, 3 when it stopped early."""
    from pathlib import Path

    from .io import jsonsafe
    from .train.engine import run_training

    run_dir = Path(args.resume or args.out or "")
    if not str(run_dir):
        raise CLIError("--out RUN_DIR is required")
    res = run_training(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite, on_event=print_event)
    print(jsonsafe.dumps(res))
    return 0 if res["status"] == "finished" else 3
