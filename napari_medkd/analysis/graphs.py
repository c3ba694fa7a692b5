"""Region graphs: the graphs that SKD / Graph Flow / MSKD / EMKD distil, on one plane of an image.

For the plane through a position, teacher and student features at one tap (the student resized to
the teacher's grid, as the terms do) become graph nodes with the distillation terms' own helpers:

- patch nodes: ``pool_nodes`` (max-pooled patches, SKD pair-wise / Graph Flow / MSKD),
- class-region prototypes: ``class_masks`` + ``region_prototypes`` of the teacher's predicted
  classes (EMKD RAD / MSKD class graph),

with ``cosine_affinity`` edges. No Qt here; torch is imported inside functions. The region-graph
widget draws the result (``region_graphs_of_runs``) as Points and Shapes layers.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from .features import feature_to_image_coords, plane_taps

GRAPH_TYPES = ("patch nodes (SKD / Graph Flow / MSKD)", "class-region prototypes (EMKD / MSKD class)")
TAPS = ("bottleneck", "enc_high", "enc_mid", "enc_low", "dec_mid", "dec_low")
SIDES = ("teacher", "student", "difference")


def top_edges(a: np.ndarray, k: int, valid: np.ndarray) -> List[Tuple[int, int, float]]:
    """The ``k`` node pairs (i < j, both valid) with the largest ``|a_ij|``."""
    iu, ju = np.triu_indices(a.shape[0], 1)
    keep = valid[iu] & valid[ju] & np.isfinite(a[iu, ju])
    iu, ju = iu[keep], ju[keep]
    vals = a[iu, ju]
    order = np.argsort(-np.abs(vals), kind="stable")[:k]
    return [(int(iu[o]), int(ju[o]), float(vals[o])) for o in order]


def _patch_graph(t, s, max_nodes: int):
    from ..distill.terms._common import adapt_patch, pool_nodes

    size = t.shape[2:]
    p = adapt_patch(size, 1, max_nodes)
    grid = [math.ceil(n / p) for n in size]
    centres = np.stack(np.meshgrid(*[np.minimum(np.arange(g) * p + (p - 1) / 2, n - 1) for g, n in zip(grid, size)],
                                   indexing="ij"), -1).reshape(-1, len(size))
    nt, ns = pool_nodes(t, p, "max", max_nodes)[0], pool_nodes(s, p, "max", max_nodes)[0]
    return nt, ns, centres, np.ones(len(centres), bool), [f"{tuple(int(v) for v in c)}" for c in centres]


def _class_graph(t, s, logits, num_classes: int, names: Dict[int, str]):
    import torch.nn.functional as F

    from ..distill.terms._common import class_masks, region_prototypes

    pred = logits.argmax(1, keepdim=True).float()
    lab = F.interpolate(pred, size=tuple(t.shape[2:]), mode="nearest")[:, 0].long()
    masks = class_masks(lab, num_classes)
    smooth = [0.0] + [1.0] * (num_classes - 1)
    nt, ns = region_prototypes(t, masks, smooth)[0], region_prototypes(s, masks, smooth)[0]
    m = masks[0].cpu().numpy()
    present = m.reshape(num_classes, -1).sum(1) > 0
    grids = np.meshgrid(*[np.arange(n) for n in m.shape[1:]], indexing="ij")
    centres = np.array([[float((g * m[k]).sum() / max(m[k].sum(), 1)) for g in grids] for k in range(num_classes)])
    return nt, ns, centres, present, [names.get(k, str(k)) for k in range(num_classes)]


def _node_coords(pos: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Image-plane node positions -> data coordinates of the image (the slice index inserted)."""
    return np.insert(pos, axis, index, axis=1) if axis >= 0 else pos


def region_graphs(t_lm, s_lm, img, position: Sequence[int], kind: str, tap: str, max_nodes: int = 144,
                  top_k: int = 40) -> Dict[str, Any]:
    """Nodes, node attributes, affinities and top-``top_k`` edges of teacher, student and difference.

    ``t_lm``/``s_lm``: ``LoadedModel``s; ``img``: a ``MedicalImage``; ``position``: data indices of
    the image's spatial axes (the graph is built on the plane through it); ``kind``: one of
    ``GRAPH_TYPES``. ``positions`` are image-plane coordinates, ``coords`` image data coordinates;
    ``edges[side]`` are ``(i, j, affinity)`` between valid nodes.
    """
    from ..distill.terms._common import cosine_affinity, resize

    ft, mi, axis = plane_taps(t_lm, img, [tap], position)
    fs, _, _ = plane_taps(s_lm, img, [tap], position)
    t = ft[tap].float()
    s = resize(fs[tap].float(), t.shape[2:])
    if kind == GRAPH_TYPES[0]:
        nt, ns, centres, valid, labels = _patch_graph(t, s, max_nodes)
    else:
        nt, ns, centres, valid, labels = _class_graph(t, s, ft["logits"], t_lm.card.num_classes,
                                                         t_lm.class_names)
    a_t = cosine_affinity(nt[None])[0].cpu().numpy()
    a_s = cosine_affinity(ns[None])[0].cpu().numpy()
    pos = feature_to_image_coords(centres, t.shape[2:], mi)
    valid = valid & np.all((pos >= -0.5) & (pos <= np.asarray(mi.image_plane) - 0.5), axis=1)
    index = int(position[axis]) if axis >= 0 else 0
    out: Dict[str, Any] = {"positions": pos, "valid": valid, "labels": labels, "axis": axis, "index": index,
                           "coords": _node_coords(pos, axis, index),
                           "affinity": {"teacher": a_t, "student": a_s, "difference": a_s - a_t}}
    norms = {"teacher": nt.norm(dim=-1).cpu().numpy(), "student": ns.norm(dim=-1).cpu().numpy()}
    norms["difference"] = norms["student"] - norms["teacher"]
    out["norm"] = norms
    n = max(1, int(valid.sum()) - 1)
    out["degree"] = {k: (np.where(valid[None], a, 0).sum(1) - np.diag(a)) / n for k, a in out["affinity"].items()}
    out["edges"] = {k: top_edges(a, top_k, valid) for k, a in out["affinity"].items()}
    return out


def region_graphs_of_runs(teacher_run, student_run, img, position: Sequence[int], kind: str, tap: str,
                          max_nodes: int = 144, top_k: int = 40) -> Dict[str, Any]:
    """``region_graphs`` of the models in two run folders (what the region-graph widget computes)."""
    from ..train.run_model import load_run_model

    return region_graphs(load_run_model(teacher_run), load_run_model(student_run), img, position, kind, tap,
                         max_nodes, top_k)
