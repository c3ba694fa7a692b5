"""The runs of a bench: reuse a finished run, resume an unfinished one, refuse one made with other
settings (its ``config.yaml``) or another method (its ``method.json``), train students in parallel."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config import RunConfig
from ..io.atomic import write_text_atomic


def _finished(run: Path) -> Optional[bool]:
    from ..train.events import read_events

    ev = run / "events.jsonl"
    if not ev.exists():
        return None
    ends = [e for e in read_events(ev) if e["event"] == "end"]
    return bool(ends) and ends[-1].get("status") == "finished"


#: settings that change how fast a run goes, not what it learns; a finished run is reused across them
#: (``distill.teacher_backend``: a converted teacher is used only after it agrees with the torch teacher
#: on real batches, ``teachers/backend.py``, and each run's events say which backend ran)
_SPEED_ONLY = {("train", "threads"), ("train", "device"), ("train", "log_every"), ("distill", "teacher_backend")}


def _config_differences(saved: RunConfig, wanted: RunConfig) -> List[str]:
    """Settings in which a run differs from what the suite asks for; a run trained without a teacher
    (a teacher, the student alone) is not compared on the distillation settings it never used."""
    a, b = saved.to_dict(), wanted.to_dict()
    alone = (wanted.distill.method or "none") == "none" and not wanted.distill.terms
    return [f"{sec}.{k}: run has {a[sec].get(k)!r}, suite wants {b[sec][k]!r}"
            for sec in b for k in b[sec] if (sec, k) not in _SPEED_ONLY and a[sec].get(k) != b[sec][k]
            and not (alone and sec == "distill")]


def _method_terms(method: str, terms: Optional[List[Dict[str, Any]]] = None) -> List[Any]:
    """The term list a run stands for now, in JSON form (to compare with a run's record): its
    ``distill.terms`` when it has them, else its method preset's."""
    from ..distill import methods as _registers_presets  # noqa: F401
    from ..registry import METHODS

    return json.loads(json.dumps(terms if terms else METHODS.meta(method).get("terms", [])))


def _check_method_record(run: Path, method: str, terms: Optional[List[Dict[str, Any]]] = None) -> None:
    """``method.json`` in a student run records the terms its method preset (or its ``distill.terms``)
    had when it was trained, so a run whose preset has changed in the code since (other terms or
    weights) is not silently reused or resumed. Runs from before the record existed get one."""
    record = run / "method.json"
    terms = _method_terms(method, terms)
    if record.exists():
        had = json.loads(record.read_text(encoding="utf-8"))
        if had.get("method") != method or had.get("terms") != terms:
            raise RuntimeError(f"{run} was trained with method {had.get('method')!r} = {had.get('terms')}, but "
                               f"{method!r} is now {terms}; use another --results folder or remove that run")
        return
    write_text_atomic(record, json.dumps({"method": method, "terms": terms}))


def _ensure_run(run: Path, cfg: RunConfig, log, method: Optional[str] = None) -> None:
    """Reuse, resume or train ``run`` as ``cfg`` says (its task comes from ``cfg.distill``)."""
    from ..config import load_config
    from ..train.engine import run_training

    state = _finished(run)
    if state is not None and (run / "config.yaml").exists():
        diff = _config_differences(load_config(run / "config.yaml"), cfg)
        if diff:
            raise RuntimeError(f"{run} was made with other settings than this suite asks for "
                               f"({'; '.join(diff[:4])}); use another --results folder or remove that run")
    if method is not None and state is not None:
        _check_method_record(run, method, cfg.distill.terms)
    if state:
        log(f"   reuse {run.name}")
        return
    resume = state is False and (run / "config.yaml").exists()
    log(f"   {'resume' if resume else 'train'} {run.name}")
    res = run_training(cfg, run, resume=resume)
    if method is not None:
        _check_method_record(run, method, cfg.distill.terms)
    if res["status"] != "finished":
        raise RuntimeError(f"{run} ended with status {res['status']}")


def _student_job(run: str, cfg_dict: Dict[str, Any], method: str) -> str:
    """Train (or resume, or reuse) one student run; module-level so a process pool can call it."""
    _ensure_run(Path(run), RunConfig.from_dict(cfg_dict), lambda m: print(m, flush=True), method=method)
    return run


def _train_students(jobs_list, jobs: int, log) -> None:
    """Train every (run, cfg, method); with ``jobs`` > 1 that many at once, each on its share of the
    CPU threads (two 1-thread runs of a tiny student get through ~1.3-1.5x more work than one 2-thread
    run on 2 cores). A failed run does not stop the others; the first failure is raised at the end."""
    if jobs <= 1:
        for run, cfg, method in jobs_list:
            _student_job(str(run), cfg.to_dict(), method)
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
            futs[pool.submit(_student_job, str(run), d, method)] = run
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
