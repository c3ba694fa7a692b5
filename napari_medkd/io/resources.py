"""Data shipped inside the package (and so inside the wheel): the sample data and the benchmark suites.

Found through ``importlib.resources`` from the installed package, never through the repository layout.
The package is installed as plain files (a wheel or an editable checkout), so the resource is a real
folder; SimpleITK and the data loaders need real paths.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import List


def package_path(*parts: str) -> Path:
    """``napari_medkd/<parts...>`` of the installed package, as a filesystem path."""
    res = files("napari_medkd")
    for p in parts:
        res = res / p
    return Path(str(res))


def sample_data_dir(name: str = "") -> Path:
    """The packaged sample data folder (``hippocampus``, ``vessels2d``), or the folder itself."""
    return package_path("sample_data", name) if name else package_path("sample_data")


def suite_names() -> List[str]:
    return sorted(p.stem for p in package_path("suites").glob("*.yaml"))


def suite_path(suite: str) -> Path:
    """A suite by name (``drive`` -> the packaged ``suites/drive.yaml``) or by path (anything with a
    suffix or a folder separator); ``FileNotFoundError`` names the packaged suites."""
    path = Path(suite)
    if not path.suffix and len(path.parts) == 1:
        path = package_path("suites", f"{suite}.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"suite {path} not found; packaged suites: {', '.join(suite_names())}")
    return path
