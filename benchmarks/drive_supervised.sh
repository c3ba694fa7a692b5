#!/usr/bin/env bash
# Issue-2 measurement: the default teacher (unet) and the tiny student, each trained alone for
# 10 minutes on DRIVE with `medkd train`, evaluated with `medkd evaluate` on DRIVE's 20 test images
# (Dice inside the FOV) and on CHASE_DB1's 8 test images (cross-domain). The teacher run goes where
# `medkd bench --suite drive --preset cpu` looks for it, so the bench reuses it (same config).
set -euo pipefail
cd "$(dirname "$0")/.."
MEDKD=${MEDKD:-.venv/bin/medkd}
DATA=../shared/data
R=results/drive/cpu/runs
OUT=results/supervised
mkdir -p "$OUT"
[ -f "$R/teacher/best.pt" ] || $MEDKD train --data $DATA/DRIVE --model unet --minutes 10 --out $R/teacher
[ -f "$OUT/tiny/best.pt" ] || $MEDKD train --data $DATA/DRIVE --model unet_tiny --minutes 10 --out $OUT/tiny
for m in "$R/teacher:teacher" "$OUT/tiny:tiny"; do
  run=${m%%:*}; name=${m##*:}
  $MEDKD evaluate --model "$run" --data $DATA/DRIVE --split test --out "$OUT/eval_${name}_drive" | tee "$OUT/eval_${name}_drive.txt"
  $MEDKD evaluate --model "$run" --data $DATA/CHASE_DB1 --split test --out "$OUT/eval_${name}_chase" | tee "$OUT/eval_${name}_chase.txt"
done
