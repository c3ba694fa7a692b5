"""``medkd quickstart``: the Quick start job (``workflows.quick_start``) from the command line, as napari's Quick
start panel runs it in its subprocess: a spec file (``--spec``, JSON) or the same settings as flags."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .cli_args import positive_int
from .cli_common import CLIError


def add_quickstart(sub) -> None:
    p = sub.add_parser("quickstart", help="scans + a teacher + a hardware preset: teacher if needed, student alone, "
                                          "distilled student, evaluation on held-back data, ONNX, result card")
    p.add_argument("--spec", help="the settings as JSON (what the napari panel writes); flags below override it")
    p.add_argument("--data", help="data set folder, plain folder of scans, or manifest.csv")
    p.add_argument("--labels", help="masks for a plain folder of scans, matched by file name")
    p.add_argument("--teacher", help="'train' (default), 'ready-made:hippocampus_teacher', or a run folder, .onnx, "
                                     "TorchScript file or MONAI bundle folder")
    p.add_argument("--preset", help="hardware preset: 'laptop CPU' (default) or 'workstation GPU'")
    p.add_argument("--iterations", type=positive_int, help="iterations per model (default: the preset's)")
    p.add_argument("--threads", type=positive_int)
    p.add_argument("--no-export", action="store_true", help="skip the ONNX export")
    p.add_argument("--out", required=True, help="new, empty output folder")
    p.set_defaults(fn=cmd_quickstart)


def cmd_quickstart(args) -> int:
    from .workflows.quick_start import QuickSpec, run_from_file

    spec = QuickSpec.from_json(Path(args.spec).read_text(encoding="utf-8")) if args.spec else None
    if spec is None and not args.data:
        raise CLIError("give --data (or --spec FILE)")
    spec = spec or QuickSpec(data=args.data)
    for key in ("data", "labels", "teacher", "preset", "iterations", "threads"):
        if getattr(args, key) is not None:
            setattr(spec, key, getattr(args, key))
    spec.export = spec.export and not args.no_export
    spec.out = args.out
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(spec.to_json(), encoding="utf-8")
        res = run_from_file(path, args.out)
    print("\n".join(res["card"]))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
