"""``medkd distill`` (a teacher from anywhere: a run folder, ONNX, TorchScript, a MONAI bundle; scans with
or without masks) and ``medkd teacher-info`` (what medkd reads from a teacher, and the taps it suggests).

A module beside ``cli.py`` (the same layer) so that the one parser module stays under the size limit;
``cli.build_parser`` adds these subcommands with the others.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli_common import CLIError, add_budget, config_from_args, train_and_report

BACKENDS = ("auto", "torch", "torch_bf16", "onnxruntime", "onnxruntime_int8", "cache")  # teachers.backend.BACKENDS

TEACHER_HELP = ("the teacher: a medkd run folder, an .onnx file, a TorchScript file, or a MONAI bundle folder "
                "(configs/inference.json + models/model.pt)")


def _add_teacher_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher-preprocess", nargs="+", metavar="KEY=VALUE",
                   help="what the teacher's file does not say: modality, percentiles, ct_window, target_spacing, "
                        "slice_axis, rgb_mode, size_divisor, class_names, model_dims, in_channels (YAML values)")
    p.add_argument("--teacher-taps", nargs="+", metavar="TAP=TENSOR",
                   help="feature taps of an ONNX teacher (internal tensor names or module paths) or a bundle "
                        "(module paths), e.g. enc_mid=/down_2/convs/conv_1/adn/A/LeakyRelu_output_0")


def add_distill(sub) -> None:
    p = sub.add_parser("distill", help="train a student from a frozen teacher (a run, ONNX, TorchScript or MONAI "
                                       "bundle) on scans with or without masks")
    p.add_argument("--data", help="the scans: a data set, or a plain folder of images (no masks needed)")
    p.add_argument("--labels", help="masks for some of the scans of a plain folder, matched by file name")
    p.add_argument("--teacher", help=TEACHER_HELP)
    p.add_argument("--student", help="registered student model name")
    p.add_argument("--method", help="method preset (see `medkd methods`)")
    p.add_argument("--out", help="new run folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out (its own files only)")
    _add_teacher_options(p)
    p.add_argument("--cache-teacher", action=argparse.BooleanOptionalAction, default=None,
                   help="compute the teacher's outputs once per scan and keep them on disk (default: on for a "
                        "teacher from a file and a method that reads only its outputs)")
    p.add_argument("--teacher-cache", metavar="DIR", help="where the cached teacher outputs live "
                   "(default: ~/.cache/napari-medkd/teacher_outputs; shared by students)")
    p.add_argument("--teacher-backend", choices=BACKENDS, help="how a torch teacher runs in each step (default auto: "
                   "bf16 where the CPU has it natively, else onnxruntime fp32; each checked against torch first)")
    add_budget(p)
    p.set_defaults(fn=cmd_distill)


def _teacher_settings(cfg, args) -> None:
    from .teachers.options import parse_pairs

    if args.labels:
        cfg.data.labels_root = args.labels
    if args.teacher_preprocess:
        cfg.distill.teacher_preprocess = {**cfg.distill.teacher_preprocess,
                                          **parse_pairs(args.teacher_preprocess, "--teacher-preprocess")}
    if args.teacher_taps:
        taps = parse_pairs(args.teacher_taps, "--teacher-taps")
        cfg.distill.teacher_taps = {**cfg.distill.teacher_taps, **{k: str(v) for k, v in taps.items()}}
    if args.teacher_cache:
        cfg.distill.teacher_cache_dir = args.teacher_cache
    if getattr(args, "teacher_backend", None):
        cfg.distill.teacher_backend = args.teacher_backend


def cmd_distill(args) -> int:
    """Flags override the config's ``distill.teacher``/``distill.method``; a resumed run keeps the teacher
    and method of its ``config.yaml`` (the engine reads it with ``load_config``)."""
    from .workflows.distill_teacher import configure_for_teacher

    if not args.resume:
        args.model = args.student
    cfg = config_from_args(args)
    if not args.resume:
        cfg.distill.method = cfg.distill.method or "none"
        if not cfg.distill.teacher:
            raise CLIError(f"--teacher is required: {TEACHER_HELP}")
        _teacher_settings(cfg, args)
        teacher, notes = configure_for_teacher(cfg, args.cache_teacher)
        print(teacher.summary().splitlines()[0], flush=True)
        for note in notes:
            print(f"[note] {note}", flush=True)
    return train_and_report(cfg, args)


def add_agreement(sub) -> None:
    p = sub.add_parser("agreement", help="a student against its teacher on scans without masks (Dice between their "
                                         "masks, voxel agreement, disagreement volume), and ground truth where masks exist")
    p.add_argument("--student", required=True, help="run folder or exported .onnx of the student")
    p.add_argument("--teacher", required=True, help=TEACHER_HELP)
    p.add_argument("--data", required=True, help="the scans: a plain folder of images or a data set")
    p.add_argument("--labels", help="masks for some of the scans of a plain folder, matched by file name")
    p.add_argument("--split", help="only this split of a data set (train, val, test)")
    p.add_argument("--teacher-preprocess", nargs="+", metavar="KEY=VALUE", help="as for distill")
    p.add_argument("--out", help="folder for agreement_per_case.csv and agreement.json")
    p.set_defaults(fn=cmd_agreement)


def cmd_agreement(args) -> int:
    from .teachers.options import parse_pairs
    from .workflows.agreement import compare_with_teacher

    rep = compare_with_teacher(args.student, args.teacher, args.data, labels=args.labels, split=args.split,
                               teacher_preprocess=parse_pairs(args.teacher_preprocess, "--teacher-preprocess"))
    print(rep.table())
    if args.out:
        rep.write(args.out)
        print(f"written: {Path(args.out) / 'agreement_per_case.csv'}, agreement.json")
    return 0


def add_teacher_info(sub) -> None:
    p = sub.add_parser("teacher-info", help="what medkd reads from a teacher: classes, preprocessing, feature taps, "
                                            "the methods it can serve, and taps it suggests")
    p.add_argument("teacher", help=TEACHER_HELP)
    _add_teacher_options(p)
    p.set_defaults(fn=cmd_teacher_info)


def cmd_teacher_info(args) -> int:
    from .distill.teacher_fit import fitting_methods
    from .teachers import open_teacher
    from .teachers.options import parse_pairs
    from .teachers.resolve import suggested_taps

    t = open_teacher(args.teacher, preprocess=parse_pairs(args.teacher_preprocess, "--teacher-preprocess"),
                     taps={k: str(v) for k, v in parse_pairs(args.teacher_taps, "--teacher-taps").items()})
    print(t.summary())
    print(f"  methods it can serve: {', '.join(fitting_methods(t.taps, t.has_parts))}")
    if t.kind != "run":
        found = suggested_taps(t)
        if found:
            print("  suggested taps: --teacher-taps " + " ".join(f"{k}={v}" for k, v in found.items()))
    return 0
