"""Build the ready-made hippocampus models shipped in ``napari_medkd/pretrained/`` from finished runs.

    python scripts/make_ready_made.py --teacher RUN --student RUN [--data DATA] [--evaluate]

Each model becomes one ``.pt`` file holding only its weights in float16 and its model card (``meta``, with
licence, citation, training and test-split metrics in the card's extra entries); the student also as a
parity-checked ``.onnx`` (float32, for the Live widget). ``models.json`` lists the files and their SHA-256.
``--evaluate`` measures Dice on the test split of ``--data`` with the float16 weights (as shipped); without
it the metrics are read from each run's ``eval_in.json`` (float32 weights, the same test split).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_medkd.card import ModelCard  # noqa: E402
from napari_medkd.train.checkpoint import save_checkpoint  # noqa: E402

OUT = ROOT / "napari_medkd" / "pretrained"
LICENCE = "CC BY-SA 4.0"
CITATION = ("Simpson, A. L., et al. A large annotated medical image dataset for the development and evaluation "
            "of segmentation algorithms. arXiv:1902.09063 (2019); Antonelli, M., et al. The Medical Segmentation "
            "Decathlon. Nature Communications 13, 4128 (2022)")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fp16_checkpoint(run: Path, out: Path, extra: dict) -> ModelCard:
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    card = ModelCard.from_checkpoint(state["meta"])
    card.extra = {**card.extra, **extra}
    weights = {k: (v.half() if v.is_floating_point() else v) for k, v in state["model"].items()}
    save_checkpoint({"model": weights, "meta": card.to_checkpoint()}, out)
    return card


def test_metrics(run: Path, path: Path, data: Path, evaluate: bool) -> dict:
    if evaluate:
        from napari_medkd.workflows.evaluate import evaluate_run

        ev = evaluate_run(path, data, "test", surface=False)
        summ, source = ev.summary, "measured on the test split with the float16 weights as shipped"
    else:
        summ = json.loads((run / "eval_in.json").read_text())["summary"]
        source = "measured on the test split with the run's float32 weights (eval_in.json)"
    dice = {k.split("_")[1]: round(v["mean"], 4) for k, v in summ.items() if k.startswith("dice_") and k != "dice_mean"}
    cases = next(v["n"] for k, v in summ.items() if k.startswith("dice_") and k != "dice_mean")
    return {"dice": dice, "dice_mean": round(sum(dice.values()) / len(dice), 4), "test_cases": cases,
            "data": "MSD Task04 Hippocampus, project split (manifest.csv)", "how": source}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--student", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/Hippocampus"))
    ap.add_argument("--evaluate", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    roles = {"teacher": (args.teacher, "hippocampus_teacher.pt"), "student": (args.student, "hippocampus_student.pt")}
    entries = {}
    for role, (run, name) in roles.items():
        cfg = (run / "config.yaml").read_text()
        common = {"licence": LICENCE, "citation": CITATION, "ready_made": f"hippocampus_{role}"}
        card = fp16_checkpoint(run, OUT / name, common)
        metrics = test_metrics(run, OUT / name, args.data, args.evaluate)
        training = (f"{card.model_name} {card.model_kwargs or ''} trained by napari-medkd on the MSD Hippocampus "
                    f"training split; " + ("every training label" if role == "teacher" else
                                           f"distilled from the teacher above with {card.method}, 2 labelled "
                                           "training volumes plus the other training images without masks"))
        card.extra.update({"test_metrics": metrics, "training": training})
        if role == "student":
            card.teacher = "napari-medkd ready-made hippocampus_teacher"
        save_checkpoint({"model": torch.load(OUT / name, weights_only=True)["model"], "meta": card.to_checkpoint()},
                        OUT / name)
        entry = {"role": role, "file": name, "sha256": sha256(OUT / name), "model": card.model_name,
                 "model_kwargs": card.model_kwargs, "classes": {str(k): v for k, v in card.class_names.items()},
                 "licence": LICENCE, "citation": CITATION, "training": training, "test_metrics": metrics,
                 "training_config": cfg, "url": None}
        if role == "student":
            from napari_medkd.export.onnx_export import export_onnx

            onnx = OUT / "hippocampus_student.onnx"
            with tempfile.TemporaryDirectory():
                rep = export_onnx(OUT / name, onnx, overwrite=True)
            print(rep.format())
            entry.update({"onnx": onnx.name, "onnx_sha256": sha256(onnx)})
        entries[f"hippocampus_{role}"] = entry
        print(role, name, f"{(OUT / name).stat().st_size / 2**20:.2f} MB", metrics)
    (OUT / "models.json").write_text(json.dumps(entries, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
