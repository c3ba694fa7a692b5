"""Issue 13's benchmark: label-free and label-scarce distillation of a teacher brought as a file, from the CLI.

The project's Hippocampus teacher (a finished run folder, width-0.5 U-Net) is exported to ONNX
(``medkd export``, parity-checked) and then treated as a foreign file: every student below is trained
with ``medkd distill --teacher teacher.onnx --data SCANS [--labels DIR]`` on a plain folder of the
Hippocampus training scans (symbolic links, no data set file, no masks beside them):

- ``label-free``: no mask at all (``--data scans/``);
- ``10 % labels``: masks for 10 % of the scans (``--labels labels10/``, the same masks for every row);
- ``student alone``: the same 10 % masks, no teacher term (``--method none``), at equal iterations.

Each is evaluated on the Hippocampus test split (ground truth) and against the ONNX teacher
(``medkd agreement``, which also gives the teacher's own test Dice, measured the same way). Every
command runs under ``nice``; wall and CPU seconds (of the child processes) are recorded per step.

    python benchmarks/bench_byo_teacher.py [--iterations 1200] [--seed 0] [--work results/byo_teacher]

Writes ``benchmarks/results/byo_teacher_cpu/results.json`` and ``results.md`` (the README includes it).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "Hippocampus"
TEACHER_RUN = Path("/work/main/results/teachers/cpu/hippocampus_unet_half")
OUT = ROOT / "benchmarks" / "results" / "byo_teacher_cpu"


def machine_line() -> str:
    import torch

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU, Python "
            f"{platform.python_version()}, torch {torch.__version__}; load average at start {load:.2f} "
            "(the cores were shared with other jobs)")


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _flat(cmd):
    for c in cmd:
        yield from (_flat(c) if isinstance(c, (list, tuple)) else [c])


def run(cmd, log, timings, name):
    """Run ``cmd`` under nice, appending its output to ``log``; record wall and CPU seconds under ``name``."""
    cmd = ["nice", "-n", "10"] + [str(c) for c in _flat(cmd)]
    t0, c0 = time.time(), _cpu_children()
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
    timings[name] = {"wall_s": round(time.time() - t0, 1), "cpu_s": round(_cpu_children() - c0, 1)}
    print(f"{name}: rc {rc}, {timings[name]}", flush=True)
    if rc != 0:
        raise SystemExit(f"{name} failed (rc {rc}); see {log}")


def plain_folders(work: Path, fraction: float, seed: int):
    """``scans/`` (links to every training image) and ``labelsN/`` (links to the masks of ``fraction`` of
    them, drawn with ``seed``)."""
    rows = [r for r in csv.DictReader(open(DATA / "manifest.csv")) if r["split"] == "train"]
    scans, labels = work / "scans", work / f"labels{int(round(fraction * 100))}"
    for d in (scans, labels):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    for r in rows:
        (scans / Path(r["image"]).name).symlink_to(DATA / r["image"])
    keep = sorted(random.Random(seed).sample(rows, max(1, int(round(fraction * len(rows))))), key=lambda r: r["stem"])
    for r in keep:
        (labels / Path(r["image"]).name).symlink_to(DATA / r["mask"])
    return scans, labels, len(rows), len(keep)


def agreement(medkd, student, teacher, out, log, timings, name):
    run([medkd, "agreement", "--student", student, "--teacher", teacher, "--data", DATA, "--split", "test",
         "--out", out], log, timings, name)


def train_seconds(run_dir: Path):
    end = [json.loads(line) for line in open(run_dir / "events.jsonl") if '"end"' in line]
    return end[-1].get("elapsed") if end else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--method", default="pseudo_label_kd")
    ap.add_argument("--student", default="unet_tiny")
    ap.add_argument("--work", default=str(ROOT / "results" / "byo_teacher"))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--reuse", action="store_true", help="keep the work folder: reuse its export and the runs "
                    "already evaluated there (their recorded times are kept)")
    args = ap.parse_args(argv)
    medkd = [sys.executable, "-m", "napari_medkd"]  # this checkout's package (run from its root)
    work, out = Path(args.work), Path(args.out)
    old = json.loads((out / "results.json").read_text()) if args.reuse and (out / "results.json").is_file() else {}
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log, timings = work / "log.txt", dict(old.get("timings", {}))
    machine, started = machine_line(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t_all = time.time()

    onnx = work / "teacher.onnx"
    if not onnx.is_file():
        run([medkd, "export", TEACHER_RUN, "--out", onnx], log, timings, "export")
    scans, labels, n_scans, n_labels = plain_folders(work, args.fraction, args.seed)
    # the students' shared settings: the teacher's patch size and batch; validation only at the end; the
    # output-only terms at full weight from the start (the label-scarce tuning: benchmarks/tuning/)
    cfg = work / "students.yaml"
    cfg.write_text(f"data: {{patch_size: 48, val_fraction: 0.1}}\ntrain: {{batch_size: 16, threads: 1, val_every: {args.iterations}, "
                   f"seed: {args.seed}}}\ndistill: {{warmup: null, teacher_cache_dir: {work / 'teacher_cache'}}}\n")
    common = ["--student", args.student, "--iterations", args.iterations, "--config", cfg]
    pct = f"{int(round(args.fraction * 100))} % labels"
    rows = [("label-free", args.method, []), (pct, args.method, ["--labels", labels]),
            (f"student alone, {pct}", "none", ["--labels", labels])]
    results = []
    teacher_gt = None
    for i, (name, method, extra) in enumerate(rows):
        run_dir, ev = work / f"run{i}", work / f"eval{i}"
        if not (ev / "agreement.json").is_file():
            run([medkd, "distill", "--teacher", onnx, "--data", scans, "--method", method, "--out", run_dir,
                 *common, *extra], log, timings, f"train: {name}, {method}")
            agreement(medkd, run_dir, onnx, ev, log, timings, f"evaluate: {name}, {method}")
        rep = json.loads((ev / "agreement.json").read_text())
        teacher_gt = rep["ground_truth"]["teacher"]
        results.append({"row": name, "method": method, "labels": 0 if not extra else n_labels,
                        "test_dice": rep["ground_truth"]["student"], "agree_dice": rep["agreement"]["dice_mean"],
                        "voxel_agreement": rep["agreement"]["voxel_agreement"],
                        "test_cases": rep["ground_truth"]["cases"], "train_s": train_seconds(run_dir)})
    ref = json.loads((TEACHER_RUN / "eval_in.json").read_text())["summary"]["dice_mean"]["mean"]
    total_wall, total_cpu = round(time.time() - t_all, 1), round(sum(t["cpu_s"] for t in timings.values()), 1)
    rec = {"machine": machine, "date": started, "seed": args.seed, "iterations": args.iterations,
           "student": args.student, "method": args.method, "scans": n_scans, "labelled_scans": n_labels,
           "teacher": str(TEACHER_RUN), "teacher_test_dice_onnx": teacher_gt, "teacher_test_dice_eval_in": ref,
           "rows": results, "timings": timings, "total_wall_s": total_wall, "total_cpu_s": total_cpu}
    (out / "results.json").write_text(json.dumps(rec, indent=1))
    (out / "results.md").write_text(render(rec))
    print(render(rec))
    return 0


def render(rec) -> str:
    t = rec["teacher_test_dice_onnx"]
    lines = [f"Teacher `{Path(rec['teacher']).name}` exported to ONNX and distilled from the CLI "
             f"(`medkd distill --teacher teacher.onnx --data scans/ [--labels labels10/]`), student "
             f"`{rec['student']}`, {rec['iterations']} iterations each, batch 16, 48² patches, "
             f"**one seed ({rec['seed']})**; {rec['scans']} Hippocampus training scans as a plain folder, "
             f"{rec['labelled_scans']} of them with masks in the label-scarce rows (10 % of the scans held back for "
             f"validation, the rest trained on); test: the 52 test volumes. "
             f"Machine: {rec['machine']}; {rec['date']}. Total {rec['total_wall_s'] / 60:.1f} min wall, "
             f"{rec['total_cpu_s'] / 60:.1f} min CPU (export, {len(rec['rows'])} trainings, evaluations; at nice 10). "
             "Command: `python benchmarks/bench_byo_teacher.py`", "",
             "| row | method | masks | test Dice | share of teacher's Dice | Dice agreement with teacher | "
             "voxel agreement | train s (wall) |",
             "|---|---|---|---|---|---|---|---|",
             f"| teacher (ONNX, width-0.5 U-Net) | – | all | {t:.3f} | 1.00 | 1.000 | 1.000 | – |"]
    for r in rec["rows"]:
        lines.append(f"| {r['row']} | `{r['method']}` | {r['labels']} | {r['test_dice']:.3f} | "
                     f"{r['test_dice'] / t:.2f} | {r['agree_dice']:.3f} | {r['voxel_agreement']:.4f} | "
                     f"{r['train_s'] if r['train_s'] is not None else '–'} |")
    lines += ["", "Test Dice: mean over the test volumes of the mean over the two foreground classes, each model "
              "run the same way (`medkd agreement --split test`; the teacher through its ONNX file; its run "
              f"folder's own evaluation gave {rec['teacher_test_dice_eval_in']:.3f}). Agreement: Dice between "
              "student and teacher masks on the test volumes. Steps (wall / CPU s): "
              + "; ".join(f"{k} {v['wall_s']:.0f} / {v['cpu_s']:.0f}" for k, v in rec["timings"].items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
