"""Pack a bench's results for the way back from a GPU lease (at most 8 files of 16 MB come back):
every run folder and table under RESULTS/*/gpu and RESULTS/teachers/gpu, with each finished run's
``best.pt`` stripped of its optimiser state (the weights, card and counters stay; nothing resumes from
``best.pt``), ``last.pt`` kept only for unfinished runs (so they can resume), ONNX exports, teacher
caches and stage checkpoints of finished runs left behind. One tar, xz-compressed, split in 15 MB parts.

    python benchmarks/pack_runs.py RESULTS OUT
"""
from __future__ import annotations

import io
import json
import lzma
import sys
import tarfile
from pathlib import Path

import torch

PART = 15 * 2 ** 20


def _finished(run: Path) -> bool:
    ev = run / "events.jsonl"
    if not ev.exists():
        return False
    ends = [json.loads(line) for line in ev.read_text(encoding="utf-8").splitlines() if '"event": "end"' in line]
    return bool(ends) and ends[-1].get("status") == "finished"


def _stripped(path: Path) -> bytes:
    state = torch.load(path, map_location="cpu", weights_only=False)
    state.pop("optimizer", None)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _members(results: Path):
    roots = [p for p in results.glob("*/gpu") if p.is_dir()] + [results / "teachers" / "gpu"]
    for root in roots:
        for f in sorted(root.rglob("*")):
            if not f.is_file() or f.suffix == ".onnx" or f.name == ".medkd.lock" or "cache" in f.relative_to(root).parts:
                continue
            run = next((p for p in f.parents if (p / "events.jsonl").exists()), None)
            done = run is not None and _finished(run)
            if done and (f.name == "last.pt" or (f.suffix == ".pt" and "stages" in f.parts)):
                continue
            yield f, (_stripped(f) if done and f.name == "best.pt" else None)
    yield from ((f, None) for f in results.glob("bench_*_gpu.log"))


def main(results: str, out: str) -> None:
    results, out = Path(results), Path(out)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f, data in _members(results):
            name = str(Path("results") / f.relative_to(results))
            if data is None:
                tar.add(f, arcname=name)
            else:
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), int(f.stat().st_mtime)
                tar.addfile(info, io.BytesIO(data))
    packed = lzma.compress(buf.getvalue(), preset=1)  # weights hardly compress: speed first
    for i in range(0, len(packed), PART):
        (out / f"gpu_results.tar.xz.{i // PART:02d}").write_bytes(packed[i:i + PART])
    print(f"packed {len(buf.getvalue()) / 2**20:.1f} MB of runs into {len(packed) / 2**20:.1f} MB "
          f"({-(-len(packed) // PART)} parts)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
