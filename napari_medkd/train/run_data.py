"""The data of one training run: prepared training, validation and unlabelled cases (the labelled share
applied), and the patch sampler that draws from them (labelled cases only for a model trained alone)."""
from __future__ import annotations

import numpy as np

from ..config import RunConfig
from ..data.prepare import load_spec, prepare_case, preprocess_config, split_train_val
from .sampler import PatchSampler


class _Data:
    def __init__(self, spec, pcfg, train_prep, val_prep, extra_cases):
        self.spec, self.pcfg, self.train_prep, self.val_prep, self.extra_cases = \
            spec, pcfg, train_prep, val_prep, extra_cases


def _load_data(cfg: RunConfig, main: bool) -> _Data:
    """Prepared training, validation (main process only) and unlabelled cases."""
    tc = cfg.train
    spec = load_spec(cfg.data)
    pcfg = preprocess_config(cfg.data, spec)
    train_cases, val_cases = split_train_val(spec.cases, cfg.data, tc.seed)
    if not train_cases:
        raise ValueError(f"{cfg.data.root}: no training cases")
    train_prep = [prepare_case(c, pcfg) for c in train_cases]
    val_prep = [prepare_case(c, pcfg) for c in val_cases] if main else []
    extra_cases = []
    if cfg.data.unlabelled_root:
        from ..data.datasets import load_dataset

        unl = load_dataset(cfg.data.unlabelled_root)
        extra_cases = [prepare_case(c, pcfg) for c in unl.cases]
        for c in extra_cases:
            c.label = None
    if cfg.data.labelled_cases is not None or cfg.data.labelled_fraction < 1.0:
        keep = int(round(len(train_prep) * cfg.data.labelled_fraction))
        if cfg.data.labelled_cases is not None:
            keep = min(int(cfg.data.labelled_cases), len(train_prep))
        order = np.random.default_rng(tc.seed + 1).permutation(len(train_prep))
        for i in order[keep:]:
            train_prep[i].label = None
    return _Data(spec, pcfg, train_prep, val_prep, extra_cases)


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
