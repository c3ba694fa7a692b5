"""``medkd`` subcommands that look at data without a model: ``validate-data`` and ``inspect``.

A module beside ``cli.py`` (the same layer) so that the one parser module stays under the size limit;
``cli.build_parser`` adds these subcommands with the others.
"""
from __future__ import annotations

SERIES_HELP = "which DICOM series of a folder to read: its UID or index (`medkd inspect DIR` lists them)"


def cmd_validate(args) -> int:
    from .data.validate import validate_dataset

    report = validate_dataset(args.data)
    print(report.format())
    return 0 if report.ok else 1


def cmd_inspect(args) -> int:
    from .io.dicom import inspect_dicom_folder

    print(inspect_dicom_folder(args.folder))
    return 0


def add_validate_data(sub) -> None:
    p = sub.add_parser("validate-data", help="check a data set folder and summarise it (the checks train, "
                                             "distill and evaluate run before they start)")
    p.add_argument("data")
    p.set_defaults(fn=cmd_validate)


def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="list the DICOM series of a folder: index, UID, slices, size, spacing, "
                                       "description")
    p.add_argument("folder")
    p.set_defaults(fn=cmd_inspect)
