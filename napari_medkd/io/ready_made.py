"""Ready-made models: a hippocampus teacher and student trained by the project (``napari_medkd/pretrained/``).

``models.json`` there lists each model: its file, SHA-256, licence, citation, how it was trained and its
Dice on the Hippocampus test split. A model shipped in the package is used from there (its checksum
checked); one that is not (an entry with a ``url``, or a package built without the weights) is fetched on
first use into the user cache (``~/.cache/napari-medkd/models``, ``$XDG_CACHE_HOME`` respected), written
atomically and kept only if its SHA-256 matches. A download that cannot start or stalls fails within
``timeout`` seconds with a message saying what to do; it never hangs.
"""
from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

from .resources import package_path

CHUNK = 1 << 20


class ReadyMadeError(RuntimeError):
    """A ready-made model that cannot be found, fetched or trusted; the message says why and what to do."""


def catalogue(folder: Optional[Path] = None) -> Dict[str, Dict[str, Any]]:
    """The entries of ``models.json`` (name -> entry) of the packaged folder or ``folder``."""
    path = Path(folder or package_path("pretrained")) / "models.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def names(role: Optional[str] = None) -> List[str]:
    """The ready-made models (``role``: only teachers or students)."""
    return [n for n, e in catalogue().items() if role is None or e.get("role") == role]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "napari-medkd" / "models"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, sha256: str, target: Path, timeout: float = 20.0) -> Path:
    """``url`` (http(s) or file://) into ``target``, kept only if its SHA-256 is ``sha256``; an existing
    ``target`` with that checksum is reused. Errors are :class:`ReadyMadeError` naming the URL and the fix."""
    target = Path(target)
    if target.is_file() and sha256_file(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as fh:
            for block in iter(lambda: resp.read(CHUNK), b""):
                h.update(block)
                fh.write(block)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise ReadyMadeError(f"could not download the ready-made model from {url} ({reason}). Check the network "
                             f"connection (or proxy), or download the file by hand and put it at {target}") from None
    if h.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise ReadyMadeError(f"the file downloaded from {url} has SHA-256 {h.hexdigest()}, not the expected {sha256}; "
                             "it was not kept (a broken or changed download); try again, or report it")
    os.replace(tmp, target)
    return target


def model_path(name: str, kind: str = "pt", *, folder: Optional[Path] = None, cache: Optional[Path] = None,
               url: Optional[str] = None, timeout: float = 20.0) -> Path:
    """The file of ready-made model ``name`` (``kind``: ``pt`` weights and card, or ``onnx``): the packaged one
    if present and intact, else fetched from ``url`` (default: the entry's) into ``cache``."""
    cat = catalogue(folder)
    if name not in cat:
        raise ReadyMadeError(f"no ready-made model '{name}'; there are: {', '.join(cat) or 'none'}")
    entry = cat[name]
    file_key, sum_key, url_key = ("file", "sha256", "url") if kind == "pt" else ("onnx", "onnx_sha256", "onnx_url")
    if not entry.get(file_key):
        raise ReadyMadeError(f"ready-made model '{name}' has no {kind} file")
    local = Path(folder or package_path("pretrained")) / entry[file_key]
    if local.is_file():
        if sha256_file(local) != entry[sum_key]:
            raise ReadyMadeError(f"{local} does not match its checksum in models.json; reinstall napari-medkd")
        return local
    url = url or entry.get(url_key)
    if not url:
        raise ReadyMadeError(f"ready-made model '{name}' is not in this installation ({local} is missing) and has "
                             "no download address; reinstall napari-medkd from a full wheel")
    return fetch(url, entry[sum_key], Path(cache or cache_dir()) / entry[file_key], timeout=timeout)


def describe(name: str) -> str:
    """One paragraph for the user: what it is, its test Dice, licence and citation."""
    e = catalogue()[name]
    m = e.get("test_metrics", {})
    dice = ", ".join(f"{e['classes'].get(k, k)} {v:.3f}" for k, v in (m.get("dice") or {}).items())
    return (f"{name}: {e.get('training', '')}. Test Dice ({m.get('test_cases', '?')} cases): {dice}. "
            f"Licence {e.get('licence')}; cite {e.get('citation')}.")
