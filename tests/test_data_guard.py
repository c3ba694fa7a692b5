"""Issue 15, items 2, 3 and 7: every command that reads a data set refuses what `medkd validate-data`
rejects (naming every bad file) and keeps the warnings; dataset.json paths never leave the data root;
a DICOM series with a missing or corrupt slice is refused, and the CLI chooses among several series."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medkd.cli import main
from napari_medkd.data.datasets import escapes_root, load_dataset
from napari_medkd.data.validate import DataError, check_dataset, require_valid, validate_dataset
from napari_medkd.io import ImageReadError, MedicalImage, list_dicom_series, read_image, write_dicom_series
from napari_medkd.train.engine import run_training

from conftest import SHARED_DATA, needs_shared
from test_engine import tiny_cfg


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_nifti(path: Path, **geometry) -> None:
    img = sitk.ReadImage(str(path))
    for key, value in geometry.items():
        getattr(img, f"Set{key}")(value)
    sitk.WriteImage(img, str(path))


def _rewrite_label(path: Path, fn) -> None:
    img = sitk.ReadImage(str(path))
    out = sitk.GetImageFromArray(fn(sitk.GetArrayFromImage(img)).astype(np.uint8))
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path))


def _json(root: Path) -> dict:
    return json.loads((root / "dataset.json").read_text(encoding="utf-8"))


def _write_json(root: Path, meta: dict) -> None:
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")


def _files(err) -> str:
    return str(err.value)


# -- item 2: one validation for every command ---------------------------------------------------------

def test_misaligned_masks_are_refused_by_train_naming_every_file(tiny_msd, tmp_path):
    root = _copy(tiny_msd, tmp_path / "msd")
    lab = root / "labelsTr"
    _edit_nifti(lab / "blob_000.nii.gz", Spacing=(1.0, 1.0, 3.0))
    _edit_nifti(lab / "blob_001.nii.gz", Origin=(0.0, 0.0, 0.0))
    _edit_nifti(lab / "blob_002.nii.gz", Direction=(-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    report = check_dataset(load_dataset(root))  # headers only
    msgs = {Path(p.file).name: p.message for p in report.problems}
    assert "spacing" in msgs["blob_000.nii.gz"] and "origin" in msgs["blob_001.nii.gz"]
    assert "direction" in msgs["blob_002.nii.gz"] and "np.float64" not in report.format()
    with pytest.raises(DataError) as err:
        run_training(tiny_cfg(root, iterations=1), tmp_path / "run")
    for name in ("blob_000", "blob_001", "blob_002"):
        assert str(lab / f"{name}.nii.gz") in _files(err)
    assert {p.file for p in validate_dataset(root).problems} >= {p.file for p in report.problems}  # same rules


def test_a_mask_listed_but_missing_is_refused_not_trained_as_maskless(tiny_msd, tmp_path):
    root = _copy(tiny_msd, tmp_path / "msd")
    (root / "labelsTr" / "blob_001.nii.gz").unlink()
    with pytest.raises(DataError, match="blob_001.nii.gz"):
        run_training(tiny_cfg(root, iterations=1), tmp_path / "run")
    assert not validate_dataset(root).ok


def test_paired_image_without_mask_is_refused_by_train(tiny_vessels, tmp_path):
    root = _copy(tiny_vessels, tmp_path / "v")
    (root / "train" / "masks" / "c01.png").unlink()
    with pytest.raises(DataError, match=r"c01.png: image without mask"):
        run_training(tiny_cfg(root, iterations=1), tmp_path / "run")


def test_label_outside_the_classes_is_refused_by_train_naming_the_file(tiny_msd, tmp_path):
    root = _copy(tiny_msd, tmp_path / "msd")
    bad = root / "labelsTr" / "blob_003.nii.gz"
    _rewrite_label(bad, lambda a: np.where(a == 2, 7, a))
    with pytest.raises(DataError, match=r"blob_003.nii.gz: label values \[7\] are not among the classes"):
        run_training(tiny_cfg(root, iterations=1, seed=0), tmp_path / "run")


def test_all_empty_masks_are_refused_and_some_empty_are_warnings_kept_in_the_run(tiny_msd, tmp_path, capsys):
    root = _copy(tiny_msd, tmp_path / "msd")
    for i in range(6):
        _rewrite_label(root / "labelsTr" / f"blob_{i:03d}.nii.gz", np.zeros_like)
    with pytest.raises(DataError, match="masks are empty"):
        run_training(tiny_cfg(root, iterations=1), tmp_path / "run")
    rep = validate_dataset(root)
    assert not rep.ok and len(rep.warnings) == 6 and "all 6 masks are empty" in rep.format()
    shutil.copy(tiny_msd / "labelsTr" / "blob_000.nii.gz", root / "labelsTr" / "blob_000.nii.gz")
    shutil.copy(tiny_msd / "labelsTr" / "blob_001.nii.gz", root / "labelsTr" / "blob_001.nii.gz")
    rep = validate_dataset(root)
    assert rep.ok and {Path(w.file).name for w in rep.warnings} == {f"blob_00{i}.nii.gz" for i in (2, 3, 4, 5)}
    run = tmp_path / "run2"
    assert run_training(tiny_cfg(root, iterations=1, val_every=1), run)["status"] == "finished"
    kept = (run / "data_warnings.txt").read_text(encoding="utf-8")
    assert "blob_002.nii.gz: mask is empty" in kept and "blob_003.nii.gz: mask is empty" in kept
    assert "data warning(s)" in capsys.readouterr().err


def test_semi_supervised_sets_without_masks_still_train(tiny_vessels, tmp_path):
    images_only = tiny_vessels / "test" / "images"
    assert require_valid(load_dataset(images_only), masks=False) == []
    cfg = tiny_cfg(tiny_vessels, iterations=1)
    cfg.data.labelled_cases = 1
    cfg.data.unlabelled_root = str(images_only)
    assert run_training(cfg, tmp_path / "run")["status"] == "finished"


def test_only_cases_said_to_be_labelled_need_a_mask(tiny_msd, tmp_path):
    """An entry without a label (dataset.json, CSV) is an unlabelled case; an image in imagesTr/ beside
    a labelsTr/ folder (no dataset.json) or in images/ beside masks/ is said to be labelled."""
    root = _copy(tiny_msd, tmp_path / "msd")
    meta = _json(root)
    del meta["training"][3]["label"]
    _write_json(root, meta)
    spec = load_dataset(root)
    assert spec.split("train")[3].label is None and check_dataset(spec).ok
    (root / "dataset.json").unlink()
    (root / "labelsTr" / "blob_003.nii.gz").unlink()
    report = check_dataset(load_dataset(root))
    assert [(Path(p.file).name, p.message) for p in report.problems] == [("blob_003.nii.gz", "image without mask")]
    rows = ["image,label"] + [f"imagesTr/blob_00{i}.nii.gz,{'' if i == 3 else f'labelsTr/blob_00{i}.nii.gz'}"
                              for i in range(6)]
    (root / "list.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert check_dataset(load_dataset(root / "list.csv")).ok


@pytest.fixture(scope="module")
def msd_model(tiny_msd, tmp_path_factory):
    """A 3-class model trained for two iterations on the tiny Decathlon set."""
    run = tmp_path_factory.mktemp("guard") / "model"
    assert run_training(tiny_cfg(tiny_msd, iterations=2, val_every=2), run)["status"] == "finished"
    return run


def test_evaluate_refuses_other_classes_and_unknown_labels(msd_model, tiny_msd, tmp_path, capsys):
    two = _copy(tiny_msd, tmp_path / "two")
    meta = _json(two)
    meta["labels"] = {"0": "background", "1": "organ"}
    _write_json(two, meta)
    assert main(["evaluate", "--model", str(msd_model), "--data", str(two), "--no-surface"]) == 2
    assert "classes {0: background, 1: organ} are not the model's" in capsys.readouterr().err
    seven = _copy(tiny_msd, tmp_path / "seven")
    _rewrite_label(seven / "labelsTr" / "blob_005.nii.gz", lambda a: np.where(a == 1, 7, a))
    assert main(["evaluate", "--model", str(msd_model), "--data", str(seven), "--no-surface"]) == 2
    err = capsys.readouterr().err
    assert "blob_005.nii.gz: label values [7] are not among the classes [0, 1, 2]" in err


def test_evaluate_refuses_misaligned_masks_and_keeps_warnings(msd_model, tiny_msd, tmp_path, capsys):
    root = _copy(tiny_msd, tmp_path / "msd")
    _edit_nifti(root / "labelsTr" / "blob_004.nii.gz", Origin=(0.0, 0.0, 0.0))
    assert main(["evaluate", "--model", str(msd_model), "--data", str(root), "--no-surface"]) == 2
    assert "blob_004.nii.gz: mask geometry mismatch: origin" in capsys.readouterr().err
    shutil.copy(tiny_msd / "labelsTr" / "blob_004.nii.gz", root / "labelsTr" / "blob_004.nii.gz")
    _rewrite_label(root / "labelsTr" / "blob_005.nii.gz", np.zeros_like)
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(msd_model), "--data", str(root), "--no-surface", "--out", str(out)]) == 0
    assert "blob_005.nii.gz: mask is empty" in capsys.readouterr().err
    assert "blob_005.nii.gz" in (out / "data_warnings.txt").read_text(encoding="utf-8")
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["data_warnings"]


@needs_shared("Hippocampus")
def test_the_fast_path_reads_headers_only_on_hippocampus(monkeypatch):
    """Every command's check reads headers, never pixels (its time is in the README, not asserted here):
    a full read during it fails the test."""
    import napari_medkd.io.header as header

    def no_pixels(*a, **k):
        raise AssertionError("the fast path read pixel data")

    spec = load_dataset(SHARED_DATA / "Hippocampus")  # (reads one image to tell modality and dimensions)
    monkeypatch.setattr(sitk, "ReadImage", no_pixels)
    monkeypatch.setattr(header, "read_image", no_pixels)
    report = check_dataset(spec)
    assert report.ok, report.format()
    assert len(spec.cases) == 260


# -- item 3: dataset.json paths stay inside the data root ------------------------------------------------

def test_escapes_root():
    for bad in ("../../etc/passwd", "/etc/passwd", "imagesTr/../../x.nii.gz", "C:\\data\\x.nii.gz", "\\\\srv\\x"):
        assert escapes_root(bad), bad
    for good in ("./imagesTr/a.nii.gz", "imagesTr/../imagesTr/a.nii.gz", "labelsTr/a..b.nii.gz"):
        assert not escapes_root(good), good


def test_dataset_json_paths_outside_the_root_are_refused_and_never_opened(tiny_msd, tmp_path):
    root = _copy(tiny_msd, tmp_path / "msd")
    outside = tmp_path / "outside.nii.gz"  # a real volume, so following the path would "work"
    shutil.copy(tiny_msd / "imagesTr" / "blob_000.nii.gz", outside)
    meta = _json(root)
    meta["training"] += [{"image": "../outside.nii.gz", "label": "./labelsTr/blob_000.nii.gz"},
                         {"image": str(outside), "label": "./labelsTr/blob_001.nii.gz"},
                         {"image": "./imagesTr/blob_002.nii.gz", "label": "../../etc/passwd"}]
    _write_json(root, meta)
    spec = load_dataset(root)
    assert all(outside.name not in str(c.image) and "passwd" not in str(c.label) for c in spec.cases)
    assert len(spec.split("train")) == 4
    rep = validate_dataset(root)
    refused = [p.message for p in rep.problems if "leads outside" in p.message]
    assert len(refused) == 3 and any("'../../etc/passwd'" in m for m in refused)
    assert any(repr(str(outside)) in m for m in refused)
    with pytest.raises(DataError, match="leads outside the data set folder"):
        run_training(tiny_cfg(root, iterations=1), tmp_path / "run")


# -- item 7: DICOM series --------------------------------------------------------------------------------

def _series(folder: Path, n=12, dz=2.5, value=0, description="ct", uid=None) -> Path:
    arr = (np.arange(n * 8 * 8).reshape(n, 8, 8) % 100 + value).astype(np.int16)
    write_dicom_series(MedicalImage(arr, (0.8, 0.8, dz), (0.0, 0.0, 0.0), np.eye(3)), folder,
                       description=description, series_uid=uid)
    return folder


def test_a_corrupt_slice_is_refused_naming_it(tmp_path):
    folder = _series(tmp_path / "s")
    bad = sorted(folder.iterdir())[5]
    bad.write_bytes(bad.read_bytes()[:200])  # truncated: GDCM drops it, ITK would stretch the spacing
    with pytest.raises(ImageReadError, match=bad.name):
        read_image(folder)


def test_a_missing_slice_is_refused_naming_its_neighbours(tmp_path):
    folder = _series(tmp_path / "s")
    files = sorted(folder.iterdir())
    files[5].unlink()
    with pytest.raises(ImageReadError, match="irregular slice spacing") as err:
        read_image(folder)
    assert files[4].name in _files(err) and files[6].name in _files(err) and "5 mm apart" in _files(err)
    good = _series(tmp_path / "ok")
    img = read_image(good)
    assert img.array.shape == (12, 8, 8) and img.spacing[2] == pytest.approx(2.5)


def test_inspect_lists_the_series_and_the_cli_chooses_one(msd_model, tmp_path, capsys):
    folder = tmp_path / "two"
    _series(folder, n=12, description="thin", uid="1.2.826.0.1.3680043.9.7.11")
    _series(folder, n=6, dz=5.0, value=50, description="thick", uid="1.2.826.0.1.3680043.9.7.12")
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "2 DICOM series" in out
    for uid, text in (("1.2.826.0.1.3680043.9.7.11", "8x8x12"), ("1.2.826.0.1.3680043.9.7.12", "8x8x6")):
        line = next(ln for ln in out.splitlines() if uid in ln)
        assert text in line
    assert "0.8x0.8x2.5" in out and "0.8x0.8x5" in out and "thin" in out and "thick" in out
    # predict without a choice is refused with the list; --series by index or by UID picks one
    assert main(["predict", "--model", str(msd_model), "--input", str(folder), "--output",
                 str(tmp_path / "m.nii.gz")]) == 2
    assert "2 DICOM series found; choose one" in capsys.readouterr().err
    thick = [s.description for s in list_dicom_series(folder)].index("thick")
    assert main(["predict", "--model", str(msd_model), "--input", str(folder), "--output",
                 str(tmp_path / "m.nii.gz"), "--series", str(thick)]) == 0
    assert read_image(tmp_path / "m.nii.gz").array.shape == (6, 8, 8)
    assert main(["predict", "--model", str(msd_model), "--input", str(folder), "--output",
                 str(tmp_path / "u.nii.gz"), "--series", "1.2.826.0.1.3680043.9.7.11"]) == 0
    assert read_image(tmp_path / "u.nii.gz").array.shape == (12, 8, 8)


def test_infer_accepts_series(monkeypatch, tmp_path):
    """``medkd infer --series`` reaches the reader (the ONNX session itself is tested elsewhere)."""
    import napari_medkd.inference.ort_infer as ort

    seen = {}

    class FakeSeg:
        def __init__(self, *a, **k):
            pass

    def fake_infer(model, src, out, **kw):
        seen.update(kw)
        return SimpleNamespace(skipped=[], results=[])

    monkeypatch.setattr(ort, "OrtSegmenter", FakeSeg)
    for name in ("infer_path", "infer_batch"):  # whichever the CLI calls
        monkeypatch.setattr(ort, name, fake_infer, raising=False)
    assert main(["infer", "--model", "m.onnx", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--series", "2"]) == 0
    assert seen["series"] == "2"
