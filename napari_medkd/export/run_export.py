"""Export a finished run to ONNX inside its own folder: ``RUN/model.onnx`` (fp32, parity-checked) and
``RUN/model.int8.onnx`` (static int8, compared with fp32). What the Export buttons of napari and the
runs browser call; Live finds the files here when given a run folder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

PRECISIONS = ("fp32", "int8")
FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


def onnx_path(run_dir, precision: str = "fp32") -> Path:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got '{precision}'")
    return Path(run_dir) / FILES[precision]


def exported_onnx(run_dir) -> Optional[Path]:
    """The run's exported model (fp32 preferred), or None."""
    for precision in PRECISIONS:
        path = onnx_path(run_dir, precision)
        if path.is_file():
            return path
    return None


def export_run(run_dir, precision: str = "fp32", overwrite: bool = True) -> str:
    """Export ``run_dir``'s model (``best.pt``, else ``last.pt``); int8 exports fp32 first. Returns the
    report line(s) of the export (and quantisation)."""
    from .onnx_export import export_onnx

    run_dir = Path(run_dir)
    fp32 = onnx_path(run_dir, "fp32")
    lines = []
    if precision == "fp32" or not fp32.is_file():
        lines.append(export_onnx(run_dir, fp32, overwrite=overwrite).format())
    if precision == "int8":
        from .quantize import quantize_int8

        lines.append(quantize_int8(fp32, onnx_path(run_dir, "int8"), overwrite=overwrite).format())
    return "\n".join(lines)


def ensure_onnx(path) -> Path:
    """An ``.onnx`` file as is; a run folder's exported model, exported (fp32) first if it has none."""
    path = Path(path)
    if path.is_dir():
        found = exported_onnx(path)
        if found is None:
            export_run(path, "fp32")
            found = onnx_path(path, "fp32")
        return found
    return path
