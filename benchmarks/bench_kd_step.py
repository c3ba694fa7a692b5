"""The cost of one KD step by method and teacher backend, against the student-alone step (issues 13 and 16).

One training step as the engine takes it (``engine._step``: a batch from the patch sampler, the task's loss,
backward, AdamW step), timed for the student alone (``none``) and for each method with the frozen teacher
run by each backend of ``distill.teacher_backend`` (``teachers/backend.py``): torch fp32, torch bf16
autocast, onnxruntime fp32, onnxruntime int8, and the on-disk output cache (output-only methods). Each
backend's teacher is checked against torch on real batches when it is set up (``parity``), and the
table shows that check; a backend that fails it falls back to torch and is marked so.

On a machine shared with other jobs the configurations are timed interleaved, one step of each in turn
(``--rounds`` x ``--steps`` times), so a change in load hits all of them alike. Two figures per
configuration: the median CPU (process) time of a step, the cost of the step and little moved by other
jobs, and the median wall time; each with its ratio to the student-alone median. The teacher is the
CPU preset's (half-width U-Net on Hippocampus), the student ``unet_tiny``, batch 16 of 48x48 patches of the
packaged Hippocampus sample (half of its volumes labelled).

    python benchmarks/bench_kd_step.py [--threads 1] [--rounds 5] [--steps 6]

Writes ``benchmarks/results/kd_step_cpu/results_t{threads}.json`` and ``.md`` (the README includes them).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TEACHER = Path(os.environ.get("MEDKD_KD_TEACHER", "/work/main/results/teachers/cpu/hippocampus_unet_half"))
SAMPLE = ROOT / "napari_medkd" / "sample_data" / "hippocampus"
OUT = ROOT / "benchmarks" / "results" / "kd_step_cpu"
METHODS = ("logit_kd", "pseudo_label_kd", "mskd", "graph_flow")
BACKENDS = ("torch", "torch_bf16", "onnxruntime", "onnxruntime_int8", "cache")
OUTPUT_ONLY = ("logit_kd", "pseudo_label_kd")


def machine_line(threads: int) -> str:
    import onnxruntime
    import torch

    load = os.getloadavg()
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs: load "
            f"average {load[0]:.1f} at the start), torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
            f"{threads} thread(s)")


def config(method: str, backend: str, threads: int):
    from napari_medkd.config import load_config

    cfg = load_config(TEACHER / "config.yaml")
    cfg.data.root, cfg.data.labelled_fraction, cfg.data.val_fraction = str(SAMPLE), 0.5, 0.0
    cfg.model.name, cfg.model.kwargs = "unet_tiny", {}
    cfg.train.threads, cfg.train.batch_size, cfg.train.iterations = threads, 16, 1000
    cfg.distill.teacher, cfg.distill.method, cfg.distill.teacher_backend = str(TEACHER), method, backend
    cfg.distill.balance, cfg.distill.warmup = "none", None
    cfg.distill.stage_iterations = {"paraphraser": 2}
    return cfg


class Config:
    """One timed configuration: its model, task, optimiser and sampler, set up as the engine does."""

    def __init__(self, method: str, backend: str, threads: int, data, work: Path):
        import torch

        from napari_medkd.models.factory import build_model
        from napari_medkd.train.engine import build_task
        from napari_medkd.train.run_data import _make_sampler

        self.method, self.backend, self.events = method, backend, []
        cfg = config(method, backend, threads)
        torch.manual_seed(0)
        self.model = build_model("unet_tiny", in_channels=1, num_classes=3)
        run_dir = work / f"{method}-{backend}"
        run_dir.mkdir(parents=True, exist_ok=True)
        self.task = build_task(self.model, 3, cfg, torch.device("cpu"), run_dir, preprocess=data.pcfg.to_dict())
        self.task.modules_to_device(torch.device("cpu"))
        self.opt = torch.optim.AdamW(self.task.param_groups(), lr=1e-3)
        self.sampler = _make_sampler(cfg, self.task, copy.deepcopy(data.train_prep), 2, seed=0)
        t0 = time.time()
        if hasattr(self.task, "prepare"):
            self.task.prepare({"emit": lambda ev, **kw: self.events.append({"event": ev, **kw}),
                               "sampler": self.sampler, "device": torch.device("cpu"), "stop": lambda: False,
                               "cfg": cfg, "run_dir": run_dir, "is_main": True})
        self.setup_s = time.time() - t0
        self.times, self.cpu = [], []

    def used(self) -> str:
        """The backend that ran (a failed check falls back to torch)."""
        if self.method == "none":
            return "-"
        if getattr(self.task, "cache_teacher", False):
            return "cache"
        ev = next((e for e in self.events if e["event"] == "teacher_backend"), None)
        return ev["backend"] if ev else self.task.teacher_backend

    def parity(self):
        ev = next((e for e in self.events if e["event"] == "teacher_backend"), None)
        return {k: v for k, v in (ev or {}).items() if k != "event"}

    def timed_step(self) -> None:
        c0, t0 = time.process_time(), time.perf_counter()
        self.step()
        self.times.append(time.perf_counter() - t0)
        self.cpu.append(time.process_time() - c0)

    def step(self) -> float:
        import torch

        t0 = time.perf_counter()
        batch = {k: torch.as_tensor(v) for k, v in self.sampler.sample(16).items()}
        self.task.set_progress(0.5)
        loss, _ = self.task.compute(batch, self.model)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.task.after_step(batch)
        return time.perf_counter() - t0


def teacher_ms(configs, rounds: int = 3, n: int = 4):
    """Median ms of the teacher's forward alone (batch 16, 48x48, with the method's taps), per backend."""
    import torch

    from napari_medkd.models.taps import FeatureTaps

    out = {}
    for c in configs:
        if c.method not in ("mskd", "logit_kd") or c.used() in ("cache", "-"):
            continue
        t = c.task.fast_teacher or c.task.teacher
        x = torch.as_tensor(c.sampler.sample(16)["image"])
        ts = []
        for _ in range(rounds * n):
            t0 = time.perf_counter()
            with torch.no_grad(), FeatureTaps(t, c.task.taps):
                t(x)
            ts.append(time.perf_counter() - t0)
        out[f"{c.method}/{c.used()}"] = 1000 * statistics.median(ts)
    return out


def run(threads: int, rounds: int, steps: int, methods=METHODS, backends=BACKENDS):
    import torch

    from napari_medkd.config import load_config
    from napari_medkd.train.run_data import _load_data

    torch.set_num_threads(threads)
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="kdstep-cache-")  # the disk cache built here, not reused
    work = Path(tempfile.mkdtemp(prefix="kdstep-"))
    data = _load_data(config("none", "torch", threads), True, work)
    wanted = [("none", "torch")] + [(m, b) for m in methods for b in backends if b != "cache" or m in OUTPUT_ONLY]
    configs = []
    for m, b in wanted:
        c = Config(m, b, threads, data, work)
        print(f"set up {m:16s} {b:17s} -> {c.used():17s} {c.setup_s:6.1f} s {c.parity()}", flush=True)
        configs.append(c)
    for c in configs:  # warm-up (first-call allocations, oneDNN kernels)
        for _ in range(2):
            c.step()
    load = []
    for r in range(rounds):
        load.append(os.getloadavg()[0])
        for _ in range(steps):  # one step of each configuration in turn: a change in load hits all alike
            for c in configs:
                c.timed_step()
        print(f"round {r + 1}/{rounds}: CPU ms " + ", ".join(
            f"{c.method}/{c.backend} {1000 * statistics.median(c.cpu):.0f}" for c in configs), flush=True)
    return configs, teacher_ms(configs), load


def record(configs, teacher, load, threads, rounds, steps):
    alone, alone_cpu = (1000 * statistics.median(configs[0].times), 1000 * statistics.median(configs[0].cpu))
    rows = [{"method": c.method, "backend": c.backend, "used": c.used(), "ms": 1000 * statistics.median(c.times),
             "ms_quartiles": [1000 * q for q in statistics.quantiles(c.times, n=4)] if len(c.times) > 1 else None,
             "ratio": statistics.median(c.times) * 1000 / alone, "cpu_ms": 1000 * statistics.median(c.cpu),
             "cpu_ratio": 1000 * statistics.median(c.cpu) / alone_cpu, "setup_s": round(c.setup_s, 1),
             "parity": c.parity(), "steps": len(c.times)} for c in configs]
    return {"machine": machine_line(threads), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "threads": threads, "rounds": rounds, "steps_per_round": steps, "load_during": load,
            "teacher": str(TEACHER), "student": "unet_tiny", "batch": 16, "patch": 48, "student_alone_ms": alone,
            "student_alone_cpu_ms": alone_cpu,
            "rows": rows, "teacher_forward_ms": teacher}


def _table(by, key: str, ratio: str):
    lines = ["| method | " + " | ".join(BACKENDS) + " |", "|---|" + "---|" * len(BACKENDS)]
    for m in ("none",) + METHODS:
        cells = []
        for b in BACKENDS:
            r = by.get((m, b))
            if r is None:
                cells.append("–" if m != "none" else "")
            else:
                mark = "" if r["used"] in (b, "-") else f" (ran as {r['used']})"
                cells.append(f"{r[key]:.0f} ({r[ratio]:.2f}×){mark}")
        lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return lines


def render(rec) -> str:
    by = {(r["method"], r["backend"]): r for r in rec["rows"]}
    n = rec["rows"][0]["steps"]
    runs = rec.get("runs")
    many = (f"**Median over {len(runs)} runs** ({', '.join(r['date'][11:] for r in runs)}; "
            f"files {', '.join(rec['files'])}), each run's figure its median step. ") if runs else ""
    lines = [many + f"KD step by teacher backend, {rec['threads']} thread(s). Teacher `{Path(rec['teacher']).name}` (width-0.5 "
             f"U-Net), student `{rec['student']}`, batch {rec['batch']} of {rec['patch']}² patches of the packaged "
             f"Hippocampus sample, half of them labelled; {n} steps per configuration, one step of each configuration "
             f"in turn ({rec['rounds']} rounds{' per run' if runs else ''}). Machine: {rec['machine']}; load average during the rounds "
             f"{min(rec['load_during']):.1f}–{max(rec['load_during']):.1f} on 2 cores (other agents' jobs); "
             f"{rec['date']}. Command: `python benchmarks/bench_kd_step.py --threads {rec['threads']}`"
             + (f" per run (`--tag _runN`), then `--combine` of the runs' JSON files." if runs else ".")
             + (" Run 1 was taken before MSKD's two terms shared their maps." if runs and "results_t1_run1.json"
                in rec["files"] else ""), "",
             f"**CPU ms per step** (median process time; ratio to the student-alone step, "
             f"{rec['student_alone_cpu_ms']:.0f} ms): the cost of a step, little moved by other jobs on the cores.", ""]
    lines += _table(by, "cpu_ms", "cpu_ratio")
    lines += ["", f"Wall ms per step (median; ratio to the student-alone step, {rec['student_alone_ms']:.0f} ms): what "
              "a run waited, inflated by the other jobs sharing the cores.", ""]
    lines += _table(by, "ms", "ratio")
    lines += ["", "Teacher forward alone (median wall ms under the same load, batch 16, with the method's taps): " + ", ".join(
        f"{k} {v:.0f}" for k, v in rec["teacher_forward_ms"].items()) + ".", "",
        "Parity of each converted teacher with torch on 2 real training batches (checked when the run sets it up; "
        "relative = max |fast − torch| / max |torch| over logits and taps; Dice = mean foreground Dice between their "
        "masks):", "", "| method | backend | max relative diff | argmax agreement | Dice agreement | set-up s |",
        "|---|---|---|---|---|---|"]
    for r in rec["rows"]:
        p = r["parity"]
        if "max_rel_diff" in p:
            lines.append(f"| `{r['method']}` | {r['backend']} | {p['max_rel_diff']:.2e} | {p['argmax_agreement']:.5f} | "
                         f"{p['dice_agreement']:.4f} | {r['setup_s']} |")
    return "\n".join(lines) + "\n"


def combine(paths) -> dict:
    """One record from several runs' records: per configuration the median over runs of each run's median
    (CPU ms, wall ms and their ratios); the parity and set-up of the last run."""
    recs = [json.loads(Path(p).read_text()) for p in paths]
    out = dict(recs[-1])
    keys = [(r["method"], r["backend"]) for r in recs[-1]["rows"]]
    rows = []
    for key in keys:
        found = [next(r for r in rec["rows"] if (r["method"], r["backend"]) == key) for rec in recs]
        row = dict(found[-1])
        for k in ("ms", "ratio", "cpu_ms", "cpu_ratio"):
            row[k] = statistics.median(r[k] for r in found)
        row["per_run"] = {k: [round(r[k], 3) for r in found] for k in ("cpu_ms", "cpu_ratio", "ratio")}
        rows.append(row)
    out.update(rows=rows, runs=[{"date": r["date"], "load_during": r["load_during"], "machine": r["machine"]}
                                for r in recs],
               student_alone_ms=statistics.median(r["student_alone_ms"] for r in recs),
               student_alone_cpu_ms=statistics.median(r["student_alone_cpu_ms"] for r in recs),
               load_during=[x for r in recs for x in r["load_during"]], files=[Path(p).name for p in paths])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=6, help="steps of each configuration per round, one at a time in turn")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS))
    ap.add_argument("--tag", default="", help="suffix of the result files (a partial run)")
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="no timing: write results_t{threads}.md/.json as "
                    "the median over these runs' results (each run's medians)")
    args = ap.parse_args(argv)
    if args.combine:
        rec = combine(args.combine)
        (OUT / f"results_t{args.threads}.json").write_text(json.dumps(rec, indent=1))
        (OUT / f"results_t{args.threads}.md").write_text(render(rec))
        print(render(rec))
        return 0
    configs, teacher, load = run(args.threads, args.rounds, args.steps, args.methods, args.backends)
    rec = record(configs, teacher, load, args.threads, args.rounds, args.steps)
    OUT.mkdir(parents=True, exist_ok=True)
    name = f"results_t{args.threads}{args.tag}"
    (OUT / f"{name}.json").write_text(json.dumps(rec, indent=1))
    (OUT / f"{name}.md").write_text(render(rec))
    print(render(rec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
