"""The bench's outputs: ``results.csv``, the ``results.md`` table and the plots, and the comparison
columns against the student alone (issue 17: no ratio without headroom, a difference only with its
sd and significance). ``python -m napari_medkd.workflows.bench_table DIR...`` re-renders the table of
a results folder from its ``results.csv`` (no training, no evaluation)."""
from __future__ import annotations

import csv
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..io.atomic import write_text_atomic

#: input sizes of the cost columns: MACs of one forward pass, onnxruntime time of one input
COST_SHAPES = {2: {"macs": (256, 256), "ort": (512, 512)}, 3: {"macs": (64, 64, 64), "ort": (64, 64, 64)}}
#: the smallest teacher − alone difference a "gap closed" ratio is shown for (with 2x the pooled sd)
MIN_HEADROOM = 0.03   # issue 12: a suite whose teacher leads the student alone by less is not a KD result
PLATEAU_GAIN = 0.01   # the student alone is still learning when its late validation gain exceeds this
NO_HEADROOM = "no headroom: the teacher is not better than the student alone"


def _cost_inputs(dims: int) -> Dict[str, str]:
    """Names of the cost columns' inputs for ``dims``-D networks: table labels and plain words."""
    macs, ort = COST_SHAPES[dims]["macs"], COST_SHAPES[dims]["ort"]
    power = "²" if dims == 2 else "³"
    return {"macs": f"{macs[0]}{power}", "ort": f"{ort[0]}{power}",
            "ort_words": "×".join(map(str, ort)) + (" slice" if dims == 2 else " volume")}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def pooled_sd(rows: List[Dict[str, Any]], key: str) -> float:
    """The pooled seed sd of column ``key`` over ``rows`` (root of the mean variance of the rows with
    one; 0 when none has one, e.g. one-seed rows)."""
    sds = [r.get(f"{key}_sd") for r in rows]
    sds = [float(s) for s in sds if _finite(s)]
    return float(math.sqrt(np.mean(np.square(sds)))) if sds else 0.0


def _gap(rows: List[Dict[str, Any]]) -> None:
    """Per Dice column, against the student alone: ``delta_*`` (row − alone, with the sd of that
    difference in ``delta_*_sd``; ``delta_*_sig`` when |Δ| exceeds twice the seed sd pooled over the row
    and the student alone) and ``gap_closed_*`` = Δ / (teacher − alone), NaN with ``headroom_*`` False
    when the teacher is less than max(2 pooled sd of teacher and alone, 0.01) above the student alone."""
    t = next(r for r in rows if r["method"] == "teacher")
    s = next((r for r in rows if r["method"] == "none"), None)
    for key in [k for k in t if k.startswith("dice_") and not k.endswith("_sd")]:
        tag = key[5:]
        head = t[key] - s[key] if s is not None else math.nan
        ok = _finite(head) and head >= max(2 * pooled_sd([t, s], key), MIN_HEADROOM)
        if tag == "in" and s is not None and _finite(t.get("val_dice")) and _finite(s.get("val_dice")):
            ok = ok and t["val_dice"] - s["val_dice"] >= MIN_HEADROOM  # headroom on validation, too
        for r in rows:
            r[f"headroom_{tag}"] = bool(ok)
            if s is None:
                r[f"delta_{tag}"], r[f"delta_{tag}_sd"], r[f"delta_{tag}_sig"] = math.nan, math.nan, False
            else:
                d = r[key] - s[key]
                sds = [float(x) for x in (r.get(f"{key}_sd"), s.get(f"{key}_sd")) if _finite(x)]
                r[f"delta_{tag}"] = d
                r[f"delta_{tag}_sd"] = math.sqrt(sum(x * x for x in sds)) if sds else math.nan
                r[f"delta_{tag}_sig"] = bool(_finite(d) and abs(d) > 2 * pooled_sd([r, s], key))
            r[f"gap_closed_{tag}"] = r[f"delta_{tag}"] / head if ok else math.nan


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


def _delta_cell(r: Dict[str, Any], tag: str = "in") -> str:
    if r["method"] == "none":
        return "–"
    cell = _fmt(r.get(f"delta_{tag}"), r.get(f"delta_{tag}_sd"))
    return cell + ("*" if r.get(f"delta_{tag}_sig") and cell != "–" else "")


def _gap_cell(r: Dict[str, Any], tag: str = "in") -> str:
    return _fmt(r.get(f"gap_closed_{tag}"), nd=2) if r.get(f"headroom_{tag}") else "– ¹"


def teacher_warning(rows: List[Dict[str, Any]], tag: str = "in") -> Optional[str]:
    """A warning line when a row scores a higher Dice than the teacher."""
    t = next(r for r in rows if r["method"] == "teacher")
    best = max(rows, key=lambda r: r[f"dice_{tag}"] if _finite(r[f"dice_{tag}"]) else -math.inf)
    if best is t or not _finite(best[f"dice_{tag}"]) or best[f"dice_{tag}"] <= t[f"dice_{tag}"]:
        return None
    return (f"**Warning: the teacher is not the best row** ({tag} Dice {_fmt(t[f'dice_{tag}'])}; "
            f"{best['row']}: {_fmt(best[f'dice_{tag}'])}).")


def render_table(rows: List[Dict[str, Any]], tags: Sequence[str], fsd_tags: Sequence[str]) -> List[str]:
    """The markdown table (with its warning line, when due) and its footnotes, one string per line."""
    inputs = _cost_inputs(int(rows[0]["spatial_dims"]))
    head = ["model"] + [f"Dice {t}" for t in tags] + ["best val Dice"] + [f"HD95 {t}" for t in tags] + \
        ["params", f"GMACs@{inputs['macs']}", f"ORT ms/{inputs['ort']}", "train s/run", "Δ vs alone (in)",
         "gap closed (in)"] + [f"FSD in vs {t}" for t in fsd_tags]
    warning = teacher_warning(rows)
    lines = ([warning, ""] if warning else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["row"]] + [_fmt(r[f"dice_{t}"], r[f"dice_{t}_sd"]) for t in tags] + \
            [_fmt(r.get("val_dice"), r.get("val_dice_sd"))] + [_fmt(r[f"hd95_{t}"], r[f"hd95_{t}_sd"], 2) for t in tags] + \
            [f"{int(r['params']):,}", f"{r['gmacs']:.3f}", _fmt(r["ort_ms"], nd=1), _fmt(r["train_s_per_run"], nd=0),
             _delta_cell(r), _gap_cell(r)] + [_fmt(r[f"fsd_{t}"], r[f"fsd_{t}_sd"], 2) for t in fsd_tags]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Dice/HD95: mean ± sd over seeds of the per-case mean over foreground classes, on the test split. "
              "Best val Dice: each run's best validation Dice (what settings are tuned on; the test columns never are). "
              f"ORT ms: median onnxruntime CPU time of one {inputs['ort_words']} through that architecture. "
              "Δ vs alone: distilled − alone, in-domain Dice (sd of the difference); * where |Δ| exceeds twice the "
              "seed sd pooled over that row and the student alone. Gap closed: (distilled − alone) / (teacher − "
              f"alone), in-domain Dice, shown only when teacher − alone is at least twice the pooled seed sd and at "
              f"least {MIN_HEADROOM}."]
    if not rows[0].get("headroom_in"):
        lines += ["", f"¹ {NO_HEADROOM}."]
    lines += _headroom_lines(rows)
    return lines


def _headroom_lines(rows) -> List[str]:
    """Headroom on validation (teacher − student alone, best validation Dice) and whether the student
    alone had reached its plateau (its late validation gain)."""
    t = next(r for r in rows if r["method"] == "teacher")
    s = next((r for r in rows if r["method"] == "none"), None)
    if s is None or not _finite(t.get("val_dice")) or not _finite(s.get("val_dice")):
        return []
    out = ["", f"Headroom on validation: teacher {t['val_dice']:.3f} − student alone {_fmt(s['val_dice'], s.get('val_dice_sd'))}"
               f" = {t['val_dice'] - s['val_dice']:+.3f} Dice (a KD result needs at least {MIN_HEADROOM})."]
    gain = s.get("val_late_gain")
    if _finite(gain) and gain > PLATEAU_GAIN:
        out.append(f"**The student alone had not reached its plateau**: its best validation Dice rose by {gain:.3f} "
                   "in the second half of its run; give the students more iterations.")
    return out


def _training_devices(run_dirs) -> str:
    """Where the runs were trained, from their event logs' ``start`` events (one per session, so a run
    trained on a GPU and finished on a CPU after a resume counts on both): "cuda:0 (NVIDIA H200, 140 GiB):
    35 sessions; cpu (2 threads): 2 sessions". The table is made where ``medkd bench`` runs, which need
    not be where the runs were trained."""
    import collections
    import json

    seen = collections.Counter()
    for run in run_dirs:
        ev = Path(run) / "events.jsonl"
        if not ev.exists():
            continue
        for line in ev.read_text(encoding="utf-8").splitlines():
            if '"event": "start"' in line:
                try:
                    seen[str(json.loads(line).get("device", "?"))] += 1
                except ValueError:
                    continue
    return "; ".join(f"{d}: {n} session{'s' if n > 1 else ''}" for d, n in seen.most_common())


def _compute_line(rows, suite, preset: str, seconds: float, jobs: int, devices: str = "") -> str:
    teacher_min = sum(r["train_s_per_run"] for r in rows if r["method"] == "teacher") / 60
    student_min = sum(r["train_s_per_run"] * r["seeds"] for r in rows if r["method"] != "teacher") / 60
    train_min = teacher_min + student_min
    train_wall = teacher_min + student_min / max(1, jobs)
    eval_min = sum(r["eval_s"] for r in rows if math.isfinite(r["eval_s"])) / 60
    return (f"Suite `{suite.name}` preset `{preset}`, data `{Path(suite.data).name}`, student `{suite.student}`, "
            f"seeds {suite.seeds}; machine: {platform.machine()}, {os.cpu_count()} CPU cores{_gpu_name()}, "
            f"{time.strftime('%Y-%m-%d')}. " + (f"Trained on {devices}. " if devices else "") + f"Compute: training {train_min:.0f} run-minutes (teacher {teacher_min:.0f}, "
            f"students {(train_min - teacher_min):.0f} in {jobs} parallel job(s), so about {train_wall:.0f} min wall) "
            f"+ evaluation {eval_min:.0f} min; this call took {seconds / 60:.0f} min. "
            f"Command: `medkd bench --suite {suite.name} --preset {preset}`")


def _write_csv(rows, path: Path) -> None:
    keys = list(rows[0].keys())
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def write_outputs(rows, root: Path, suite, preset: str, domains, seconds: float, jobs: int = 1,
                  teacher_run: Optional[Path] = None) -> Path:
    _write_csv(rows, root / "results.csv")
    devices = _training_devices(sorted((root / "runs").glob("*")) + ([teacher_run] if teacher_run else []))
    tags = [t for t, _ in domains]
    fsd_tags = [t for t in tags[1:] if f"fsd_{t}" in rows[0]]
    lines = [_compute_line(rows, suite, preset, seconds, jobs, devices), ""] + render_table(rows, tags, fsd_tags)
    md = root / "results.md"
    write_text_atomic(md, "\n".join(lines) + "\n")
    _plots(rows, root, tags)
    return md


def _parse(v: str) -> Any:
    if v in ("True", "False"):
        return v == "True"
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def rerender(folder: Path) -> Path:
    """Rebuild ``results.md`` (and the derived columns of ``results.csv``) of a results folder from its
    ``results.csv``, keeping the first paragraph (suite, machine, compute) of the old ``results.md``."""
    folder = Path(folder)
    with open(folder / "results.csv", newline="", encoding="utf-8") as fh:
        rows = [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    tags = [k[5:] for k in rows[0] if k.startswith("dice_") and not k.endswith("_sd")]
    fsd_tags = [t for t in tags[1:] if f"fsd_{t}" in rows[0]]
    _gap(rows)
    _write_csv(rows, folder / "results.csv")
    old = (folder / "results.md").read_text(encoding="utf-8") if (folder / "results.md").exists() else ""
    first = old.split("\n\n", 1)[0].strip() if old.strip() else f"Re-rendered from `{folder.name}/results.csv`."
    write_text_atomic(folder / "results.md", "\n".join([first, ""] + render_table(rows, tags, fsd_tags)) + "\n")
    return folder / "results.md"


def _plots(rows, root: Path, tags: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.8), 4))
    x = np.arange(len(rows))
    width = 0.8 / len(tags)
    for i, t in enumerate(tags):
        ax.bar(x + i * width, [r[f"dice_{t}"] for r in rows], width,
               yerr=[0 if not math.isfinite(r[f"dice_{t}_sd"]) else r[f"dice_{t}_sd"] for r in rows], label=t,
               capsize=3)
    ax.set_xticks(x + width * (len(tags) - 1) / 2, [r["row"] for r in rows], rotation=35, ha="right")
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
    ax.set_xlabel(f"onnxruntime ms per {_cost_inputs(int(rows[0]['spatial_dims']))['ort_words']}")
    ax.set_ylabel("Dice")
    fig.tight_layout()
    fig.savefig(root / "dice_vs_ms.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["."]:
        print(rerender(Path(arg)))
