#!/usr/bin/env bash
# Issue-2 measurement: the default teacher (unet) and the tiny student, each trained alone for
# 10 minutes on DRIVE with `medkd train`, evaluated with `medkd evaluate` on DRIVE's 20 test images
# (Dice inside the FOV) and on CHASE_DB1's 8 test images (cross-domain). (The bench's CPU preset
# trains its own, half-width teacher; this is the full-size one.)
set -euo pipefail
cd "$(dirname "$0")/.."
MEDKD=${MEDKD:-.venv/bin/medkd}
DATA=../shared/data
R=results/supervised
OUT=results/supervised
mkdir -p "$OUT"
[ -f "$R/teacher/best.pt" ] || $MEDKD train --data $DATA/DRIVE --model unet --minutes 10 --out $R/teacher
[ -f "$OUT/tiny/best.pt" ] || $MEDKD train --data $DATA/DRIVE --model unet_tiny --minutes 10 --out $OUT/tiny
for m in "$R/teacher:teacher" "$OUT/tiny:tiny"; do
  run=${m%%:*}; name=${m##*:}
  $MEDKD evaluate --model "$run" --data $DATA/DRIVE --split test --out "$OUT/eval_${name}_drive" | tee "$OUT/eval_${name}_drive.txt"
  $MEDKD evaluate --model "$run" --data $DATA/CHASE_DB1 --split test --out "$OUT/eval_${name}_chase" | tee "$OUT/eval_${name}_chase.txt"
done
# One Markdown table from the four summaries (pasted into the README by scripts/update_readme.py).
.venv/bin/python - "$OUT" <<'PY'
import json, sys, time, platform
from pathlib import Path
out = Path(sys.argv[1])
rows = []
for name, run in (("teacher (unet)", "results/drive/cpu/runs/teacher"), ("tiny student (unet_tiny)", f"{out}/tiny")):
    ev = [e for e in json.loads((Path(run) / "events.jsonl").read_text().splitlines()[-1:][0]).items()]
    end = dict(ev)
    cells = [name, f"{end.get('iter', '?')}", f"{end.get('elapsed', float('nan')) / 60:.1f}"]
    for tag in ("drive", "chase"):
        tail = "teacher" if name.startswith("teacher") else "tiny"
        s = json.loads((out / f"eval_{tail}_{tag}" / "summary.json").read_text())["summary"]
        cells += [f"{s['dice_1']['mean']:.4f} ± {s['dice_1']['std']:.4f}", f"{s['hd95_1']['mean']:.2f}"]
    rows.append("| " + " | ".join(cells) + " |")
md = [f"`benchmarks/drive_supervised.sh` on {platform.machine()}, 2 CPU cores, {time.strftime('%Y-%m-%d')}: "
      "`medkd train --minutes 10` on DRIVE's 20 training images (16 train / 4 validation), "
      "`medkd evaluate` on DRIVE's 20 test images and CHASE_DB1's 8 test images (Dice and HD95 in pixels, "
      "inside the FOV; mean ± sd over images).", "",
      "| model | iterations | training min | Dice DRIVE test | HD95 DRIVE | Dice CHASE_DB1 test | HD95 CHASE |",
      "|---|---|---|---|---|---|---|"] + rows
Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
Path("benchmarks/results/supervised_drive.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
PY
