"""Per-term gradient ratio of every distillation preset, before and after loss balancing.

For each preset, a one-iteration distillation run of a fresh student from a trained teacher calibrates
its terms (``distill.balance = grad``, distill/balance.py) and logs, per term, the ratio
``||grad(w L_term)|| / ||grad L_seg||`` on the student's parameters at the preset weight ("before") and
at the calibrated weight ("after"), and the cosine of the term's gradient with the segmentation
gradient, as means over ``--batches`` training batches. This script runs those runs and writes the table.

    python benchmarks/grad_ratio.py --teacher medkd_out/teacher [--student unet_tiny] [--out FILE.md]

The teacher's run folder gives the data (its ``data.root``), the patch size and the preprocessing.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine_line() -> str:
    import os

    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, torch {torch.__version__}, 1 thread per run")


def preset_ratios(teacher: Path, method: str, student: str, batches: int, stage_iterations: int, work: Path):
    from napari_medkd.config import load_config
    from napari_medkd.train.engine import run_training
    from napari_medkd.train.events import read_events

    cfg = load_config(teacher / "config.yaml")
    cfg.model.name, cfg.model.kwargs = student, {}
    cfg.train.iterations, cfg.train.minutes, cfg.train.epochs, cfg.train.val_every = 1, None, None, 10 ** 9
    cfg.train.threads = 1
    cfg.distill.teacher, cfg.distill.method, cfg.distill.terms = str(teacher), method, None
    cfg.distill.balance, cfg.distill.balance_batches = "grad", batches
    cfg.distill.stage_iterations = {"paraphraser": stage_iterations, "msan": stage_iterations}
    run = work / method
    run_training(cfg, run)
    return next(e for e in read_events(run / "events.jsonl") if e["event"] == "balance")


def table(rows) -> str:
    lines = ["| preset | term | preset weight | ratio before | cos to seg | calibrated weight | ratio after |",
             "|---|---|---|---|---|---|---|"]
    for method, bal in rows:
        for label, t in bal["terms"].items():
            lines.append(f"| {method} | {label} | {t['preset_weight']:g} | {t['ratio_before']:.3g} | "
                         f"{t['cos_seg']:+.2f} | {t['weight']:.3g} | {t['ratio_after']:.3g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from napari_medkd.distill import load_all
    from napari_medkd.io.atomic import write_text_atomic
    from napari_medkd.registry import METHODS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", required=True, help="a trained teacher's run folder")
    ap.add_argument("--student", default="unet_tiny")
    ap.add_argument("--methods", nargs="*", help="default: every preset but 'none'")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--stage-iterations", type=int, default=50, help="paraphraser / MSAN pre-training")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grad_ratio.md"))
    args = ap.parse_args(argv)
    load_all()
    methods = args.methods or [m for m in METHODS.names() if m != "none"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            print(f"== {m}", flush=True)
            rows.append((m, preset_ratios(Path(args.teacher), m, args.student, args.batches,
                                          args.stage_iterations, Path(tmp))))
    text = (f"Student `{args.student}` at initialisation, teacher `{args.teacher}`, mean over {args.batches} "
            f"training batches; `benchmarks/grad_ratio.py`. Ratio = ||grad(w·L_term)|| / ||grad L_seg|| on the "
            f"student's parameters; \"before\" at the preset weight, \"after\" at the weight loss balancing "
            f"(`distill.balance: grad`) sets; cos = cosine of the term's gradient with the segmentation "
            f"gradient. Adversarial terms keep their preset weight (their critic is untrained when the weights are "
            f"set); `pseudo_label` acts on unlabelled samples only, so on a fully labelled data set it has no gradient "
            f"here and keeps its weight. Command: `python benchmarks/grad_ratio.py --teacher {args.teacher}`.\n\n"
            f"Machine: {machine_line()}, {time.strftime('%Y-%m-%d')}\n\n{table(rows)}\n")
    write_text_atomic(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
