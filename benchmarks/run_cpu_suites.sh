#!/usr/bin/env bash
# Every benchmark suite's CPU preset, one after the other (each < 1 h on 2 cores), then the README
# tables refreshed from what they wrote. Resumable: run it again after a stop and finished runs are
# reused. Usage: bash benchmarks/run_cpu_suites.sh [SUITE ...]   (default: all suites)
set -euo pipefail
cd "$(dirname "$0")/.."
MEDKD=${MEDKD:-.venv/bin/medkd}
PY=${PY:-.venv/bin/python}
SUITES=("$@")
[ ${#SUITES[@]} -gt 0 ] || SUITES=(drive chase hippocampus kvasir drive_semi hippocampus3d)
for s in "${SUITES[@]}"; do
  start=$(date +%s)
  if $MEDKD bench --suite "$s" --preset cpu; then
    echo "suite $s: $(( ($(date +%s) - start) / 60 )) min wall"
  else
    echo "suite $s FAILED after $(( ($(date +%s) - start) / 60 )) min" >&2; failed=1
  fi
done
$PY scripts/update_readme.py
exit ${failed:-0}
