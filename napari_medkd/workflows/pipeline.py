"""The one-click job: train a teacher, a student alone and the same student distilled from the
teacher, evaluate all three on the held-back cases, export the distilled student to ONNX (parity
checked) and write a report (metrics table, side-by-side figure, ONNX speed) into an output folder."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, Dict, Optional

from ..config import RunConfig
from ..io import jsonsafe
from ..io.atomic import write_text_atomic

MARKER = ".medkd_pipeline"


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {out} exists and is not empty; pass --overwrite to replace it")
        if not (out / MARKER).exists():
            raise FileExistsError(f"{out} was not made by `medkd pipeline`; refusing to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by medkd pipeline\n", encoding="utf-8")


def default_config(data: Path, model: str, iterations: int, seed: int = 0) -> RunConfig:
    from ..data.datasets import load_dataset

    spec = load_dataset(data)
    cfg = RunConfig()
    cfg.data.root = str(data)
    cfg.model.name = model
    cfg.train.iterations = int(iterations)
    cfg.train.seed = seed
    if spec.dims == 3:
        cfg.data.patch_size, cfg.train.batch_size = 48, 16
    else:
        cfg.data.patch_size, cfg.train.batch_size = 96, 8
    cfg.train.val_every = max(50, int(iterations) // 4)
    return cfg


def _export_and_time(run: Path, onnx_path: Path, img, log) -> str:
    """Export ``run`` to ONNX (parity checked on real test images) and time it on ``img``."""
    from ..export.onnx_export import export_onnx
    from ..inference.ort_infer import OrtSegmenter

    log(f"== exporting {run.name} to {onnx_path}")
    rep = export_onnx(run, onnx_path)
    seg = OrtSegmenter(onnx_path)
    seg.segment(img)  # warm-up
    t = time.perf_counter()
    res = seg.segment(img)
    seconds = time.perf_counter() - t
    line = (f"ONNX student: `{onnx_path.name}` ({rep.size_mb:.2f} MB), max |logit difference| vs torch "
            f"{rep.max_abs_diff:.2e} on real test images; onnxruntime segments the case above in "
            f"{1000 * seconds:.0f} ms ({res.ms_per_slice:.1f} ms per slice). Open it in napari's Live widget or run "
            f"`medkd infer --model {onnx_path.name} --input SCAN --output MASK`.\n\n")
    log("   " + rep.format())
    return line


def _train_roles(data: Path, out: Path, roles, models: Dict[str, str], iterations: Dict[str, int], method: str,
                 labelled: Optional[int], teacher_kwargs: Dict, log) -> Dict[str, Path]:
    """Train the teacher (on every label), the student alone (on its ``labelled`` cases only) and, if in
    ``roles``, the same student distilled (the same labelled cases plus the others' images, unlabelled)."""
    from ..distill.task import needs_only_outputs
    from ..train.engine import run_training

    runs: Dict[str, Path] = {}
    for role in roles:
        cfg = default_config(data, models[role], iterations[role])
        share = "every label" if role == "teacher" or labelled is None else f"{labelled} labelled case(s)"
        if role == "teacher":
            cfg.model.kwargs = dict(teacher_kwargs)
        else:
            cfg.data.labelled_cases = labelled
        if role == "distilled":
            log(f"== distilling the teacher into {models[role]} with {method} for {iterations[role]} iterations "
                f"({share}, the other training images unlabelled)")
            cfg.distill.teacher, cfg.distill.method = str(runs["teacher"]), method
            # output-only methods read the teacher from a cache made once per image: as many updates
            # per minute as the student alone, instead of a teacher forward pass per step
            cfg.distill.cache_teacher = needs_only_outputs(method)
            cfg.distill.stage_iterations = {"paraphraser": 50, "msan": 50}
        else:
            log(f"== training the {role} ({models[role]}) alone for {iterations[role]} iterations on {data} ({share})")
        runs[role] = out / role
        res = run_training(cfg, runs[role])
        log(f"   {res['status']}: {res['iterations']} iterations in {res['elapsed']:.0f} s, "
            + (f"best validation Dice {res['best_dice']:.3f}" if res["best_dice"] is not None else "never validated"))
    return runs


def gap_closed_lines(results, names: Dict[int, str]) -> str:
    """Per class: the teacher-student gap on the test cases and the share of it the distilled student closes
    (no share where the teacher is not ahead by 0.01 Dice: there is no gap to close)."""
    by_role = {r: ev.summary for r, (_, _, ev) in zip(("teacher", "student", "distilled"), results)}
    if "distilled" not in by_role:
        return ""
    lines = []
    for k, name in sorted(names.items()):
        if k == 0:
            continue
        t, s, d = (by_role[r][f"dice_{k}"]["mean"] for r in ("teacher", "student", "distilled"))
        gap = t - s
        share = f", {100 * (d - s) / gap:.0f} % of the gap closed" if gap > 0.01 else " (no gap to close)"
        lines.append(f"- {name}: teacher {t:.3f}, student alone {s:.3f}, distilled {d:.3f} "
                     f"(Δ {d - s:+.3f} vs alone){share}")
    return "\n".join(lines) + "\n\n"


def _evaluate_roles(data: Path, out: Path, roles, runs: Dict[str, Path], method: str, log):
    """Each role's model, evaluated on the test split (written to ``ROLE/evaluation``)."""
    from .evaluate import evaluate_model
    from ..train.run_model import load_run_model

    results, loaded = [], {}
    for role in roles:
        lm = load_run_model(runs[role])
        loaded[role] = lm
        log(f"== evaluating the {role} on the test split")
        ev = evaluate_model(lm, data, "test", name=role)
        ev.write(out / role / "evaluation")
        log(ev.table())
        label = f"student + {method} ({lm.card.model_name})" if role == "distilled" else \
            f"{role} ({lm.card.model_name})"
        results.append((label, sum(p.numel() for p in lm.model.parameters()), ev))
    return results, loaded


def _comparison(data: Path, out: Path, roles, loaded, method: str, names):
    """The side-by-side figure of every role's mask on the first labelled test case, and that image."""
    from ..io.image_io import read_image
    from ..data.datasets import load_dataset, load_label
    from ..inference.predict_files import predict_image
    from .report import side_by_side_figure

    spec = load_dataset(data)
    case = next(c for c in spec.cases if c.split == "test" and c.label is not None)
    img = read_image(case.image)
    masks = {(f"student + {method}" if r == "distilled" else f"{r} ({loaded[r].card.model_name})"):
             predict_image(loaded[r], img) for r in roles}
    fig = side_by_side_figure(img.array, load_label(case.label), masks, out / "comparison.png",
                              title=f"test case {case.id}", n_classes=len(names))
    return fig, img


def run_pipeline(data: Path, out: Path, teacher_iterations: int = 600, student_iterations: int = 1200,
                 teacher: str = "unet", student: str = "unet_tiny", method: str = "logit_kd",
                 distill_iterations: int | None = None, labelled: Optional[int] = 2,
                 teacher_kwargs: Optional[Dict] = None, export: bool = True, overwrite: bool = False,
                 log: Callable[[str], None] = print) -> Dict[str, object]:
    """The label-scarce job a clinic meets: a teacher trained on every label, then a small student on only
    ``labelled`` of the training cases, alone and distilled (the same labelled cases plus the other
    training images without their masks), all at equal iterations; ``labelled=None`` gives every model
    every label."""
    from .report import metrics_table

    t0 = time.time()
    out = Path(out)
    _prepare_out(out, overwrite)
    distill_iterations = student_iterations if distill_iterations is None else distill_iterations
    roles = ["teacher", "student"] + (["distilled"] if method and method != "none" else [])
    runs = _train_roles(data, out, roles, {"teacher": teacher, "student": student, "distilled": student},
                        {"teacher": teacher_iterations, "student": student_iterations,
                         "distilled": distill_iterations}, method, labelled,
                        {"width": 0.5} if teacher_kwargs is None else teacher_kwargs, log)
    results, loaded = _evaluate_roles(data, out, roles, runs, method, log)
    names = loaded["teacher"].class_names
    table = metrics_table(results, names)
    fig, img = _comparison(data, out, roles, loaded, method, names)
    onnx_text = ""
    if export:
        onnx_text = _export_and_time(runs[roles[-1]], out / "student.onnx", img, log)
    elapsed = time.time() - t0
    setting = ("every model sees every label" if labelled is None else
               f"the teacher saw every training label; both students saw {labelled} labelled training case(s), "
               "and the distilled one also the other training images without their masks")
    report = (f"# napari-medkd report\n\nData: `{data}` (test split). Setting: {setting}; iterations: teacher "
              f"{teacher_iterations}, student alone {student_iterations}, distilled {distill_iterations}.\n\n"
              f"{table}\n\nDice is per class over the test cases (mean ± sd); HD95 in mm (pixels for 2D data "
              f"without spacing).\n\n{gap_closed_lines(results, names)}"
              f"![teacher and student masks]({fig.name})\n\n{onnx_text}Total time: {elapsed:.0f} s\n")
    write_text_atomic(out / "report.md", report)
    summary = {"elapsed_s": elapsed, "runs": {k: str(v) for k, v in runs.items()}, "labelled": labelled,
               "iterations": {"teacher": teacher_iterations, "student": student_iterations,
                              "distilled": distill_iterations},
               "test": {lbl: r.summary for lbl, _, r in results}}
    write_text_atomic(out / "summary.json", jsonsafe.dumps(summary, indent=1))
    log(f"== report written to {out / 'report.md'} ({elapsed:.0f} s)")
    return summary
