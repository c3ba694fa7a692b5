#!/usr/bin/env bash
# One GPU lease (15 device minutes on an H200, run through the device tool): the `gpu` preset of the
# label-scarce and capacity-limited Hippocampus suites, sharing one teacher trained first. Everything
# the command needs travels in .gpu/ (git-ignored): SimpleITK unpacked and xz-packed (its wheel alone
# is 53 MB of the 64 MB a lease carries), the MONAI wheel, and a copy of ../shared/data/Hippocampus.
# The repository and the data are placed at the same absolute paths as on the development machine,
# so the run folders that come back are reused there as they are (`medkd bench` compares configs).
# What comes back in $OUT: this log and results packed by benchmarks/pack_runs.py (xz, 15 MB parts).
#   prepare here:  bash benchmarks/gpu_lease.sh --prepare
#   on the device: bash benchmarks/gpu_lease.sh            (DEADLINE seconds for the benches, default 500)
#   back here:     cat PARTS | xz -d | tar -x -C /work/main   (then `medkd bench --preset gpu` makes the tables)
set -u
if [ "${1:-}" = "--prepare" ]; then
  set -e
  mkdir -p .gpu && grep -qx "/.gpu/" .git/info/exclude || echo "/.gpu/" >> .git/info/exclude
  py=.venv/bin/python
  [ -f .gpu/sitk.tar.xz ] || { $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux2014_x86_64 -d .gpu/whl simpleitk==2.5.7 monai==1.6.1
    d=$(mktemp -d); (cd "$d" && unzip -q "$OLDPWD"/.gpu/whl/simpleitk-*.whl && tar -cf - SimpleITK | xz -6 -T2 > "$OLDPWD"/.gpu/sitk.tar.xz)
    mv .gpu/whl/monai-*.whl .gpu/ && rm -rf .gpu/whl "$d"; }
  rm -rf .gpu/Hippocampus && cp -r ../shared/data/Hippocampus .gpu/Hippocampus
  du -sh .gpu; exit 0
fi
T0=$(date +%s); DEADLINE=${DEADLINE:-500}; OUT=${OUT:-/tmp/medkd_out}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_lease.log") 2>&1
elapsed() { echo $(( $(date +%s) - T0 )); }
PY=${PY:-python3}; REPO=${REPO:-/work/main}  # REPO, PY: a dry run elsewhere (same data path)
if ! $PY -c "import SimpleITK, monai" 2>/dev/null; then
  mkdir -p /tmp/site && tar -xJf .gpu/sitk.tar.xz -C /tmp/site \
    && $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/monai-*.whl || exit 1
fi
if [ ! -d /work/shared/data/Hippocampus ]; then mkdir -p /work/shared/data && cp -r .gpu/Hippocampus /work/shared/data/; fi
if [ "$(pwd -P)" != "$REPO" ]; then mkdir -p "$REPO" && cp -r napari_medkd benchmarks "$REPO"/ && cd "$REPO"; fi
export PYTHONPATH=/tmp/site:$REPO PYTHONUNBUFFERED=1
nvidia-smi -L; nproc
$PY -c "import torch, SimpleITK, monai, onnxruntime; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'sitk', SimpleITK.__version__, 'monai', monai.__version__, 'ort', onnxruntime.__version__)" || exit 1
bench() {  # suite: the whole gpu preset, stopped cleanly (SIGTERM: runs save and can resume) at the deadline
  timeout -s TERM $(( DEADLINE - $(elapsed) )) $PY -m napari_medkd bench --suite "$1" --preset gpu --results results \
    > "results/bench_$1_gpu.log" 2>&1
  echo "[$(elapsed) s] $1 exit $?"
}
mkdir -p results
bench hippocampus_scarce & pids=$!
teacher=results/teachers/gpu/hippocampus_unet_half/events.jsonl
until grep -q '"status": "finished"' "$teacher" 2>/dev/null || [ "$(elapsed)" -ge "$DEADLINE" ] || [ -z "$(jobs -r)" ]; do sleep 5; done
echo "[$(elapsed) s] teacher done: $(grep '"event": "val"' "$teacher" | tail -1 | cut -c1-200)"
bench hippocampus_capacity & pids="$pids $!"
while [ -n "$(jobs -r)" ]; do sleep 30; echo "[$(elapsed) s] $(ls -d results/*/gpu/runs/* 2>/dev/null | wc -l) run folders; $(grep -l '"status": "finished"' results/*/gpu/runs/*/events.jsonl 2>/dev/null | wc -l) finished; $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"; done
wait $pids  # not a bare `wait`: it would also wait for the tee above, for ever
tail -n 25 results/bench_*_gpu.log
$PY benchmarks/pack_runs.py results "$OUT"
echo "[$(elapsed) s] packed: $(ls "$OUT")"
