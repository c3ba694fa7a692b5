"""Export a trained model to one TorchScript file (``torch.jit.trace``) that carries its model card.

The card (``ModelCard.to_checkpoint`` JSON) is the archive's extra file ``medkd_card.json``, so the file
can be a teacher elsewhere with its classes and preprocessing (``teachers/torchscript_file.py``), as an ONNX
export carries them in its metadata. The traced copy is checked against the model on a batch of random
inputs of another size than it was traced with, and refused (nothing written) when they differ by more
than ``atol``.
"""
from __future__ import annotations

import dataclasses
import io
import warnings
from pathlib import Path

from ..io.atomic import write_bytes_atomic


def export_torchscript(run_or_loaded, out_path, *, overwrite: bool = False, atol: float = 1e-4) -> Path:
    """Trace the run's model (``load_run_model``) to ``out_path`` with its card; returns the path."""
    import torch

    from ..train.run_model import LoadedModel, load_run_model

    out = Path(out_path)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    lm = run_or_loaded if isinstance(run_or_loaded, LoadedModel) else load_run_model(run_or_loaded)
    model = lm.model.eval()
    div, dims = int(model.size_divisor), int(getattr(model, "spatial_dims", 2))
    card = dataclasses.replace(lm.card, size_divisor=div, source_run=str(lm.checkpoint.parent))
    shape = (2, int(card.in_channels)) + tuple(div * s for s in ((2, 3, 4) if dims == 3 else (3, 4)))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape checks that hold for these sizes
        traced = torch.jit.trace(model, torch.randn(shape), check_trace=False)
        probe = torch.randn((1, int(card.in_channels)) + tuple(div * s for s in ((3, 2, 2) if dims == 3 else (5, 2))))
        diff = float((traced(probe) - model(probe)).abs().max())
    if not diff <= atol:
        raise RuntimeError(f"{out}: the traced model differs from the original by {diff:.3g} (allowed {atol:g}) "
                           "on another input size; it was not written")
    buf = io.BytesIO()
    card_json = card.to_checkpoint()
    torch.jit.save(traced, buf, _extra_files={"medkd_card.json": card_json.encode("utf-8")})
    return write_bytes_atomic(out, buf.getvalue(), overwrite=overwrite)
