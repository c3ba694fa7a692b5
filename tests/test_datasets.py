"""Finding cases in the three layouts, class names, and the 0/255 -> 0/1 label mapping."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medkd.data.datasets import file_stem, load_dataset, load_label

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=arr.ndim == 3), str(path))
    return path


def _rgb(seed: int, shape=(16, 20)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape + (3,), dtype=np.uint8)


def _mask(shape=(16, 20)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[4:9, 5:12] = 255
    return m


def test_file_stem():
    assert file_stem("a/b/case_01.nii.gz") == "case_01"
    assert file_stem("x.jpg") == "x" and file_stem("x.PNG") == "x"


def test_paired_split_folders(tiny_vessels):
    spec = load_dataset(tiny_vessels)
    assert spec.layout == "paired" and spec.dims == 2 and spec.modality == "RGB"
    assert len(spec.split("train")) == 4 and len(spec.split("test")) == 2
    assert all(c.label is not None and c.fov is not None for c in spec.cases)
    assert spec.class_names == {0: "background", 1: "foreground"}
    case = spec.split("test")[0]
    assert case.id == "c50" and case.image.name == "c50.png" and case.label.parent.name == "masks"
    lbl = load_label(case.label)
    assert lbl.shape == (64, 64) and set(np.unique(lbl)) == {0, 1}


def test_paired_flat_matches_by_stem_and_class_names(tmp_path):
    for i in range(3):
        _png(tmp_path / "images" / f"k{i}.jpg", _rgb(i))
        _png(tmp_path / "masks" / f"k{i}.png", _mask())
    spec = load_dataset(tmp_path, class_names={"0": "bg", "1": "polyp"})
    assert [c.split for c in spec.cases] == ["train"] * 3
    assert [(c.image.suffix, c.label.suffix) for c in spec.cases] == [(".jpg", ".png")] * 3
    assert spec.class_names == {0: "bg", 1: "polyp"}


def test_images_only_folder_is_unlabelled(tmp_path):
    for i in range(2):
        _png(tmp_path / f"u{i}.png", _rgb(i)[..., 0])
    spec = load_dataset(tmp_path)
    assert len(spec.cases) == 2 and all(c.label is None for c in spec.cases)
    assert spec.modality == "grey"


def test_msd_layout(tiny_msd):
    spec = load_dataset(tiny_msd)
    assert spec.layout == "msd" and spec.dims == 3 and spec.modality == "MR"
    assert spec.class_names == {0: "background", 1: "front", 2: "back"}
    assert len(spec.split("train")) == 4 and len(spec.split("test")) == 2
    assert all(c.label is not None for c in spec.cases)
    lbl = load_label(spec.cases[0].label)
    assert lbl.shape == (12, 32, 32) and set(np.unique(lbl)) == {0, 1, 2}  # multi-class values kept


def test_msd_unlabelled_test_list_only_existing(tmp_path, tiny_msd):
    root = tmp_path / "msd"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    for sub in ("imagesTr", "labelsTr"):
        (root / sub / "a.nii.gz").write_bytes((tiny_msd / sub / "blob_000.nii.gz").read_bytes())
    (root / "imagesTs" / "t.nii.gz").write_bytes((tiny_msd / "imagesTr" / "blob_001.nii.gz").read_bytes())
    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ", "2": "tumour"},
        "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}],
        "test": ["./imagesTs/t.nii.gz", "./imagesTs/missing.nii.gz"]}), encoding="utf-8")
    spec = load_dataset(root)
    assert spec.modality == "CT"
    assert [(c.id, c.split, c.label is None) for c in spec.cases] == [("a", "train", False), ("t", "test", True)]


def test_csv_manifest(tmp_path):
    for i in range(4):
        _png(tmp_path / "img" / f"p{i}.png", _rgb(i))
        _png(tmp_path / "lab" / f"p{i}.png", _mask())
    rows = ["image,label,split,id"] + [f"img/p{i}.png,lab/p{i}.png,{'test' if i == 3 else 'train'},case{i}"
                                       for i in range(4)]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    spec = load_dataset(tmp_path / "list.csv")
    assert spec.layout == "csv" and spec.root == tmp_path
    assert [c.id for c in spec.split("train")] == ["case0", "case1", "case2"]
    assert spec.split("test")[0].label == tmp_path / "lab" / "p3.png"


def test_csv_manifest_shared_columns(tmp_path):
    _png(tmp_path / "train/images/a.png", _rgb(0))
    _png(tmp_path / "train/masks/a.png", _mask())
    _png(tmp_path / "train/fov/a.png", _mask())
    (tmp_path / "manifest.csv").write_text(
        "split,stem,image,mask,fov,source\ntrain,a,train/images/a.png,train/masks/a.png,train/fov/a.png,x\n", encoding="utf-8")
    spec = load_dataset(tmp_path / "manifest.csv")
    (c,) = spec.cases
    assert c.id == "a" and c.fov.name == "a.png" and c.label.parent.name == "masks"


def test_empty_folder_raises_naming_it(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_dataset(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "nope")


def test_load_label_mappings(tmp_path):
    m = _mask()
    assert set(np.unique(load_label(_png(tmp_path / "bin.png", m)))) == {0, 1}
    multi = np.zeros((8, 8), np.uint8)
    multi[2:4] = 1
    multi[5:] = 3
    np.testing.assert_array_equal(load_label(_png(tmp_path / "multi.png", multi)), multi)
    rgb = np.repeat(m[..., None], 3, axis=2)
    np.testing.assert_array_equal(load_label(_png(tmp_path / "rgb.png", rgb)), m // 255)
    rgb[0, 0, 1] = 7
    with pytest.raises(ValueError, match="rgbbad.png"):
        load_label(_png(tmp_path / "rgbbad.png", rgb))


@pytest.mark.skipif(not (DATA / "Hippocampus").exists(), reason=f"real data {DATA} not present")
def test_real_hippocampus():
    spec = load_dataset(DATA / "Hippocampus")
    assert len(spec.cases) == 260 and spec.dims == 3 and spec.modality == "MR"
    assert len(spec.split("train")) == 208 and len(spec.split("test")) == 52
    assert sorted(spec.class_names) == [0, 1, 2]
    assert set(np.unique(load_label(spec.cases[0].label))) <= {0, 1, 2}


@pytest.mark.skipif(not (DATA / "DRIVE").exists(), reason=f"real data {DATA} not present")
def test_real_drive_and_manifest():
    spec = load_dataset(DATA / "DRIVE")
    assert (len(spec.split("train")), len(spec.split("test"))) == (20, 20)
    assert all(c.fov is not None and c.label is not None for c in spec.cases)
    assert spec.modality == "RGB" and spec.dims == 2
    assert set(np.unique(load_label(spec.cases[0].label))) == {0, 1}
    via_csv = load_dataset(DATA / "DRIVE" / "manifest.csv")
    assert sorted(c.image for c in via_csv.cases) == sorted(c.image for c in spec.cases)


@pytest.mark.skipif(not (DATA / "CHASE_DB1").exists(), reason=f"real data {DATA} not present")
def test_real_chase_and_kvasir():
    spec = load_dataset(DATA / "CHASE_DB1")
    assert (len(spec.split("train")), len(spec.split("test"))) == (20, 8)
    assert spec.cases[0].image.suffix == ".jpg" and spec.cases[0].label.suffix == ".png"
    if (DATA / "Kvasir-SEG").exists():
        kv = load_dataset(DATA / "Kvasir-SEG")
        assert (len(kv.split("train")), len(kv.split("test"))) == (880, 120)
        assert all(c.fov is None for c in kv.cases)
