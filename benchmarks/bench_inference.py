"""Inference benchmark: teacher (torch), student (torch), student (onnxruntime fp32 and int8), one table.

Per backend, in a fresh subprocess (so ``ru_maxrss`` is that backend's own peak): median ms per
512x512 slice at batch 1 and batch 8, slices per second, peak memory above the post-import
baseline, Dice on DRIVE test images (centre-cropped to 512x512, inside the FOV) when
../shared/data/DRIVE is present, and a whole 512x512xN volume (DRIVE green channels repeated)
segmented end to end (the torch path ``predict_image``; ``OrtSegmenter.segment``).

    python benchmarks/bench_inference.py --teacher RUN --student RUN   # trained runs
    python benchmarks/bench_inference.py                               # untrained: speed only

Without runs, randomly initialised ``unet`` (teacher) and ``unet_tiny`` / ``enet`` (students) are used
and the table says "untrained: speed only" (their Dice means nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIVE = ROOT.parent / "shared" / "data" / "DRIVE"
SIZE = 512


# -- worker (one backend, fresh process) -------------------------------------------------------------
def _crop(a, size=SIZE):
    h, w = a.shape[-2:]
    if h < size or w < size:
        import numpy as np

        a = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, max(0, size - h)), (0, max(0, size - w))])
        h, w = a.shape[-2:]
    y, x = (h - size) // 2, (w - size) // 2
    return a[..., y:y + size, x:x + size]


def _drive_cases(n):
    if not DRIVE.is_dir():
        return []
    imgs = sorted((DRIVE / "test" / "images").iterdir())[:n]
    return [(p, DRIVE / "test" / "masks" / (p.stem + ".png"), DRIVE / "test" / "fov" / (p.stem + ".png")) for p in imgs]


def _volume(n_slices):
    import numpy as np

    from napari_medkd.io.image import MedicalImage
    from napari_medkd.io.image_io import read_image

    cases = _drive_cases(20)
    if cases:
        planes = [_crop(read_image(p).array[..., 1]) for p, _, _ in cases]
    else:
        from napari_medkd.data.phantoms import vessel_phantom

        planes = [vessel_phantom(SIZE, s)[0][..., 1] for s in range(4)]
    vol = np.stack([planes[i % len(planes)] for i in range(n_slices)]).astype(np.uint8)
    return MedicalImage(vol, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), path="volume")


def _proc_status_kb(key: str):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_baseline():
    """Reset the kernel's peak-RSS mark (the counter behind ru_maxrss, VmHWM) to the current RSS, so the
    peak measured later belongs to this backend's work, not to the imports; fall back to ru_maxrss."""
    import resource

    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        rss = _proc_status_kb("VmRSS")
        if rss is not None and _proc_status_kb("VmHWM") is not None:
            return "VmHWM", rss
    except OSError:
        pass
    return "ru_maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_mb(kind: str, base_kb: int) -> float:
    import resource

    peak = _proc_status_kb("VmHWM") if kind == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak - base_kb) / 1024.0


def worker(spec: dict) -> dict:

    import numpy as np
    import onnxruntime  # noqa: F401 - imported before the baseline, like torch
    import torch

    from napari_medkd.data.datasets import load_label
    from napari_medkd.data.prepare import PreprocessConfig
    from napari_medkd.inference.ort_infer import OrtSegmenter
    from napari_medkd.inference.predict_files import predict_image
    from napari_medkd.train.run_model import load_run_model
    from napari_medkd.io.image_io import read_image
    from napari_medkd.metrics.overlap import dice_per_class
    from napari_medkd.data.prepare import prepare_image

    threads = spec["threads"]
    torch.set_num_threads(threads)
    kind, base = _peak_baseline()
    if spec["backend"] == "torch":
        lm = load_run_model(spec["ckpt"])
        card, model = lm.card, lm.model

        def fn(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()

        def volume(img):
            return predict_image(lm, img)
    else:
        seg = OrtSegmenter(spec["onnx"], providers=["CPUExecutionProvider"], threads=threads)
        card = seg.card
        fn = seg.run

        def volume(img):
            return seg.segment(img).labels
    pcfg = PreprocessConfig.from_dict(card.preprocess)
    c = int(card.in_channels)
    rng = np.random.default_rng(0)
    out = {}
    for batch, reps in ((1, spec["reps"]), (8, max(2, spec["reps"] // 4))):
        x = rng.normal(size=(batch, c, SIZE, SIZE)).astype(np.float32)
        fn(x)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) * 1000 / batch)
        out[f"ms_b{batch}"] = float(np.median(times))
    dices = []
    for img_p, mask_p, fov_p in _drive_cases(spec["dice_images"]):
        image, _ = prepare_image(read_image(img_p), pcfg)
        if image.shape[0] != c:
            break
        pred = fn(_crop(image)[None])[0].argmax(0)
        truth, fov = _crop(load_label(mask_p)), _crop(load_label(fov_p)) > 0
        dices.append(float(dice_per_class(pred, truth, 2, fov=fov)[0]))
    out["dice"] = float(np.mean(dices)) if dices else None
    out["n_dice"] = len(dices)
    if spec["volume_slices"]:
        img = _volume(spec["volume_slices"])
        t0 = time.perf_counter()
        labels = volume(img)
        out["volume_s"] = time.perf_counter() - t0
        assert labels.shape == img.array.shape
    out["peak_mb"] = _peak_mb(kind, base)
    return out


# -- parent ------------------------------------------------------------------------------------------
def _untrained_checkpoint(name: str, folder: Path) -> Path:
    """A randomly initialised model saved as load_run_model reads it (same weights in every process)."""
    import torch

    from napari_medkd.card import ModelCard
    from napari_medkd.data.prepare import PreprocessConfig
    from napari_medkd.models import build_model
    from napari_medkd.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=2).eval()
    card = ModelCard(model_name=name, in_channels=1, num_classes=2, class_names={0: "background", 1: "vessel"},
                     preprocess=PreprocessConfig(modality="RGB", rgb_mode="green").to_dict(), model_dims=2,
                     data_root=str(DRIVE) if DRIVE.is_dir() else "", spacing=[1.0, 1.0])
    return save_checkpoint({"model": model.state_dict(), "meta": card.to_checkpoint()}, folder / f"{name}.pt")


def _sample_pngs(folder: Path):
    """Real DRIVE images for the export check and calibration, or phantoms when DRIVE is absent."""
    if DRIVE.is_dir():
        return None  # the checkpoint's data_root (DRIVE) gives test images and training images
    import SimpleITK as sitk

    from napari_medkd.data.phantoms import vessel_phantom

    out = []
    for s in range(4):
        p = folder / f"phantom{s}.png"
        sitk.WriteImage(sitk.GetImageFromArray(vessel_phantom(SIZE, s)[0], isVector=True), str(p))
        out.append(p)
    return out


def _params(ckpt) -> int:
    from napari_medkd.train.run_model import load_run_model

    return sum(p.numel() for p in load_run_model(ckpt).model.parameters())


def _run_worker(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:160]}
    return json.loads(lines[-1])


def _fmt(v, f="{:.1f}"):
    return "n/a" if v is None else f.format(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", help="trained teacher run folder (or checkpoint)")
    ap.add_argument("--student", help="trained student run folder (or checkpoint)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads and onnxruntime intra-op threads")
    ap.add_argument("--reps", type=int, default=12, help="timed batch-1 repetitions (batch 8: a quarter)")
    ap.add_argument("--dice-images", type=int, default=20, help="DRIVE test images for Dice")
    ap.add_argument("--volume-slices", type=int, default=100, help="slices of the 512x512xN volume (0: skip)")
    ap.add_argument("--atol", type=float, default=1e-4, help="export parity tolerance")
    ap.add_argument("--markdown", help="also write the table as Markdown (with machine, date and command) here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if bool(args.teacher) != bool(args.student):
        ap.error("give both --teacher and --student, or neither (untrained: speed only)")
    sys.path.insert(0, str(ROOT))
    with open("/proc/loadavg") as fh:
        print(f"/proc/loadavg at start: {fh.read().strip()}  (cores available: {len(os.sched_getaffinity(0))}, "
              f"threads used: {args.threads})", flush=True)
    from napari_medkd.export.onnx_export import ExportCheckError, export_onnx
    from napari_medkd.export.quantize import quantize_int8

    trained = bool(args.teacher)
    common = {"threads": args.threads, "reps": args.reps, "dice_images": args.dice_images,
              "volume_slices": args.volume_slices}
    with tempfile.TemporaryDirectory(prefix="medkd-bench-") as tmp:
        tmp = Path(tmp)
        if trained:
            teacher, students = args.teacher, {"student": args.student}
        else:
            teacher = str(_untrained_checkpoint("unet", tmp))
            students = {n: str(_untrained_checkpoint(n, tmp)) for n in ("unet_tiny", "enet")}
        samples = _sample_pngs(tmp)
        rows = [("teacher " + ("" if trained else "unet ") + "torch", teacher, {"backend": "torch", "ckpt": teacher})]
        for name, ckpt in students.items():
            rows.append((f"{name} torch", ckpt, {"backend": "torch", "ckpt": ckpt}))
            try:
                rep = export_onnx(ckpt, tmp / f"{name}.onnx", sample_images=samples, atol=args.atol)
                print(rep.format(), flush=True)
                q = quantize_int8(rep.path, tmp / f"{name}_int8.onnx", calibration_images=samples)
                print(q.format(), flush=True)
                rows.append((f"{name} ort fp32", ckpt, {"backend": "ort", "onnx": str(rep.path)}))
                rows.append((f"{name} ort int8", ckpt, {"backend": "ort", "onnx": str(q.path)}))
            except ExportCheckError as exc:
                print(f"{name}: export refused, onnxruntime rows skipped: {exc}", flush=True)
        results = []
        for label, ckpt, spec in rows:
            print(f"measuring {label} ...", flush=True)
            results.append((label, _params(ckpt), _run_worker({**spec, **common})))
    title = "trained models" if trained else "untrained: speed only (random weights; Dice is meaningless)"
    n_dice = next((r.get("n_dice") for _, _, r in results if r.get("n_dice")), 0)
    print(f"\nInference on {SIZE}x{SIZE} slices, {args.threads} threads - {title}")
    head = (f"{'backend':<24}{'params':>10}{'ms/slice b1':>13}{'ms/slice b8':>13}{'slices/s':>10}{'peak MB':>9}"
            f"{'Dice (' + str(n_dice) + ' DRIVE)':>17}{'vol ' + str(args.volume_slices) + ' sl. s':>14}")
    print(head)
    print("-" * len(head))
    for label, params, r in results:
        if "error" in r:
            print(f"{label:<24}{params:>10,}  failed: {r['error']}")
            continue
        print(f"{label:<24}{params:>10,}{r['ms_b1']:>13.1f}{r['ms_b8']:>13.1f}{1000 / min(r['ms_b1'], r['ms_b8']):>10.1f}"
              f"{r['peak_mb']:>9.0f}{_fmt(r['dice'], '{:.4f}'):>17}{_fmt(r.get('volume_s')):>14}")
    if args.markdown:
        _write_markdown(Path(args.markdown), results, title, n_dice, args, argv)
    return 0


def _write_markdown(path: Path, results, title: str, n_dice: int, args, argv) -> None:
    import platform

    cmd = "python benchmarks/bench_inference.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"Inference on {SIZE}×{SIZE} slices, {args.threads} threads, {title}; "
             f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, {time.strftime('%Y-%m-%d')}. "
             f"Command: `{cmd.strip()}`", "",
             f"| backend | params | ms/slice (batch 1) | ms/slice (batch 8) | slices/s (better batch) | peak MB | "
             f"Dice ({n_dice} DRIVE test, FOV) | {args.volume_slices}-slice 512² volume, s |",
             "|---|---|---|---|---|---|---|---|"]
    for label, params, r in results:
        if "error" in r:
            lines.append(f"| {label} | {params:,} | failed: {r['error']} | | | | | |")
            continue
        lines.append(f"| {label} | {params:,} | {r['ms_b1']:.1f} | {r['ms_b8']:.1f} | {1000 / min(r['ms_b1'], r['ms_b8']):.1f} | "
                     f"{r['peak_mb']:.0f} | {_fmt(r['dice'], '{:.4f}')} | {_fmt(r.get('volume_s'), '{:.2f}')} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"written {path}")


if __name__ == "__main__":
    sys.exit(main())
