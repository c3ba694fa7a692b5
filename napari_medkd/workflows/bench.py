"""``medkd bench``: a whole comparison from a YAML suite, resumable, with a table, CSV and plots.

A suite names a data set, a teacher, a student, the methods, seeds and budgets (one preset per
machine kind). Every run lives in ``RESULTS/<suite>/<preset>/runs/<name>``; a finished run (its
event log ends with status ``finished``) is reused, an unfinished one is resumed, so a stopped
bench continues where it stopped. Evaluations are cached next to each run.
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import yaml

from ..config import RunConfig
from ..io.atomic import write_text_atomic


@dataclass
class Suite:
    name: str
    data: str
    teacher: Dict[str, Any]
    student: str
    methods: List[str]
    seeds: List[int]
    train: Dict[str, Any]
    data_options: Dict[str, Any]
    cross_domain: List[str]
    stage_iterations: Dict[str, int]
    metric_split: str = "test"
    fsd_tile: int = 96
    jobs: int = 1

    @classmethod
    def load(cls, path: Path, preset: str) -> "Suite":
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        presets = raw.get("presets", {})
        if preset not in presets:
            raise KeyError(f"{path}: no preset '{preset}'; it has {sorted(presets)}")
        p = presets[preset]
        base = Path(path).resolve().parent
        resolve = lambda d: str((base / d).resolve()) if not Path(d).is_absolute() else d  # noqa: E731
        return cls(name=raw["name"], data=resolve(raw["data"]), teacher=dict(raw["teacher"], **p.get("teacher", {})),
                   student=raw["student"], methods=list(p.get("methods", raw["methods"])),
                   seeds=list(p.get("seeds", raw.get("seeds", [0, 1, 2]))), train=dict(p.get("train", {})),
                   data_options=dict(raw.get("data_options", {}), **p.get("data_options", {})),
                   cross_domain=[resolve(d) for d in raw.get("cross_domain", [])],
                   stage_iterations=dict(p.get("stage_iterations", {})),
                   fsd_tile=int(p.get("fsd_tile", raw.get("fsd_tile", 96))), jobs=int(p.get("jobs", 1)))


def _finished(run: Path) -> Optional[bool]:
    from ..train.events import read_events

    ev = run / "events.jsonl"
    if not ev.exists():
        return None
    ends = [e for e in read_events(ev) if e["event"] == "end"]
    return bool(ends) and ends[-1].get("status") == "finished"


BUDGET_KEYS = {"iterations", "epochs", "minutes"}


def _config(suite: Suite, model: str, seed: int, train_over: Dict[str, Any]) -> RunConfig:
    cfg = RunConfig()
    cfg.data.root = suite.data
    for k, v in suite.data_options.items():
        setattr(cfg.data, k, v)
    cfg.model.name = model
    train_over = dict(train_over)
    cfg.model.kwargs = dict(train_over.pop("model_kwargs", None) or {})
    base = dict(suite.train)
    if BUDGET_KEYS & set(train_over):  # a run with its own budget (the teacher) takes none of the students'
        base = {k: v for k, v in base.items() if k not in BUDGET_KEYS}
    for k, v in {**base, **train_over}.items():
        setattr(cfg.train, k, v)
    cfg.train.seed = seed
    return cfg


#: settings that change how fast a run goes, not what it learns; a finished run is reused across them
_SPEED_ONLY = {("train", "threads"), ("train", "device"), ("train", "log_every")}


def _config_differences(saved: RunConfig, wanted: RunConfig) -> List[str]:
    a, b = saved.to_dict(), wanted.to_dict()
    return [f"{sec}.{k}: run has {a[sec].get(k)!r}, suite wants {b[sec][k]!r}"
            for sec in b for k in b[sec] if (sec, k) not in _SPEED_ONLY and a[sec].get(k) != b[sec][k]]


def _method_terms(method: str) -> List[Any]:
    """The term list a method preset stands for now, in JSON form (to compare with a run's record)."""
    from ..distill import methods as _registers_presets  # noqa: F401
    from ..registry import METHODS

    return json.loads(json.dumps(METHODS.meta(method).get("terms", [])))


def _check_method_record(run: Path, method: str) -> None:
    """``method.json`` in a student run records the terms its method preset had when it was trained,
    so a run whose preset has changed in the code since (other terms or weights) is not silently
    reused or resumed. Runs from before the record existed get one."""
    record = run / "method.json"
    terms = _method_terms(method)
    if record.exists():
        had = json.loads(record.read_text(encoding="utf-8"))
        if had.get("method") != method or had.get("terms") != terms:
            raise RuntimeError(f"{run} was trained with method {had.get('method')!r} = {had.get('terms')}, but "
                               f"{method!r} is now {terms}; use another --results folder or remove that run")
        return
    write_text_atomic(record, json.dumps({"method": method, "terms": terms}))


def _ensure_run(run: Path, cfg: RunConfig, log, task_factory=None, method: Optional[str] = None) -> None:
    from ..config import load_config
    from ..train.engine import run_training

    state = _finished(run)
    if state is not None and (run / "config.yaml").exists():
        diff = _config_differences(load_config(run / "config.yaml"), cfg)
        if diff:
            raise RuntimeError(f"{run} was made with other settings than this suite asks for "
                               f"({'; '.join(diff[:4])}); use another --results folder or remove that run")
    if method is not None and state is not None:
        _check_method_record(run, method)
    if state:
        log(f"   reuse {run.name}")
        return
    resume = state is False and (run / "config.yaml").exists()
    log(f"   {'resume' if resume else 'train'} {run.name}")
    res = run_training(cfg, run, resume=resume, task_factory=task_factory)
    if method is not None:
        _check_method_record(run, method)
    if res["status"] != "finished":
        raise RuntimeError(f"{run} ended with status {res['status']}")


def _student_job(run: str, cfg_dict: Dict[str, Any], teacher_run: str, method: str) -> str:
    """Train (or resume, or reuse) one student run; module-level so a process pool can call it."""
    from ..distill.task import distill_task_factory

    cfg = RunConfig.from_dict(cfg_dict)
    factory = None if method == "none" else distill_task_factory(Path(teacher_run), method,
                                                                  patch_size=cfg.data.patch_size)
    _ensure_run(Path(run), cfg, lambda m: print(m, flush=True), task_factory=factory, method=method)
    return run


def _train_students(jobs_list, teacher_run: Path, jobs: int, log) -> None:
    """Train every (run, cfg, method); with ``jobs`` > 1 that many at once, each on its share of the
    CPU threads (two 1-thread runs of a tiny student get through ~1.3-1.5x more work than one 2-thread
    run on 2 cores). A failed run does not stop the others; the first failure is raised at the end."""
    if jobs <= 1:
        for run, cfg, method in jobs_list:
            _student_job(str(run), cfg.to_dict(), str(teacher_run), method)
        return
    import concurrent.futures as cf
    import multiprocessing as mp

    pending = []
    for r, c, m in jobs_list:
        if _finished(r):
            _ensure_run(r, c, log, method=m)  # checks the settings and says "reuse"
        else:
            pending.append((r, c, m))
    errors = []
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futs = {}
        for run, cfg, method in pending:
            d = cfg.to_dict()
            d["train"]["threads"] = max(1, (cfg.train.threads or os.cpu_count() or 1) // jobs)
            futs[pool.submit(_student_job, str(run), d, str(teacher_run), method)] = run
        for fut in cf.as_completed(futs):
            try:
                fut.result()
            except Exception as exc:  # noqa: BLE001 - collected, raised after the others finish
                errors.append((futs[fut], exc))
                log(f"   FAILED {futs[fut].name}: {exc}")
    if errors:
        raise RuntimeError(f"{len(errors)} run(s) failed, first {errors[0][0]}: {errors[0][1]}") from errors[0][1]


def _run_seconds(run: Path) -> float:
    """Wall seconds a run spent training (stages included), summed over its sessions if resumed."""
    from ..train.events import read_events

    total, t0, last = 0.0, None, None
    for e in read_events(run / "events.jsonl"):
        if e["event"] == "start":
            if t0 is not None:
                total += last - t0
            t0 = e["time"]
        last = e["time"]
    return total + ((last - t0) if t0 is not None else 0.0)


def _evaluate(run: Path, data: str, tag: str, fsd_ref: Optional[Path] = None) -> Dict[str, Any]:
    from .evaluate import evaluate_run

    cache = run / f"eval_{tag}.json"
    if cache.exists():
        return json.loads(cache.read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    res = evaluate_run(run, data, split="test")
    out = {"summary": res.summary, "seconds_per_case": res.seconds_per_case, "seconds": time.perf_counter() - t0}
    write_text_atomic(cache, json.dumps(out))
    return out


#: input sizes of the cost columns: MACs of one forward pass, onnxruntime time of one input
COST_SHAPES = {2: {"macs": (256, 256), "ort": (512, 512)}, 3: {"macs": (64, 64, 64), "ort": (64, 64, 64)}}


def _cost_inputs(dims: int) -> Dict[str, str]:
    """Names of the cost columns' inputs for ``dims``-D networks: table labels and plain words."""
    macs, ort = COST_SHAPES[dims]["macs"], COST_SHAPES[dims]["ort"]
    power = "²" if dims == 2 else "³"
    return {"macs": f"{macs[0]}{power}", "ort": f"{ort[0]}{power}",
            "ort_words": "×".join(map(str, ort)) + (" slice" if dims == 2 else " volume")}


def _ort_ms(run: Path, log, shape=(512, 512)) -> float:
    """Median ms of one ``shape`` input (a 512x512 slice for 2D networks) through the exported model
    in onnxruntime (cached with its shape; a cache without one is from 512x512 slices)."""
    shape = tuple(int(v) for v in shape)
    cache = run / "ort_ms.json"
    if cache.exists():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if tuple(saved.get("shape", (512, 512))) == shape:
            return saved["ms"]
    try:
        from ..export.onnx_export import export_onnx
        from ..inference.ort_infer import OrtSegmenter
    except ImportError:
        return math.nan
    onnx_path = run / "student.onnx"
    if not onnx_path.exists():
        export_onnx(run, onnx_path)
    seg = OrtSegmenter(onnx_path)
    x = np.random.default_rng(0).normal(size=(1, seg.in_channels, *shape)).astype(np.float32)
    times = []
    for _ in range(22):
        t0 = time.perf_counter()
        seg.run(x)
        times.append((time.perf_counter() - t0) * 1000)
    ms = float(np.median(times[2:]))  # measured after all training, so no run shares the cores
    write_text_atomic(cache, json.dumps({"ms": ms, "shape": list(shape)}))
    return ms


def run_bench(suite_path: Path, preset: str, results: Path, log: Callable[[str], None] = print,
              methods: Optional[List[str]] = None, jobs: Optional[int] = None) -> Path:
    """Run (or resume) a suite; ``methods`` limits this call to some of the suite's methods; ``jobs``
    student runs train at once (default: the preset's ``jobs``, else 1)."""
    from ..train.run_model import load_run_model
    from ..models.cost import count_macs, count_parameters

    suite = Suite.load(suite_path, preset)
    if methods:
        unknown = sorted(set(methods) - set(suite.methods))
        if unknown:
            raise KeyError(f"{suite_path}: methods {unknown} are not in the suite ({suite.methods})")
        suite.methods = [m for m in suite.methods if m in methods]
    root = Path(results) / suite.name / preset
    runs = root / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    log(f"== suite {suite.name} [{preset}] -> {root}")
    teacher_run = runs / "teacher"
    tcfg = _config(suite, suite.teacher["model"], 0, {k: v for k, v in suite.teacher.items() if k != "model"})
    _ensure_run(teacher_run, tcfg, log)
    rows: List[Dict[str, Any]] = []
    domains = [("in", suite.data)] + [(Path(d).name, d) for d in suite.cross_domain]

    ort_ms: Dict[str, float] = {}

    def record(label: str, method: str, run_list: List[Path]) -> None:
        lm = load_run_model(run_list[0])
        params = count_parameters(lm.model)
        dims = getattr(lm.model, "spatial_dims", 2)
        shapes = COST_SHAPES[dims]
        macs = count_macs(lm.model, (1, lm.meta["in_channels"], *shapes["macs"]))
        row: Dict[str, Any] = {"row": label, "method": method, "params": params, "gmacs": macs / 1e9,
                               "spatial_dims": dims, "seeds": len(run_list)}
        eval_s = 0.0
        for tag, data in domains:
            evs = [_evaluate(r, data, tag) for r in run_list]
            eval_s += sum(e.get("seconds", math.nan) for e in evs)
            for metric in ("dice", "hd95"):
                vals = [e["summary"].get(f"{metric}_mean", {}).get("mean", math.nan) for e in evs]
                row[f"{metric}_{tag}"] = float(np.nanmean(vals))
                row[f"{metric}_{tag}_sd"] = float(np.nanstd(vals)) if len(vals) > 1 else math.nan
        arch = lm.meta.get("model_name", label)
        if arch not in ort_ms:  # one measurement per architecture: every student row has the same network
            ort_ms[arch] = _ort_ms(run_list[0], log, shapes["ort"])
        row["ort_ms"] = ort_ms[arch]
        row["train_s_per_run"] = float(np.mean([_run_seconds(r) for r in run_list]))
        row["eval_s"] = float(eval_s)
        rows.append(row)
        row["_runs"] = run_list

    plan = []
    for method in suite.methods:
        run_list = []
        for seed in suite.seeds:
            cfg = _config(suite, suite.student, seed, {})
            cfg.distill.teacher = str(teacher_run)
            cfg.distill.method = method
            cfg.distill.stage_iterations = dict(suite.stage_iterations)
            run_list.append((runs / f"{method}_s{seed}", cfg, method))
        plan.append((method, run_list))
    _train_students([j for _, rl in plan for j in rl], teacher_run, jobs or suite.jobs, log)
    tkw = ", ".join(f"{k} {v}" for k, v in (suite.teacher.get("model_kwargs") or {}).items())
    record(f"teacher ({suite.teacher['model']}{', ' + tkw if tkw else ''})", "teacher", [teacher_run])
    for method, run_list in plan:
        record("student alone" if method == "none" else f"student + {method}", method, [r for r, _, _ in run_list])
    _gap(rows)
    _fsd_columns(rows, suite, domains, runs, log)
    for r in rows:
        r.pop("_runs", None)
    out = write_outputs(rows, root, suite, preset, domains, time.time() - t_start, jobs or suite.jobs)
    log(f"== written {out}")
    return out


def _fsd_columns(rows, suite: Suite, domains, runs: Path, log) -> None:
    """FSD between in-domain and each cross-domain test set, for every student row.

    The probe is one fixed MSAN header for all rows: the student MSAN of the suite's first GKD run
    (so the student-alone and distilled rows are measured with the same instrument, as FID uses one
    Inception network). Without a GKD row there is no probe and no FSD column.
    """
    from ..data.datasets import load_dataset
    from ..analysis.fsd_probe import domain_fsd, load_run_msan

    gkd_run = runs / f"gkd_s{suite.seeds[0]}"
    if len(domains) < 2 or "gkd" not in suite.methods or not gkd_run.exists():
        return
    probe = load_run_msan(gkd_run, 2)
    if probe is None:
        return
    header = probe[1]
    source = [c.image for c in load_dataset(suite.data).split("test")]
    for tag, data in domains[1:]:
        target = [c.image for c in load_dataset(data).split("test")]
        for r in rows:
            vals = []
            for run in r["_runs"] if r["method"] != "teacher" else []:
                cache = run / f"fsd_{tag}.json"
                if not cache.exists():
                    log(f"   FSD {run.name}: {Path(suite.data).name} vs {tag}")
                    write_text_atomic(cache, json.dumps(domain_fsd(run, header, source, target, tile=suite.fsd_tile)))
                vals.append(json.loads(cache.read_text(encoding="utf-8"))["fsd"])
            r[f"fsd_{tag}"] = float(np.mean(vals)) if vals else math.nan
            r[f"fsd_{tag}_sd"] = float(np.std(vals)) if len(vals) > 1 else math.nan


def _gap(rows: List[Dict[str, Any]]) -> None:
    t = next(r for r in rows if r["method"] == "teacher")
    s = next((r for r in rows if r["method"] == "none"), None)
    for r in rows:
        for key in [k for k in r if k.startswith("dice_") and not k.endswith("_sd")]:
            if s is None or not math.isfinite(t[key] - s[key]) or abs(t[key] - s[key]) < 1e-9:
                r[f"gap_closed_{key[5:]}"] = math.nan
            else:
                r[f"gap_closed_{key[5:]}"] = (r[key] - s[key]) / (t[key] - s[key])


def _gpu_name() -> str:
    try:
        import torch

        return f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    except Exception:  # noqa: BLE001 - the machine line is informative only
        return ""


def _fmt(v, sd=None, nd=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}" + (f" ± {sd:.{nd}f}" if sd is not None and math.isfinite(sd) else "")


def write_outputs(rows, root: Path, suite: Suite, preset: str, domains, seconds: float, jobs: int = 1) -> Path:
    teacher_min = sum(r["train_s_per_run"] for r in rows if r["method"] == "teacher") / 60
    student_min = sum(r["train_s_per_run"] * r["seeds"] for r in rows if r["method"] != "teacher") / 60
    train_min = teacher_min + student_min
    train_wall = teacher_min + student_min / max(1, jobs)
    eval_min = sum(r["eval_s"] for r in rows if math.isfinite(r["eval_s"])) / 60
    inputs = _cost_inputs(rows[0]["spatial_dims"])
    keys = list(rows[0].keys())
    with open(root / "results.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    head = ["model"] + [f"Dice {t}" for t, _ in domains] + [f"HD95 {t}" for t, _ in domains] + \
        ["params", f"GMACs@{inputs['macs']}", f"ORT ms/{inputs['ort']}", "train s/run", "gap closed (in)"]
    fsd_tags = [t for t, _ in domains[1:] if f"fsd_{t}" in rows[0]]
    head += [f"FSD in vs {t}" for t in fsd_tags]
    lines = [f"Suite `{suite.name}` preset `{preset}`, data `{Path(suite.data).name}`, student `{suite.student}`, "
             f"seeds {suite.seeds}; machine: {platform.machine()}, {os.cpu_count()} CPU cores{_gpu_name()}, "
             f"{time.strftime('%Y-%m-%d')}. Compute: training {train_min:.0f} run-minutes (teacher {teacher_min:.0f}, "
             f"students {(train_min - teacher_min):.0f} in {jobs} parallel job(s), so about {train_wall:.0f} min wall) "
             f"+ evaluation {eval_min:.0f} min; this call took {seconds / 60:.0f} min. "
             f"Command: `medkd bench --suite {suite.name} --preset {preset}`", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["row"]] + [_fmt(r[f"dice_{t}"], r[f"dice_{t}_sd"]) for t, _ in domains] + \
            [_fmt(r[f"hd95_{t}"], r[f"hd95_{t}_sd"], 2) for t, _ in domains] + \
            [f"{r['params']:,}", f"{r['gmacs']:.3f}", _fmt(r["ort_ms"], nd=1), _fmt(r["train_s_per_run"], nd=0),
             _fmt(r.get("gap_closed_in"), nd=2)] + \
            [_fmt(r[f"fsd_{t}"], r[f"fsd_{t}_sd"], 2) for t in fsd_tags]
        lines.append("| " + " | ".join(cells) + " |")
    md = root / "results.md"
    lines.append("")
    lines.append("Dice/HD95: mean ± sd over seeds of the per-case mean over foreground classes, on the test split. "
                 f"ORT ms: median onnxruntime CPU time of one {inputs['ort_words']} "
                 "through that architecture. "
                 "Gap closed: (distilled − alone) / (teacher − alone), in-domain Dice.")
    write_text_atomic(md, "\n".join(lines) + "\n")
    _plots(rows, root, domains)
    return md


def _plots(rows, root: Path, domains) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.8), 4))
    x = np.arange(len(rows))
    width = 0.8 / len(domains)
    for i, (t, _) in enumerate(domains):
        ax.bar(x + i * width, [r[f"dice_{t}"] for r in rows], width,
               yerr=[0 if not math.isfinite(r[f"dice_{t}_sd"]) else r[f"dice_{t}_sd"] for r in rows], label=t,
               capsize=3)
    ax.set_xticks(x + width * (len(domains) - 1) / 2, [r["row"] for r in rows], rotation=35, ha="right")
    ax.set_ylabel("Dice (mean ± sd over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(root / "dice.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    for r in rows:
        if math.isfinite(r["ort_ms"]):
            ax.scatter(r["ort_ms"], r["dice_in"])
            ax.annotate(r["method"], (r["ort_ms"], r["dice_in"]), fontsize=7)
    ax.set_xlabel(f"onnxruntime ms per {_cost_inputs(rows[0]['spatial_dims'])['ort_words']}")
    ax.set_ylabel("Dice")
    fig.tight_layout()
    fig.savefig(root / "dice_vs_ms.png", dpi=110)
    plt.close(fig)
