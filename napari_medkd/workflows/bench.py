"""``medkd bench``: a whole comparison from a YAML suite, resumable, with a table, CSV and plots.

A suite names a data set, a teacher, a student, the methods, seeds and budgets (one preset per
machine kind). Every run lives in ``RESULTS/<suite>/<preset>/runs/<name>``; a finished run (its
event log ends with status ``finished``) is reused, an unfinished one is resumed, so a stopped
bench continues where it stopped. Evaluations are cached next to each run.

Each run's ``RunConfig`` is built once, here, from the suite: ``data_options``, the preset's
``train`` (the teacher's own budget replaces the students'), and for distilled students any
``distill:`` keys of the suite, of the preset or of a method entry (``{name: LABEL, distill: {...}}``),
e.g. ``distill.terms``. ``bench_runs`` trains them; ``bench_table`` writes the outputs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import yaml

from ..config import ConfigError, DistillConfig, RunConfig
from ..io.atomic import write_text_atomic
from .bench_runs import _ensure_run, _finished, _run_seconds, _train_students  # noqa: F401 - used by tests
from .bench_table import COST_SHAPES, _gap, write_outputs


def _method_entries(entries) -> tuple:
    """Row names, per-row ``distill`` keys and per-row method presets of a suite's ``methods``: plain
    preset names, or ``{name: ROW, method: PRESET, distill: {...}}`` (``method`` defaults to ``name``), so
    one preset can appear in several rows with other settings (e.g. ``pseudo_label_nowarm``)."""
    names, distill, presets = [], {}, {}
    for e in entries:
        if isinstance(e, dict):
            name = str(e["name"])
            names.append(name)
            distill[name] = dict(e.get("distill") or {})
            presets[name] = str(e.get("method") or name)
        else:
            names.append(str(e))
    return names, distill, presets


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
    distill: Dict[str, Any] = field(default_factory=dict)
    method_distill: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    method_preset: Dict[str, str] = field(default_factory=dict)  # row name -> method preset, where they differ
    student_data: Dict[str, Any] = field(default_factory=dict)   # data options of the students only
    student_kwargs: Dict[str, Any] = field(default_factory=dict)  # the student's model options (width ...)

    @classmethod
    def load(cls, path: Path, preset: str) -> "Suite":
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        presets = raw.get("presets", {})
        if preset not in presets:
            raise KeyError(f"{path}: no preset '{preset}'; it has {sorted(presets)}")
        p = presets[preset]
        base = Path(path).resolve().parent
        resolve = lambda d: str((base / d).resolve()) if not Path(d).is_absolute() else d  # noqa: E731
        methods, method_distill, method_preset = _method_entries(p.get("methods", raw["methods"]))
        return cls(name=raw["name"], data=resolve(raw["data"]), teacher=dict(raw["teacher"], **p.get("teacher", {})),
                   student=raw["student"], methods=methods,
                   seeds=list(p.get("seeds", raw.get("seeds", [0, 1, 2]))), train=dict(p.get("train", {})),
                   data_options=dict(raw.get("data_options", {}), **p.get("data_options", {})),
                   cross_domain=[resolve(d) for d in raw.get("cross_domain", [])],
                   stage_iterations=dict(p.get("stage_iterations", {})),
                   fsd_tile=int(p.get("fsd_tile", raw.get("fsd_tile", 96))), jobs=int(p.get("jobs", 1)),
                   distill=dict(raw.get("distill") or {}, **(p.get("distill") or {})), method_distill=method_distill,
                   method_preset=method_preset,
                   student_data=_resolve_paths(dict(raw.get("student_data") or {}, **(p.get("student_data") or {})),
                                               resolve),
                   student_kwargs=dict(raw.get("student_kwargs") or {}))

    def teacher_run(self, results: Path, preset: str, runs: Path) -> Path:
        """Where the suite's teacher lives: ``teacher.run`` (a finished run folder, used as it is), else
        ``RESULTS/teachers/<preset>/<teacher.name>`` shared by every suite naming it (trained once; a suite
        asking for other settings is refused), else the suite's own ``runs/teacher``."""
        if self.teacher.get("run"):
            return Path(self.teacher["run"])
        if self.teacher.get("name"):
            return Path(results) / "teachers" / preset / str(self.teacher["name"])
        return runs / "teacher"


def _resolve_paths(options: Dict[str, Any], resolve) -> Dict[str, Any]:
    """Folder options (``unlabelled_root``) relative to the suite file, as ``data`` is."""
    return {k: (resolve(v) if k in ("unlabelled_root", "root") and v else v) for k, v in options.items()}


BUDGET_KEYS = {"iterations", "epochs", "minutes"}
_DISTILL_KEYS = {f.name for f in dataclasses.fields(DistillConfig)}


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


def _student_config(suite: Suite, row: str, seed: int, teacher_run: Path) -> RunConfig:
    """A student run's config for the suite row ``row``: the student alone for ``none``, else distilled
    from ``teacher_run`` with the row's method preset, the suite's stage lengths and any ``distill`` keys
    of the suite or the row's entry."""
    cfg = _config(suite, suite.student, seed, {})
    for k, v in suite.student_data.items():
        setattr(cfg.data, k, v)
    cfg.model.kwargs = dict(suite.student_kwargs)
    cfg.distill.teacher = str(teacher_run)
    method = suite.method_preset.get(row, row)
    cfg.distill.method = method
    cfg.distill.stage_iterations = dict(suite.stage_iterations)
    if method == "none":
        return cfg
    extra = {**suite.distill, **suite.method_distill.get(row, {})}
    bad = set(extra) - _DISTILL_KEYS
    if bad:
        raise ConfigError(f"suite {suite.name}: unknown distill key(s) {sorted(bad)}; allowed: {sorted(_DISTILL_KEYS)}")
    for k, v in extra.items():
        setattr(cfg.distill, k, v)
    return cfg


def _teacher_config(suite: Suite, log) -> RunConfig:
    """The teacher's config; a budget in minutes only is warned about (issue 17): how far a teacher gets
    in N minutes depends on the machine, so the comparison would not be reproducible."""
    cfg = _config(suite, suite.teacher["model"], 0,
                  {k: v for k, v in suite.teacher.items() if k not in ("model", "name", "run")})
    if cfg.train.minutes and not (cfg.train.iterations or cfg.train.epochs):
        log(f"   WARNING: the teacher's budget is {cfg.train.minutes:g} minutes only; give it iterations "
            "(teacher: {iterations: N}) so the teacher is the same on every machine")
    return cfg


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


def _record(label: str, method: str, run_list: List[Path], domains, ort_ms: Dict[str, float], log) -> Dict[str, Any]:
    """One table row: costs, mean ± sd over the runs of Dice and HD95 per domain, training seconds."""
    from ..train.run_model import load_run_model
    from ..models.cost import count_macs, count_parameters

    lm = load_run_model(run_list[0])
    params = count_parameters(lm.model)
    dims = getattr(lm.model, "spatial_dims", 2)
    shapes = COST_SHAPES[dims]
    macs = count_macs(lm.model, (1, lm.card.in_channels, *shapes["macs"]))
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
    arch = lm.card.model_name or label
    if arch not in ort_ms:  # one measurement per architecture: every student row has the same network
        ort_ms[arch] = _ort_ms(run_list[0], log, shapes["ort"])
    row["ort_ms"] = ort_ms[arch]
    vals = [_best_val(r) for r in run_list]
    row["val_dice"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
    row["val_dice_sd"] = float(np.nanstd(vals)) if len(vals) > 1 else math.nan
    gains = [g for g in (_late_gain(r) for r in run_list) if math.isfinite(g)]
    row["val_late_gain"] = float(np.mean(gains)) if gains else math.nan
    row["train_s_per_run"] = float(np.mean([_run_seconds(r) for r in run_list]))
    row["eval_s"] = float(eval_s)
    row["_runs"] = run_list
    return row


def _val_curve(run: Path) -> List[tuple]:
    import csv

    path = run / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [(int(r["iter"]), float(r["dice_mean"])) for r in csv.DictReader(fh) if r["dice_mean"] not in ("", "nan")]


def _best_val(run: Path) -> float:
    """The best validation Dice of a run (its ``metrics.csv``), NaN without one."""
    curve = _val_curve(run)
    return max(d for _, d in curve) if curve else math.nan


def _late_gain(run: Path) -> float:
    """Best validation Dice of the second half of a run minus that of the first half: near 0 once the run
    has reached its plateau (how the suites check the student alone is trained long enough)."""
    curve = _val_curve(run)
    if len(curve) < 2:
        return math.nan
    half = curve[-1][0] / 2
    early = [d for i, d in curve if i <= half] or [curve[0][1]]
    late = [d for i, d in curve if i > half]
    return max(late) - max(early) if late else math.nan


def run_bench(suite_path: Path, preset: str, results: Path, log: Callable[[str], None] = print,
              methods: Optional[List[str]] = None, jobs: Optional[int] = None) -> Path:
    """Run (or resume) a suite; ``methods`` limits this call to some of the suite's methods; ``jobs``
    student runs train at once (default: the preset's ``jobs``, else 1)."""
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
    teacher_run = suite.teacher_run(Path(results), preset, runs)
    if suite.teacher.get("run"):
        if not _finished(teacher_run):
            raise RuntimeError(f"suite {suite.name}: teacher.run {teacher_run} is not a finished run folder")
        log(f"   teacher: {teacher_run} (given, never retrained)")
    else:
        teacher_run.parent.mkdir(parents=True, exist_ok=True)
        _ensure_run(teacher_run, _teacher_config(suite, log), log)
    domains = [("in", suite.data)] + [(Path(d).name, d) for d in suite.cross_domain]
    plan = []
    for method in suite.methods:
        cfgs = [(runs / f"{method}_s{seed}", _student_config(suite, method, seed, teacher_run)) for seed in suite.seeds]
        plan.append((method, [(r, c, c.distill.method) for r, c in cfgs]))
    _train_students([j for _, rl in plan for j in rl], jobs or suite.jobs, log)
    tkw = ", ".join(f"{k} {v}" for k, v in (suite.teacher.get("model_kwargs") or {}).items())
    ort_ms: Dict[str, float] = {}
    rows = [_record(f"teacher ({suite.teacher['model']}{', ' + tkw if tkw else ''})", "teacher", [teacher_run],
                    domains, ort_ms, log)]
    for method, run_list in plan:
        rows.append(_record("student alone" if method == "none" else f"student + {method}", method,
                            [r for r, _, _ in run_list], domains, ort_ms, log))
    _gap(rows)
    _fsd_columns(rows, suite, domains, runs, log)
    for r in rows:
        r.pop("_runs", None)
    out = write_outputs(rows, root, suite, preset, domains, time.time() - t_start, jobs or suite.jobs,
                        teacher_run=teacher_run)
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
