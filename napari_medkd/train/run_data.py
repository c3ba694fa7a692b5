"""The data of one training run: prepared training, validation and unlabelled cases (the labelled share
applied), and the patch sampler that draws from them (labelled cases only for a model trained alone).

The data set is validated first (headers: :func:`~napari_medkd.data.validate.require_valid`, the same
rules as ``medkd validate-data``), its masks once prepared (label values, empty masks); errors refuse
the run naming every bad file, warnings are printed and kept in ``RUN/data_warnings.txt``."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from ..config import RunConfig
from ..data.prepare import load_spec, prepare_case, preprocess_config, split_train_val
from ..data.validate import DataError, Problem, ValidationReport, check_masks, keep_warnings, require_valid
from .sampler import PatchSampler


class _Data:
    def __init__(self, spec, pcfg, train_prep, val_prep, extra_cases, warnings=()):
        self.spec, self.pcfg, self.train_prep, self.val_prep, self.extra_cases = \
            spec, pcfg, train_prep, val_prep, extra_cases
        self.warnings: List[Problem] = list(warnings)


def _unlabelled_cases(cfg: RunConfig, pcfg, warnings: List[Problem]) -> list:
    """The prepared images of ``data.unlabelled_root`` (validated as images: no masks expected)."""
    if not cfg.data.unlabelled_root:
        return []
    from ..data.datasets import load_dataset

    unl = load_dataset(cfg.data.unlabelled_root)
    warnings += require_valid(unl, masks=False)
    extra_cases = [prepare_case(c, pcfg) for c in unl.cases]
    for c in extra_cases:
        c.label = None
    return extra_cases


def _drop_labels(cfg: RunConfig, train_prep: list, seed: int) -> None:
    """Keep the labels of ``data.labelled_cases`` (or the ``labelled_fraction``) training cases only."""
    if cfg.data.labelled_cases is None and cfg.data.labelled_fraction >= 1.0:
        return
    keep = int(round(len(train_prep) * cfg.data.labelled_fraction))
    if cfg.data.labelled_cases is not None:
        keep = min(int(cfg.data.labelled_cases), len(train_prep))
    order = np.random.default_rng(seed + 1).permutation(len(train_prep))
    for i in order[keep:]:
        train_prep[i].label = None


def _check_prepared_masks(spec, cases: list, prepared: list) -> List[Problem]:
    """The pixel rules on the masks just prepared (label values among the classes, empty masks);
    raises :class:`DataError` naming every bad mask, else returns the warnings."""
    report = ValidationReport(str(spec.root))
    pairs = [(c.label, p.label) for c, p in zip(cases, prepared) if p.label is not None]
    check_masks(report, pairs, spec.class_names)
    if not report.ok:
        raise DataError(report.refusal())
    return report.warnings


def _check_kept_labels(cfg: RunConfig, train_prep: list) -> None:
    kept = [c for c in train_prep if c.label is not None]
    if kept and not any(c.label.any() for c in kept):
        raise DataError(f"{cfg.data.root}: the masks of all {len(kept)} labelled training case(s) kept "
                        "(data.labelled_cases / labelled_fraction) are empty; keep more, or other, cases")


def _load_data(cfg: RunConfig, main: bool, run_dir: Optional[Path] = None) -> _Data:
    """Prepared training, validation (main process only) and unlabelled cases, validated."""
    tc = cfg.train
    spec = load_spec(cfg.data)
    warnings = require_valid(spec)
    pcfg = preprocess_config(cfg.data, spec)
    train_cases, val_cases = split_train_val(spec.cases, cfg.data, tc.seed)
    if not train_cases:
        raise ValueError(f"{cfg.data.root}: no training cases")
    train_prep = [prepare_case(c, pcfg) for c in train_cases]
    val_prep = [prepare_case(c, pcfg) for c in val_cases] if main else []
    val_cases = val_cases if main else []
    warnings += _check_prepared_masks(spec, train_cases + val_cases, train_prep + val_prep)
    extra_cases = _unlabelled_cases(cfg, pcfg, warnings)
    _drop_labels(cfg, train_prep, tc.seed)
    _check_kept_labels(cfg, train_prep)
    if main:
        keep_warnings(warnings, run_dir)
    return _Data(spec, pcfg, train_prep, val_prep, extra_cases, warnings)


def _make_sampler(cfg: RunConfig, task, cases, model_dims: int, seed: int) -> PatchSampler:
    """The patch sampler of the run. A model trained alone sees its labelled cases only (an unlabelled
    sample would carry no loss and only thin the batch); a distilled one sees every case, with a fixed
    labelled share of each batch (``data.labelled_share``) when some cases are unlabelled."""
    share = None
    if not task.uses_unlabelled:
        cases = [c for c in cases if c.label is not None]
        if not cases:
            raise ValueError(f"{cfg.data.root}: none of the training cases has a mask, so there is nothing "
                             "to train on without a teacher; give masks, or distil from a teacher "
                             "(distill.teacher) on the unlabelled images")
    else:
        share = cfg.data.labelled_share
    return PatchSampler(cases, model_dims, cfg.data.patch_size, cfg.data.fg_prob, cfg.data.slice_axis,
                        cfg.data.augment, seed=seed, labelled_share=share)
