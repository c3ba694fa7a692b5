"""A MONAI bundle folder as a teacher: ``configs/inference.json`` (or ``.yaml``) + ``models/model.pt``.

The network is built from the config's ``network_def`` with ``monai.bundle.ConfigParser`` (no network
access: nothing is downloaded) and given the weights of ``models/model.pt`` (``torch.load`` with
``weights_only=True``; a ``{"model": ...}`` checkpoint too). Classes, channels, dimensions and licence
come from ``configs/metadata.json``, preprocessing from the config's transforms where they mean what
medkd's do (``bundle_config``). medkd never runs code from files: a ``network_def`` that needs Python
expressions (``$...``) or classes outside MONAI and torch is refused with the way round it (export the
bundle to TorchScript with ``monai.bundle ckpt_export`` and give the ``.ts`` file). Feature taps: module
paths the user names (``--teacher-taps enc_mid=model.1.submodule.0``; ``medkd teacher-info`` suggests
them from the shapes).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..registry import TEACHERS
from .base import Teacher, TeacherError, TeacherNet, freeze, module_taps, probe_classes
from .bundle_config import bundle_preprocess, config_lookup, licence_of, network_format
from .options import TeacherOptions, build_card

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
SAFE_PREFIXES = ("monai.", "torch.")


def _config_file(path: Path) -> Optional[Path]:
    return next((path / "configs" / n for n in CONFIG_NAMES if (path / "configs" / n).is_file()), None)


def is_bundle(path: Path) -> bool:
    return path.is_dir() and _config_file(path) is not None and (path / "models" / "model.pt").is_file()


def _unsafe(node: Any, lookup, depth: int = 0) -> Optional[str]:
    """The first part of ``node`` that would run code (an expression, a macro, a class outside MONAI/torch)."""
    if depth > 32:
        return "references nested too deeply"
    if isinstance(node, str):
        if node.startswith(("$", "%")):
            return node
        return _unsafe(lookup(node[1:]), lookup, depth + 1) if node.startswith("@") else None
    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str) and "." in target and not target.startswith(SAFE_PREFIXES):
            return f"_target_: {target}"
        if isinstance(target, str) and target.startswith(("$", "%", "@")):
            return f"_target_: {target}"
        return next((u for k, v in node.items() if k != "_target_" and (u := _unsafe(v, lookup, depth + 1))), None)
    if isinstance(node, (list, tuple)):
        return next((u for v in node if (u := _unsafe(v, lookup, depth + 1))), None)
    return None


def _build_network(path: Path, config: Dict[str, Any], config_file: Path):
    from monai.bundle import ConfigParser

    raw = config.get("network_def")
    if raw is None:
        raise TeacherError(f"{config_file} has no 'network_def'; medkd builds a bundle's network from it")
    bad = _unsafe(raw, config_lookup(config))
    if bad:
        raise TeacherError(f"{config_file}: network_def needs code outside MONAI and torch ({bad}); medkd does not "
                           "run code from files. Export the bundle to TorchScript (python -m monai.bundle "
                           "ckpt_export ...) and give the .ts file as the teacher")
    parser = ConfigParser({**config, "bundle_root": str(path)})
    try:
        net = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as exc:  # noqa: BLE001
        raise TeacherError(f"{config_file}: cannot build network_def ({type(exc).__name__}: {exc})") from exc
    weights = path / "models" / "model.pt"
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise TeacherError(f"{weights}: the weights do not fit the bundle's network_def: {exc}") from exc
    return net


def _read(path: Path) -> Dict[str, Any]:
    from monai.bundle import ConfigParser

    try:
        return dict(ConfigParser.load_config_file(str(path)))
    except Exception as exc:  # noqa: BLE001
        raise TeacherError(f"{path}: not a readable bundle config ({type(exc).__name__}: {exc})") from exc


def _first_int(*values: Any, default: int) -> int:
    return next((int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)), default)


@TEACHERS.register("monai_bundle", detect=is_bundle, order=15,
                   description="a MONAI bundle folder (configs/inference.json + models/model.pt)")
def open_bundle(path: Path, opts: TeacherOptions) -> Teacher:
    config_file = _config_file(path)
    config = _read(config_file)
    meta_file = path / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    net = freeze(_build_network(path, config, config_file)).to(torch.device(opts.device or "cpu"))
    pre, notes = bundle_preprocess(config)
    fmt, user, nd = network_format(meta), opts.preprocess, config.get("network_def") or {}
    in_ch = _first_int(user.get("in_channels"), fmt.get("in_channels"), nd.get("in_channels"), default=1)
    dims = _first_int(user.get("model_dims"), fmt.get("dims"), nd.get("spatial_dims"), default=3)
    k = fmt.get("num_classes") or probe_classes(net, in_ch, dims)
    if "size_divisor" not in user:
        notes.append("input sizes padded to multiples of 16 (--teacher-preprocess size_divisor=N to change)")
    card = build_card(f"bundle:{path.name}", in_channels=in_ch, num_classes=int(k), dims=dims, size_divisor=16,
                      class_names=fmt.get("class_names"), preprocess=pre, opts=opts)
    module = TeacherNet(net, card.in_channels, card.num_classes, int(card.model_dims), int(card.size_divisor),
                        taps=module_taps(net, opts.taps, "`medkd teacher-info BUNDLE` suggests module paths"))
    licence = licence_of(meta)
    if not licence and (path / "LICENSE").is_file():
        licence = (path / "LICENSE").read_text(encoding="utf-8", errors="replace").strip().splitlines()[0][:200]
    files = tuple(p for p in (config_file, meta_file, path / "models" / "model.pt") if p.is_file())
    return Teacher("monai_bundle", str(path), module, card, files=files, notes=notes, licence=licence)
