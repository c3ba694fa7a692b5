"""Validation curves and calibrated term weights of a bench suite's runs, as markdown.

For every row of a suite (runs ``RESULTS/<suite>/<preset>/runs/<row>_s<seed>``) it prints the mean over
seeds of the validation Dice at each validation iteration (each run's ``metrics.csv``) and, for
distilled rows, each term's calibrated weight and its gradient ratio to the segmentation gradient
before calibration (the ``balance`` event of ``events.jsonl``). This is the evidence the README gives
for why a method helps or not: when its curve leaves the student alone's, and how hard each term pulls.

    python benchmarks/val_curves.py results/hippocampus_scarce/cpu --out benchmarks/results/hippocampus_scarce_cpu/curves.md
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_groups(runs: Path) -> Dict[str, List[Path]]:
    """Finished-or-not run folders grouped by row name (``<row>_s<seed>``), in folder order."""
    groups: Dict[str, List[Path]] = defaultdict(list)
    for run in sorted(p for p in runs.iterdir() if p.is_dir()):
        m = re.fullmatch(r"(?P<row>.+)_s(?P<seed>\d+)", run.name)
        if m and (run / "metrics.csv").exists():
            groups[m.group("row")].append(run)
    return dict(sorted(groups.items(), key=lambda kv: kv[0] != "none"))  # the student alone first


def curve(run: Path) -> Dict[int, float]:
    with open(run / "metrics.csv", newline="", encoding="utf-8") as fh:
        return {int(r["iter"]): float(r["dice_mean"]) for r in csv.DictReader(fh) if r["dice_mean"] not in ("", "nan")}


def balance(run: Path) -> Dict[str, Dict[str, float]]:
    from napari_medkd.train.events import read_events

    events = [e for e in read_events(run / "events.jsonl") if e["event"] == "balance"]
    return events[-1]["terms"] if events else {}


def curves_table(groups: Dict[str, List[Path]]) -> List[str]:
    iters = sorted({i for runs in groups.values() for r in runs for i in curve(r)})
    lines = ["| row | seeds | " + " | ".join(f"it {i}" for i in iters) + " |", "|---|---|" + "---|" * len(iters)]
    for row, runs in groups.items():
        cs = [curve(r) for r in runs]
        cells = []
        for i in iters:
            vals = [c[i] for c in cs if i in c]
            cells.append(f"{sum(vals) / len(vals):.3f}" if len(vals) == len(cs) else "–")
        lines.append(f"| {row} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def balance_table(groups: Dict[str, List[Path]]) -> List[str]:
    lines = ["| row | term | ratio before (preset weight) | cos to seg | calibrated weight | ratio after |",
             "|---|---|---|---|---|---|"]
    for row, runs in groups.items():
        terms: Dict[str, List[Dict[str, float]]] = defaultdict(list)
        for r in runs:
            for name, t in balance(r).items():
                terms[name].append(t)
        for name, ts in terms.items():
            mean = lambda k: sum(t[k] for t in ts) / len(ts)  # noqa: E731
            lines.append(f"| {row} | {name} | {mean('ratio_before'):.3g} ({ts[0]['preset_weight']:g}) | "
                         f"{mean('cos_seg'):+.2f} | {mean('weight'):.3g} | {mean('ratio_after'):.2f} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="RESULTS/<suite>/<preset>")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    groups = run_groups(a.folder / "runs")
    if not groups:
        print(f"{a.folder}/runs: no runs with metrics.csv", file=sys.stderr)
        return 1
    text = "\n".join([f"Validation Dice (mean over seeds) of `{a.folder}` by iteration; `benchmarks/val_curves.py`.", ""]
                     + curves_table(groups) + ["", "Loss balancing of each distilled row (mean over seeds; "
                                                   "`balance` events of `events.jsonl`):", ""]
                     + balance_table(groups)) + "\n"
    if a.out:
        from napari_medkd.io.atomic import write_text_atomic

        a.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(a.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
