"""Data set validation: each kind of bad data gives a problem naming the bad file; good sets pass."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medkd.data.validate import validate_dataset

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=arr.ndim == 3), str(path))
    return path


def _pair_set(root: Path, n: int = 3, shape=(16, 16)) -> Path:
    """A clean paired 2D set: grey images, 0/255 masks and FOV masks."""
    rng = np.random.default_rng(0)
    for i in range(n):
        _png(root / "images" / f"c{i}.png", rng.integers(0, 255, shape, dtype=np.uint8))
        m = np.zeros(shape, np.uint8)
        m[3:8, 4:10] = 255
        _png(root / "masks" / f"c{i}.png", m)
        _png(root / "fov" / f"c{i}.png", np.full(shape, 255, np.uint8))
    return root


def _problems_for(report, path: Path):
    return [p.message for p in report.problems if Path(p.file) == path]


def _assert_flags(report, path: Path, words: str):
    msgs = _problems_for(report, path)
    assert not report.ok
    assert any(words in m for m in msgs), f"no '{words}' problem for {path}: {report.format()}"
    assert str(path) in report.format()


def test_clean_paired_set_is_ok(tmp_path):
    rep = validate_dataset(_pair_set(tmp_path))
    assert rep.ok, rep.format()
    s = rep.summary
    assert s["cases"] == {"train": 3} and s["channels"] == {1: 3} and s["with_fov"] == 3
    assert s["image_size"] == {"min": [16, 16], "max": [16, 16]}
    assert s["classes"][1]["fraction"] == pytest.approx(30 / 256)
    assert "OK" in rep.format()


def test_clean_sets_from_fixtures(tiny_vessels, tiny_msd):
    rep = validate_dataset(tiny_vessels)
    assert rep.ok, rep.format()
    assert rep.summary["cases"] == {"test": 2, "train": 4} and rep.summary["channels"] == {3: 6}
    rep3 = validate_dataset(tiny_msd)
    assert rep3.ok, rep3.format()
    assert rep3.summary["dims"] == 3 and rep3.summary["spacing"]["min"] == [1, 1, 2]
    assert set(rep3.summary["classes"]) == {0, 1, 2}


def test_image_without_mask(tmp_path):
    root = _pair_set(tmp_path)
    (root / "masks" / "c1.png").unlink()
    _assert_flags(validate_dataset(root), root / "images" / "c1.png", "without mask")


def test_mask_without_image(tmp_path):
    root = _pair_set(tmp_path)
    extra = _png(root / "masks" / "ghost.png", np.zeros((16, 16), np.uint8))
    _assert_flags(validate_dataset(root), extra, "without image")


def test_size_mismatch_and_fov_mismatch(tmp_path):
    root = _pair_set(tmp_path)
    _png(root / "masks" / "c0.png", np.zeros((16, 12), np.uint8))
    _png(root / "fov" / "c2.png", np.zeros((10, 16), np.uint8))
    rep = validate_dataset(root)
    _assert_flags(rep, root / "masks" / "c0.png", "size")
    _assert_flags(rep, root / "fov" / "c2.png", "FOV")


def test_label_value_outside_classes(tmp_path):
    root = _pair_set(tmp_path)
    m = np.zeros((16, 16), np.uint8)
    m[2:5, 2:5] = 1
    m[9, 9] = 7
    _png(root / "masks" / "c2.png", m)
    _assert_flags(validate_dataset(root), root / "masks" / "c2.png", "[7]")
    assert validate_dataset(root, class_names={0: "bg", 1: "a", 7: "b"}).ok


def test_unreadable_and_zero_byte_files(tmp_path):
    root = _pair_set(tmp_path)
    (root / "images" / "c0.png").write_bytes(np.random.default_rng(1).bytes(300))
    (root / "masks" / "c1.png").write_bytes(b"")
    rep = validate_dataset(root)
    _assert_flags(rep, root / "images" / "c0.png", "unreadable")
    _assert_flags(rep, root / "masks" / "c1.png", "0 bytes")


def test_geometry_mismatch_3d(tmp_path, tiny_msd):
    import shutil

    root = tmp_path / "msd"
    shutil.copytree(tiny_msd, root)
    lab_path = root / "labelsTr" / "blob_002.nii.gz"
    lab = sitk.ReadImage(str(lab_path))
    lab.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(lab, str(lab_path))
    _assert_flags(validate_dataset(root), lab_path, "spacing")


def test_empty_data_set(tmp_path):
    (tmp_path / "images").mkdir()
    rep = validate_dataset(tmp_path)
    assert not rep.ok and Path(rep.problems[0].file) == tmp_path and "empty" in rep.problems[0].message
    missing = validate_dataset(tmp_path / "nope")
    assert not missing.ok and "nope" in missing.format()


@pytest.mark.skipif(not (DATA / "DRIVE").exists(), reason=f"real data {DATA} not present")
def test_real_drive_is_ok_and_fast():
    t0 = time.perf_counter()
    rep = validate_dataset(DATA / "DRIVE")
    assert time.perf_counter() - t0 < 20
    assert rep.ok, rep.format()
    assert rep.summary["cases"] == {"test": 20, "train": 20} and rep.summary["channels"] == {3: 40}
    assert 0.05 < rep.summary["classes"][1]["fraction"] < 0.2  # vessels are ~9-13 % of the image
