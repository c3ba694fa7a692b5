"""What a MONAI bundle's configuration says about its network, read without running it.

A bundle (``configs/metadata.json``, ``configs/inference.json``; MONAI's ``ckpt_export`` puts the same two
files into a TorchScript archive) gives

- classes, input channels and dimensions: ``metadata.json`` ``network_data_format`` (the ``image`` input's
  ``num_channels`` and ``spatial_shape``, the output's ``num_channels`` and ``channel_def``);
- its licence: ``metadata.json`` ``license`` / ``copyright``, or a ``LICENSE`` file in the bundle;
- preprocessing: the intensity and spacing transforms of ``preprocessing`` mapped onto medkd's where the
  two mean the same (:data:`MAPPED`); the rest is listed in notes (and may be given with
  ``--teacher-preprocess``). Argument values are read as literals or ``@references`` to literals;
  ``$expressions`` are never evaluated.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

#: transforms that only move data around (loading, channel axis, types): nothing to map
STRUCTURAL = ("LoadImage", "EnsureChannelFirst", "AddChannel", "EnsureType", "ToTensor", "CastToType",
              "ToDevice", "CopyItems", "DeleteItems", "Identity", "SqueezeDim")
MAPPED = ("NormalizeIntensity (z-score of the whole image)", "ScaleIntensityRange (a CT window to [0, 1])",
          "Spacing (pixdim)")


def _short(target: str) -> str:
    name = str(target).rsplit(".", 1)[-1]
    return name[:-1] if name.endswith("d") and name[:-1] in _KNOWN else name


_KNOWN = set(STRUCTURAL) | {"NormalizeIntensity", "ScaleIntensityRange", "Spacing", "Orientation",
                            "ScaleIntensity", "CropForeground", "Resize"}


def literal(value: Any, lookup: Callable[[str], Any]) -> Tuple[bool, Any]:
    """``(True, value)`` for a literal (following ``@id`` references to literals), ``(False, None)`` else."""
    for _ in range(8):
        if isinstance(value, str) and value.startswith("@"):
            value = lookup(value[1:])
            continue
        if isinstance(value, str) and value.startswith("$"):
            return False, None
        if isinstance(value, (list, tuple)) and not all(literal(v, lookup)[0] for v in value):
            return False, None
        return True, value
    return False, None


def _args(t: Dict[str, Any], lookup, keys: Tuple[str, ...], defaults: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    out = {}
    for k in keys:
        ok, v = literal(t.get(k, defaults.get(k)), lookup)
        if not ok:
            return None
        out[k] = v
    return out


def _map_one(name: str, t: Dict[str, Any], lookup) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(medkd preprocessing of one transform, or None; a note, or None)."""
    if name == "NormalizeIntensity":
        a = _args(t, lookup, ("nonzero", "subtrahend", "divisor"), {"nonzero": False})
        if a and not a["nonzero"] and a["subtrahend"] is None and a["divisor"] is None:
            return {"modality": "MR", "percentiles": [0.0, 100.0]}, None
        return None, f"{name} with nonzero/subtrahend/divisor is not medkd's z-score; not mapped"
    if name == "ScaleIntensityRange":
        a = _args(t, lookup, ("a_min", "a_max", "b_min", "b_max", "clip"), {"clip": False, "b_min": None})
        numbers = a and all(isinstance(a[k], (int, float)) for k in ("a_min", "a_max"))
        if numbers and a["clip"] and a["b_min"] == 0 and a["b_max"] == 1 and a["a_max"] > a["a_min"]:
            return {"modality": "CT", "ct_window": [float(a["a_min"]), float(a["a_max"])]}, None
        return None, f"{name} {a} is not a clipped window to [0, 1]; not mapped"
    if name == "Spacing":
        a = _args(t, lookup, ("pixdim",), {})
        if a and isinstance(a["pixdim"], (list, tuple)):
            return {"target_spacing": [float(v) for v in a["pixdim"]]}, None
        return None, f"{name} with pixdim {t.get('pixdim')!r} not mapped"
    if name in STRUCTURAL:
        return None, None
    return None, f"the bundle's {name} transform has no medkd counterpart; it is not applied"


def preprocess_from_transforms(transforms: List[Any], lookup: Callable[[str], Any]) -> Tuple[Dict[str, Any], List[str]]:
    """medkd preprocessing settings of a bundle's ``preprocessing#transforms`` and notes on the rest."""
    pre: Dict[str, Any] = {}
    notes: List[str] = []
    for t in transforms or []:
        ok, t = literal(t, lookup)
        if not ok or not isinstance(t, dict) or "_target_" not in t:
            notes.append(f"a preprocessing entry {str(t)[:60]!r} was not read")
            continue
        mapped, note = _map_one(_short(t["_target_"]), t, lookup)
        pre.update(mapped or {})
        if note:
            notes.append(note)
    return pre, notes


def network_format(meta: Dict[str, Any]) -> Dict[str, Any]:
    """``in_channels``, ``dims``, ``num_classes``, ``class_names`` from ``network_data_format`` (those given)."""
    fmt = (meta or {}).get("network_data_format") or {}
    inputs, outputs = fmt.get("inputs") or {}, fmt.get("outputs") or {}
    image = inputs.get("image") or next(iter(inputs.values()), {})
    pred = outputs.get("pred") or next(iter(outputs.values()), {})
    out: Dict[str, Any] = {}
    if isinstance(image.get("num_channels"), int):
        out["in_channels"] = image["num_channels"]
    if isinstance(image.get("spatial_shape"), list) and len(image["spatial_shape"]) in (2, 3):
        out["dims"] = len(image["spatial_shape"])
    if isinstance(pred.get("num_channels"), int):
        out["num_classes"] = pred["num_channels"]
    names = pred.get("channel_def")
    if isinstance(names, dict) and names:
        out["class_names"] = {int(k): str(v) for k, v in names.items()}
    return out


def licence_of(meta: Dict[str, Any]) -> str:
    meta = meta or {}
    return str(meta.get("license") or meta.get("licence") or meta.get("copyright") or "")


def config_lookup(config: Dict[str, Any]) -> Callable[[str], Any]:
    """Raw value of a config id (``preprocessing#transforms#0``, ``image_key``); None when absent."""
    def lookup(ref: str) -> Any:
        node: Any = config
        for part in str(ref).replace("::", "#").split("#"):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return node

    return lookup


def bundle_preprocess(config: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """medkd preprocessing of an inference config (its ``preprocessing`` Compose) and notes."""
    lookup = config_lookup(config)
    ok, pre = literal(config.get("preprocessing"), lookup)
    transforms = pre.get("transforms") if ok and isinstance(pre, dict) else None
    if not isinstance(transforms, list):
        return {}, ["the bundle's preprocessing could not be read; give --teacher-preprocess"]
    return preprocess_from_transforms(transforms, lookup)
