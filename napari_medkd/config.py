"""Run configuration: dataclasses read from YAML with ``yaml.safe_load`` and written into every run."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from .io.atomic import write_text_atomic


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    root: str = ""
    class_names: Optional[Dict[int, str]] = None
    modality: Optional[str] = None          # CT | MR | RGB | grey; None = from the data set
    rgb_mode: str = "green"                 # green | rgb (fundus images)
    ct_window: List[float] = field(default_factory=lambda: [-160.0, 240.0])
    target_spacing: Optional[List[float]] = None  # resample to this spacing (x, y[, z]) before training
    slice_axis: int = 0                     # 3D volumes are cut into 2D slices along this numpy axis
    patch_size: int = 96
    fg_prob: float = 0.5                    # share of patches centred on foreground
    val_fraction: float = 0.2               # share of training cases held back for validation
    val_cases: Optional[List[str]] = None   # or explicit case ids
    augment: bool = True
    unlabelled_root: Optional[str] = None   # images without masks (semi-supervised distillation)
    labelled_fraction: float = 1.0          # share of training cases whose labels are used
    labelled_cases: Optional[int] = None    # or this many labelled training cases (the rest unlabelled)
    labelled_share: float = 0.5             # share of labelled samples in each distillation batch when
    #                                         some cases are unlabelled (methods.md §2.2: half and half)


@dataclass
class ModelConfig:
    name: str = "unet"
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    iterations: Optional[int] = None
    epochs: Optional[int] = None
    minutes: Optional[float] = None
    iters_per_epoch: int = 100
    val_every: int = 200                    # iterations between validations (and checkpoints)
    seed: int = 0
    device: str = "auto"                    # auto | cpu | cuda | cuda:N | mps
    amp: bool = True                        # mixed precision on GPU
    threads: Optional[int] = None           # torch CPU threads (None = all cores)
    log_every: int = 1


@dataclass
class DistillConfig:
    teacher: Optional[str] = None           # run folder of the trained teacher
    method: Optional[str] = None            # registered method / preset name
    terms: Optional[List[Dict[str, Any]]] = None  # [{name, weight, params}] overrides the preset
    stage_iterations: Dict[str, int] = field(default_factory=dict)
    cache_teacher: bool = False
    # loss balancing (distill/balance.py): each term's weight set once so its gradient is grad_ratio
    # (or the term's own ratio) times the segmentation gradient, and ramped in over the warm-up shares
    balance: str = "grad"                   # grad | none (keep the preset weights)
    grad_ratio: float = 0.5
    balance_batches: int = 4
    warmup: Optional[List[float]] = field(default_factory=lambda: [0.2, 0.6])


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RunConfig":
        d = dict(d or {})
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config section(s): {sorted(unknown)}")
        kw = {}
        for f in dataclasses.fields(cls):
            sub = d.get(f.name) or {}
            if not isinstance(sub, dict):
                raise ConfigError(f"config section '{f.name}' must be a mapping, got {type(sub).__name__}")
            sub_cls = f.default_factory  # type: ignore[misc]
            names = {g.name for g in dataclasses.fields(sub_cls)}
            bad = set(sub) - names
            if bad:
                raise ConfigError(f"unknown key(s) in '{f.name}': {sorted(bad)}; allowed: {sorted(names)}")
            kw[f.name] = sub_cls(**sub)
        cfg = cls(**kw)
        if cfg.data.class_names:
            cfg.data.class_names = {int(k): str(v) for k, v in cfg.data.class_names.items()}
        return cfg

    def merged(self, overrides: Dict[str, Any]) -> "RunConfig":
        d = self.to_dict()
        for section, values in overrides.items():
            for k, v in (values or {}).items():
                if v is not None:
                    d[section][k] = v
        return RunConfig.from_dict(d)


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    try:
        return RunConfig.from_dict(data)
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def save_config(cfg: RunConfig, path: str | Path) -> None:
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
