"""The one-click job: train a teacher and a student on a data set, evaluate both on the held-back
cases and write a report (metrics table + side-by-side figure) into an output folder."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Dict

from .config import RunConfig

MARKER = ".medkd_pipeline"


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {out} exists and is not empty; pass --overwrite to replace it")
        if not (out / MARKER).exists():
            raise FileExistsError(f"{out} was not made by `medkd pipeline`; refusing to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by medkd pipeline\n")


def default_config(data: Path, model: str, minutes: float, seed: int = 0) -> RunConfig:
    from .data.datasets import load_dataset

    spec = load_dataset(data)
    cfg = RunConfig()
    cfg.data.root = str(data)
    cfg.model.name = model
    cfg.train.minutes = minutes
    cfg.train.seed = seed
    if spec.dims == 3:
        cfg.data.patch_size, cfg.train.batch_size, cfg.train.val_every = 48, 16, 100
    else:
        cfg.data.patch_size, cfg.train.batch_size, cfg.train.val_every = 96, 8, 150
    return cfg


def run_pipeline(data: Path, out: Path, minutes_teacher: float = 1.5, minutes_student: float = 1.0,
                 teacher: str = "unet", student: str = "unet_tiny", overwrite: bool = False,
                 log: Callable[[str], None] = print) -> Dict[str, object]:
    from .evaluate import evaluate_model
    from .inference.run_model import load_run_model
    from .io.image_io import read_image
    from .data.datasets import load_dataset, load_label
    from .inference.predict_files import predict_image
    from .report import metrics_table, side_by_side_figure
    from .train.engine import run_training

    t0 = time.time()
    out = Path(out)
    _prepare_out(out, overwrite)
    runs = {}
    for role, name, minutes in (("teacher", teacher, minutes_teacher), ("student", student, minutes_student)):
        log(f"== training the {role} ({name}) for {minutes} min on {data}")
        cfg = default_config(data, name, minutes)
        runs[role] = out / role
        res = run_training(cfg, runs[role])
        log(f"   {res['status']}: {res['iterations']} iterations, best validation Dice {res['best_dice']:.3f}")
    results, loaded = [], {}
    for role in ("teacher", "student"):
        lm = load_run_model(runs[role])
        loaded[role] = lm
        log(f"== evaluating the {role} on the test split")
        ev = evaluate_model(lm, data, "test", name=role)
        ev.write(out / role / "evaluation")
        log(ev.table())
        results.append((f"{role} ({lm.meta['model_name']})", sum(p.numel() for p in lm.model.parameters()), ev))
    names = loaded["teacher"].class_names
    table = metrics_table(results, names)
    spec = load_dataset(data)
    case = next(c for c in spec.cases if c.split == "test" and c.label is not None)
    img = read_image(case.image)
    masks = {f"{r} ({loaded[r].meta['model_name']})": predict_image(loaded[r], img) for r in ("teacher", "student")}
    fig = side_by_side_figure(img.array, load_label(case.label), masks, out / "comparison.png",
                              title=f"test case {case.id}", n_classes=len(names))
    elapsed = time.time() - t0
    report = (f"# napari-medkd report\n\nData: `{data}` (test split)\n\n{table}\n\n"
              f"Dice is per class over the test cases (mean ± sd); HD95 in mm (pixels for 2D data without spacing).\n\n"
              f"![teacher and student masks]({fig.name})\n\nTotal time: {elapsed:.0f} s\n")
    (out / "report.md").write_text(report)
    summary = {"elapsed_s": elapsed, "runs": {k: str(v) for k, v in runs.items()},
               "test": {lbl: r.summary for lbl, _, r in results}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    log(f"== report written to {out / 'report.md'} ({elapsed:.0f} s)")
    return summary
