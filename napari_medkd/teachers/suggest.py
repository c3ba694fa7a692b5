"""Suggest feature taps of a network nobody named them for, from the shapes of its intermediate tensors.

One probe input of ``side^dims`` voxels; every intermediate tensor (an ONNX node's output, a torch module's
output) is recorded in the order it is computed with its stride (input side / tensor side). In an
encoder-decoder the strides rise to the deepest level and fall again, so

- ``bottleneck``: the last tensor at the largest stride before the strides fall;
- ``enc_mid`` / ``enc_low``: the last encoder tensor at stride 4 / 2 (a stage's output, not a layer inside it);
- ``dec_mid`` / ``dec_low``: the last decoder tensor at stride 4 / 2,

which is where medkd's own models put these taps (``models/base.py``). The same rule serves ONNX graphs
(``onnx_graph.onnx_records``) and torch modules (:func:`torch_records`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

Record = Tuple[str, Tuple[int, ...]]   # (tensor or module name, shape)


def _stride(shape: Sequence[int], side: int, dims: int) -> Optional[int]:
    """The one integer stride of a ``(1, C, *spatial)`` tensor of a ``side^dims`` probe, else None."""
    if len(shape) != 2 + dims or shape[0] != 1 or not isinstance(shape[1], int) or shape[1] <= 0:
        return None
    spatial = shape[2:]
    if any(not isinstance(s, int) or s <= 0 or side % s for s in spatial):
        return None
    strides = {side // s for s in spatial}
    return strides.pop() if len(strides) == 1 else None


def suggest_from_shapes(records: Sequence[Record], side: int, dims: int) -> Dict[str, str]:
    """Tap name -> record name for the records of one ``side^dims`` probe (see the module docstring)."""
    seq: List[Tuple[str, int]] = [(n, s) for n, shape in records
                                  if (s := _stride(shape, side, dims)) is not None]
    if not seq:
        return {}
    deepest = max(s for _, s in seq)
    if deepest < 4:
        return {}
    first = next(i for i, (_, s) in enumerate(seq) if s == deepest)
    end = first
    while end + 1 < len(seq) and seq[end + 1][1] == deepest:
        end += 1
    enc, dec = seq[:end + 1], seq[end + 1:]
    out = {"bottleneck": seq[end][0]}
    for tap, part, stride in (("enc_mid", enc, 4), ("enc_low", enc, 2), ("dec_mid", dec, 4), ("dec_low", dec, 2)):
        if stride >= deepest:
            continue
        hits = [n for n, s in part if s == stride]
        if hits:
            out[tap] = hits[-1]
    return out


def torch_records(module, in_channels: int, dims: int, side: int = 64) -> List[Record]:
    """(module path, output shape) of every submodule of ``module`` in the order they finish, for one
    ``1 x in_channels x side^dims`` probe (eval mode, no gradients; the mode is restored)."""
    import torch

    records: List[Record] = []
    handles = []

    def hook(name):
        def fn(_m, _i, out):
            if isinstance(out, (tuple, list)) and out:
                out = out[0]
            if isinstance(out, torch.Tensor):
                records.append((name, tuple(int(s) for s in out.shape)))
        return fn

    for name, sub in module.named_modules():
        if name:
            handles.append(sub.register_forward_hook(hook(name)))
    param = next(module.parameters(), None)
    x = torch.zeros((1, int(in_channels)) + (side,) * dims, device=param.device if param is not None else "cpu")
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(x)
    finally:
        module.train(was)
        for h in handles:
            h.remove()
    return records


def suggest_module_taps(module, in_channels: int, dims: int, side: int = 64) -> Dict[str, str]:
    """Tap name -> module path of a torch network (for ``--teacher-taps`` / ``teacher_taps``)."""
    return suggest_from_shapes(torch_records(module, in_channels, dims, side), side, dims)
