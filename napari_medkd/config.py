"""Run configuration: dataclasses read from YAML with ``yaml.safe_load`` and written into every run."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .io.atomic import write_text_atomic


class ConfigError(ValueError):
    pass


# -- numeric ranges: checked here for every config, and at parse time by the CLI (cli_args.py) -------------
Rule = Tuple[float, Optional[float], bool]   # (low, high or None, low excluded)
POSITIVE: Rule = (0.0, None, True)
NON_NEGATIVE: Rule = (0.0, None, False)
FRACTION: Rule = (0.0, 1.0, False)


def _wanted(rule: Rule, integer: bool) -> str:
    low, high, low_open = rule
    kind = "whole number" if integer else "number"
    if high is not None:
        return f"a {kind} from {low:g} to {high:g}"
    if low == 0:
        return f"a {'positive' if low_open else 'non-negative'} {kind}"
    return f"a {kind} {'above' if low_open else 'of at least'} {low:g}"


def range_problem(value: float, rule: Rule, integer: bool = False) -> Optional[str]:
    """None if ``value`` is a finite number within ``rule``, else what it must be (``must be ...``)."""
    low, high, low_open = rule
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and (high is None or value <= high)
    return None if ok and (not integer or float(value).is_integer()) else f"must be {_wanted(rule, integer)}"


RANGES: Dict[str, Dict[str, Rule]] = {
    "data": {"patch_size": POSITIVE, "fg_prob": FRACTION, "val_fraction": FRACTION, "labelled_fraction": FRACTION,
             "labelled_cases": NON_NEGATIVE, "labelled_share": FRACTION, "slice_axis": (0.0, 2.0, False)},
    "train": {"batch_size": POSITIVE, "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "iterations": POSITIVE,
              "epochs": POSITIVE, "minutes": POSITIVE, "iters_per_epoch": POSITIVE, "val_every": POSITIVE,
              "seed": NON_NEGATIVE, "threads": POSITIVE, "log_every": POSITIVE},
    "distill": {"grad_ratio": NON_NEGATIVE, "balance_batches": POSITIVE},
}


def _checked_number(where: str, value: Any, rule: Rule, integer: bool) -> Any:
    """``value`` as a number (YAML reads ``1e-3`` as text), or a ConfigError naming the setting."""
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = float(value)
    except ValueError:
        raise ConfigError(f"{where} must be a number, got {value!r}") from None
    problem = range_problem(number, rule, integer)
    if problem:
        raise ConfigError(f"{where} {problem}, got {value!r}")
    return int(number) if integer else number


def _check_ranges(cfg: "RunConfig") -> None:
    for section, rules in RANGES.items():
        sub = getattr(cfg, section)
        types = {f.name: str(f.type) for f in dataclasses.fields(sub)}
        for key, rule in rules.items():
            integer = "int" in types[key]
            setattr(sub, key, _checked_number(f"{section}.{key}", getattr(sub, key), rule, integer))


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
    labels_root: Optional[str] = None       # masks for some of a plain folder of scans, matched by name
    percentiles: List[float] = field(default_factory=lambda: [0.5, 99.5])  # MR / grey intensity clipping


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
    teacher: Optional[str] = None           # run folder, .onnx, TorchScript or MONAI bundle of the teacher
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
    # a teacher that is not a run folder (teachers/): its preprocessing where the file does not say it
    # (PreprocessConfig keys, size_divisor, class_names, model_dims), named internal tensors or module paths
    # as feature taps ({tap: tensor or module}), and the folder of its cached outputs (teachers/cache.py)
    teacher_preprocess: Dict[str, Any] = field(default_factory=dict)
    teacher_taps: Dict[str, str] = field(default_factory=dict)
    teacher_cache_dir: Optional[str] = None
    # how the frozen teacher runs in each step (teachers/backend.py): auto | torch | torch_bf16 | onnxruntime |
    # onnxruntime_int8 | cache; a converted teacher is checked against torch on real batches before it is used
    teacher_backend: str = "auto"


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
        _check_ranges(cfg)
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
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not a YAML run configuration: it is not UTF-8 text (byte "
                          f"0x{exc.object[exc.start]:02x} at offset {exc.start}); is it a binary file?") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
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
