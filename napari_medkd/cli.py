"""``medkd``: the command line. Every subcommand calls the same library functions as the GUI."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from .cli_args import non_negative_float, non_negative_int, opset, positive_int
from .cli_common import CLIError, add_budget, config_from_args, train_and_report
from .cli_data import SERIES_HELP, add_inspect, add_validate_data
from .cli_quick import add_quickstart
from .cli_teacher import add_agreement, add_distill, add_teacher_info
from .io import jsonsafe
from .io.atomic import describe_os_error, write_text_atomic
from .io.resources import sample_data_dir, suite_path


def cmd_train(args) -> int:
    return train_and_report(config_from_args(args), args)


def cmd_methods(args) -> int:
    from .distill import load_all
    from .registry import METHODS

    load_all()
    for name in METHODS.names():
        m = METHODS.meta(name)
        terms = ", ".join(f"{w:g}*{t}" for t, w, _ in m.get("terms", []))
        print(f"{name:<22}{m.get('paper', ''):<28}{terms}")
    return 0


def cmd_evaluate(args) -> int:
    from .workflows.evaluate import evaluate_run

    res = evaluate_run(args.model, args.data, split=args.split, which=args.checkpoint, surface=not args.no_surface)
    print(res.table())
    print(f"seconds per case: {res.seconds_per_case:.3f}")
    fsd = None
    if args.fsd_against:
        fsd = _fsd_for_evaluate(args)
        print(f"FSD ({Path(args.data).name} {args.split} vs {Path(args.fsd_against).name} {args.split}, "
              f"MSAN of {fsd['probe']}, N={fsd['n']}, d={fsd['dim']}): {fsd['fsd']:.4f}")
    if args.out:
        res.write(Path(args.out))
        if fsd is not None:
            write_text_atomic(Path(args.out) / "fsd.json", jsonsafe.dumps(fsd, indent=1))
        print(f"written: {args.out}/per_case.csv, summary.json" + (", fsd.json" if fsd is not None else ""))
    return 0


def _fsd_for_evaluate(args) -> dict:
    from .data.datasets import load_dataset
    from .analysis.fsd_probe import domain_fsd, load_run_msan

    probe_run = Path(args.msan or args.model)
    msan = load_run_msan(probe_run, 2)
    if msan is None:
        raise CLIError(f"{probe_run} holds no MSAN (it is not a GKD run); pass --msan GKD_RUN whose student "
                       "has the same architecture")
    sets = []
    for root in (args.data, args.fsd_against):
        cases = [c.image for c in load_dataset(root).split(args.split)]
        if not cases:
            raise CLIError(f"{root} has no '{args.split}' cases for FSD")
        sets.append(cases)
    out = domain_fsd(args.model, msan[1], sets[0], sets[1], tile=args.fsd_tile)
    out["probe"] = f"{probe_run} ({msan[2]})"
    return out


def cmd_predict(args) -> int:
    import numpy as np

    from .inference.batch import predict_batch
    from .train.run_model import load_run_model

    lm = load_run_model(args.model, which=args.checkpoint)

    def show(p) -> None:
        print(f"{p.source} -> {p.output} ({p.seconds:.2f} s, labels {sorted(int(v) for v in np.unique(p.labels))})",
              flush=True)

    rep = predict_batch(lm, Path(args.input), Path(args.output), overwrite=args.overwrite,
                        skip_existing=args.skip_existing, series=args.series, on_result=show)
    if rep.skipped:
        print(rep.summary())
    return 0


def cmd_models(args) -> int:
    from .models.cost import model_table

    rows = model_table(size=args.size)
    print(f"{'name':<20}{'role':<10}{'dims':>5}{'params':>14}{'GMACs':>10}")
    for r in rows:
        print(f"{r['name']:<20}{r['role']:<10}{r['dims']:>5}{r['params']:>14,}{r['macs'] / 1e9:>10.3f}")
    print(f"(2D models at 1x1x{args.size}x{args.size}; 3D models at 1x1x64x64x64)")
    return 0


def cmd_bench(args) -> int:
    from .workflows.bench import run_bench

    try:
        suite = suite_path(args.suite)  # a packaged suite by name, or a path
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from exc
    run_bench(suite, args.preset, Path(args.results), methods=args.methods, jobs=args.jobs)
    return 0


def cmd_pipeline(args) -> int:
    from .workflows.pipeline import run_pipeline

    run_pipeline(Path(args.data), Path(args.out), teacher_iterations=args.teacher_iterations,
                 student_iterations=args.student_iterations, method=args.method,
                 distill_iterations=args.distill_iterations, teacher=args.teacher, student=args.student,
                 labelled=None if args.labelled <= 0 else args.labelled, export=not args.no_export,
                 overwrite=args.overwrite, log=print)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="medkd", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for add in (_add_train, add_distill, add_teacher_info, _add_methods, _add_evaluate, add_agreement, _add_predict,
                add_validate_data, add_inspect, _add_models, _add_bench, _add_export, _add_infer, _add_pipeline,
                add_quickstart):
        add(sub)  # one subcommand each, in the order `medkd --help` lists them
    return ap


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a teacher or a student alone")
    p.add_argument("--data")
    p.add_argument("--model", help="registered model name (see `medkd models`)")
    p.add_argument("--out", help="new run folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out (its own files only)")
    add_budget(p)
    p.set_defaults(fn=cmd_train)


def _add_methods(sub) -> None:
    p = sub.add_parser("methods", help="list distillation methods and their terms")
    p.set_defaults(fn=cmd_methods)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="Dice/IoU/HD95/ASD of a trained model on a data set split")
    p.add_argument("--model", required=True, help="run folder or checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--no-surface", action="store_true", help="skip HD95/ASD (faster)")
    p.add_argument("--out", help="folder for per_case.csv and summary.json")
    p.add_argument("--fsd-against", metavar="DATA2", help="also the Fréchet Semantic Distance between this split "
                   "of --data and of DATA2 (another domain), from the student MSAN of a GKD run")
    p.add_argument("--msan", metavar="GKD_RUN", help="take the MSAN probe from this GKD run (default: --model)")
    p.add_argument("--fsd-tile", type=positive_int, default=96, help="tile size for the FSD semantic vectors")
    p.set_defaults(fn=cmd_evaluate)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="segment files with a trained torch model")
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True, help="image file, DICOM folder, or folder of images")
    p.add_argument("--output", required=True, help="mask file (single input) or folder")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--skip-existing", action="store_true", help="keep existing masks, segment the rest (resume a batch)")
    p.add_argument("--series", help=SERIES_HELP)
    p.set_defaults(fn=cmd_predict)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list registered models with parameters and MACs")
    p.add_argument("--size", type=positive_int, default=256)
    p.set_defaults(fn=cmd_models)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark suite (resumable): table, CSV and plots")
    p.add_argument("--suite", required=True, help="name of a packaged suite (napari_medkd/suites: "
                   "drive, chase, ...) or a YAML path")
    p.add_argument("--preset", default="cpu", help="cpu (2 cores, < 1 h) or gpu (the papers' sizes)")
    p.add_argument("--results", default="results")
    p.add_argument("--methods", nargs="+", help="only these of the suite's methods (the rest can follow later)")
    p.add_argument("--jobs", type=positive_int, help="student runs trained at once, each on its share of the CPU threads "
                   "(default: the preset's jobs, else 1)")
    p.set_defaults(fn=cmd_bench)


def _add_pipeline(sub) -> None:
    p = sub.add_parser("pipeline", help="the one-click job: teacher, student alone, distilled student, "
                                        "evaluation, ONNX export and report")
    p.add_argument("--data", default=str(sample_data_dir("hippocampus")), help="default: the packaged sample")
    p.add_argument("--out", default="medkd_out")
    p.add_argument("--teacher-iterations", type=positive_int, default=600)
    p.add_argument("--student-iterations", type=positive_int, default=1200)
    p.add_argument("--distill-iterations", type=positive_int, help="default: as --student-iterations")
    p.add_argument("--labelled", type=non_negative_int, default=2,
                   help="labelled training cases the students get (the teacher gets all); 0: all")
    p.add_argument("--teacher", default="unet")
    p.add_argument("--student", default="unet_tiny")
    p.add_argument("--method", default="logit_kd", help="distillation preset for the third model ('none': skip)")
    p.add_argument("--no-export", action="store_true", help="skip the ONNX export of the student")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(fn=cmd_pipeline)


def _add_export(subparsers) -> None:
    """``medkd export --model RUN --out FILE.onnx [--opset N] [--overwrite] [--images ...] [--exporter ...]``."""
    from .export.onnx_export import EXPORTERS

    p = subparsers.add_parser("export", help="export a trained student to a checked, self-contained ONNX file")
    p.add_argument("--model", dest="model_opt", metavar="MODEL", help="run folder or checkpoint")
    p.add_argument("model", nargs="?", help="the same, given without --model")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--opset", type=opset, default=18)
    p.add_argument("--images", nargs="*", help="images for the parity check (default: the run's test images)")
    p.add_argument("--exporter", default="auto", choices=EXPORTERS)
    p.add_argument("--atol", type=non_negative_float, default=1e-4)
    p.add_argument("--int8", metavar="FILE", help="also write a static int8 (QDQ) quantised copy here")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=cmd_export)


def _model_arg(args) -> str:
    model = args.model_opt or args.model
    if not model:
        raise ValueError("give the model: --model PATH")
    return model


def cmd_export(args) -> int:
    from .export.onnx_export import export_onnx

    args.model = _model_arg(args)
    rep = export_onnx(args.model, args.out, opset=args.opset, sample_images=args.images or None,
                      overwrite=args.overwrite, atol=args.atol, exporter=args.exporter)
    print(rep.format())
    if args.int8:
        from .export.quantize import quantize_int8

        print(quantize_int8(rep.path, args.int8, calibration_images=args.images or None,
                            overwrite=args.overwrite).format())
    return 0


def _add_infer(subparsers) -> None:
    """``medkd infer --model MODEL.onnx --input PATH --output PATH [--overwrite] [--threads N]``."""
    p = subparsers.add_parser("infer", help="segment images, folders, volumes or DICOM series with an ONNX model")
    p.add_argument("--model", dest="model_opt", metavar="MODEL", help="exported .onnx file")
    p.add_argument("model", nargs="?", help="the same, given without --model")
    p.add_argument("--input", required=True, help="image file, volume, DICOM folder, or folder of images")
    p.add_argument("--output", required=True, help="mask file (single input) or folder")
    p.add_argument("--threads", type=positive_int, help="onnxruntime intra-op threads (default: physical cores)")
    p.add_argument("--cpu", action="store_true", help="CPU only, even if CUDA is available")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--skip-existing", action="store_true", help="keep existing masks, segment the rest (resume a batch)")
    p.add_argument("--series", help=SERIES_HELP)
    p.set_defaults(fn=cmd_infer)


def cmd_infer(args) -> int:
    from .inference.ort_infer import InferResult, OrtSegmenter, infer_batch

    args.model = _model_arg(args)
    seg = OrtSegmenter(args.model, providers=["CPUExecutionProvider"] if args.cpu else None, threads=args.threads)

    def show(r: "InferResult") -> None:
        print(f"{r.source} -> {r.output} ({r.seconds:.2f} s, {r.ms_per_slice:.1f} ms/slice, labels {r.labels_present})",
              flush=True)

    rep = infer_batch(args.model, args.input, args.output, overwrite=args.overwrite, segmenter=seg, on_result=show,
                      series=args.series, skip_existing=args.skip_existing)
    if rep.skipped:
        print(rep.summary())
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, KeyError, RuntimeError) as exc:
        print(f"medkd {args.cmd}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a missing file, a read-only folder, a full disk: the path and the cause
        print(f"medkd {args.cmd}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
