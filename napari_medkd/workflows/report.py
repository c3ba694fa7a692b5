"""The pipeline's report: a Markdown metrics table and a side-by-side figure."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np


def _best_slice(label: np.ndarray, axis: int = 0) -> int:
    other = tuple(i for i in range(label.ndim) if i != axis)
    counts = (label > 0).sum(axis=other)
    return int(np.argmax(counts)) if counts.max() > 0 else label.shape[axis] // 2


def side_by_side_figure(image: np.ndarray, truth: np.ndarray, masks: Dict[str, np.ndarray], path: Path,
                        title: str = "", slice_axis: int = 0, n_classes: Optional[int] = None) -> Path:
    """Image, ground truth and each model's mask (middle of the foreground for volumes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    if truth.ndim == 3:
        k = _best_slice(truth, slice_axis)
        take = lambda a: np.take(a, k, axis=slice_axis)  # noqa: E731
        img2 = take(image if image.ndim == 3 else image[..., 0])
        truth2, masks2 = take(truth), {n: take(m) for n, m in masks.items()}
    else:
        img2, truth2, masks2 = image, truth, masks
    n_classes = n_classes or int(max([truth2.max()] + [m.max() for m in masks2.values()])) + 1
    colours = ["#00000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0"]
    cmap = ListedColormap(colours[: max(2, n_classes)])
    panels = [("image", None), ("ground truth", truth2)] + [(n, m) for n, m in masks2.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (name, m) in zip(axes, panels):
        ax.imshow(img2, cmap=None if img2.ndim == 3 else "gray")
        if m is not None:
            ax.imshow(np.ma.masked_equal(m, 0), cmap=cmap, vmin=0, vmax=max(2, n_classes) - 1, alpha=0.6,
                      interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def metrics_table(results: Sequence, class_names: Dict[int, str]) -> str:
    """Markdown table: one row per model, Dice and HD95 (mean ± sd) per foreground class."""
    fg = [c for c in sorted(class_names) if c != 0]
    head = "| model | params | " + " | ".join(f"Dice {class_names[c]} | HD95 {class_names[c]}" for c in fg) + " |"
    sep = "|" + "---|" * (2 + 2 * len(fg))
    rows: List[str] = [head, sep]
    for label, params, res in results:
        cells = []
        for c in fg:
            d, h = res.summary.get(f"dice_{c}", {}), res.summary.get(f"hd95_{c}", {})
            cells.append(f"{d.get('mean', math.nan):.3f} ± {d.get('std', math.nan):.3f}")
            cells.append(f"{h.get('mean', math.nan):.2f} ± {h.get('std', math.nan):.2f}")
        rows.append(f"| {label} | {params:,} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
