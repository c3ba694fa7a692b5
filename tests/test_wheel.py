"""The wheel carries what the installed package needs: the napari manifest, the sample data (napari
samples, `medkd pipeline`'s default data) and the benchmark suites (`medkd bench --suite NAME`)."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_wheel_ships_manifest_sample_data_and_suites(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    [wheel] = tmp_path.glob("napari_medkd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "napari_medkd/napari.yaml" in names
    assert "napari_medkd/sample_data/hippocampus/dataset.json" in names
    shipped = {n for n in names if n.startswith("napari_medkd/sample_data/")}
    on_disk = {p.relative_to(ROOT).as_posix() for p in (ROOT / "napari_medkd" / "sample_data").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert on_disk and on_disk == shipped
    suites = {p.relative_to(ROOT).as_posix() for p in (ROOT / "napari_medkd" / "suites").glob("*.yaml")}
    assert "napari_medkd/suites/drive.yaml" in suites and suites <= names
    pretrained = {p.relative_to(ROOT).as_posix() for p in (ROOT / "napari_medkd" / "pretrained").iterdir() if p.is_file()}
    assert "napari_medkd/pretrained/hippocampus_teacher.pt" in pretrained and pretrained <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "scripts/")) for n in names)
