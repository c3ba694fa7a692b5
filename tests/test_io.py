"""Medical image I/O: geometry round trips, DICOM series, 2D bitmaps, affine, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medkd.io import (SUPPORTED_EXTENSIONS, ImageReadError, ImageWriteError, MedicalImage, is_supported,
                             list_dicom_series, read_image, write_dicom_series, write_image, write_mask)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HIPPO = DATA / "Hippocampus"
HIPPO_CASES = ("hippocampus_001.nii.gz", "hippocampus_003.nii.gz")
VOLUME_FORMATS = (".nii.gz", ".mha", ".nrrd")


def rotation_z(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture
def oblique() -> MedicalImage:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 4, size=(5, 9, 11)).astype(np.uint8)
    return MedicalImage(arr, (0.7, 0.9, 2.5), (12.5, -30.25, 7.0), tuple(rotation_z(30).ravel()))


def files_in(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


# -- real volumes ---------------------------------------------------------------------------------
@pytest.mark.data
@pytest.mark.skipif(not HIPPO.exists(), reason=f"real data {HIPPO} is not present on this machine")
@pytest.mark.parametrize("case", HIPPO_CASES)
@pytest.mark.parametrize("ext", VOLUME_FORMATS)
def test_hippocampus_label_round_trip_keeps_geometry_exactly(tmp_path, case, ext):
    img = read_image(HIPPO / "imagesTr" / case)
    lab = read_image(HIPPO / "labelsTr" / case)
    assert img.ndim_spatial == 3 and img.array.ndim == 3 and not img.is_rgb and img.channels == 1
    assert img.array.shape == lab.array.shape
    assert set(np.unique(lab.array)) <= {0, 1, 2}
    out = write_mask(lab.array, tmp_path / f"x{ext}", reference=img)
    back = read_image(out)
    assert back.spacing == img.spacing and back.origin == img.origin and back.direction == img.direction
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, lab.array)
    assert files_in(tmp_path) == [f"x{ext}"]  # no temp files left behind


# -- synthetic oblique volume ---------------------------------------------------------------------
# NIfTI keeps float32 geometry; NRRD stores spacing x direction as one vector per axis, so splitting
# it back into spacing and direction can cost one ulp (exact for axis-aligned volumes, see above).
@pytest.mark.parametrize("ext,tol", [(".nii.gz", 1e-5), (".nii", 1e-5), (".mha", 0.0), (".nrrd", 1e-12)])
def test_oblique_volume_round_trip(tmp_path, oblique, ext, tol):
    back = read_image(write_mask(oblique.array, tmp_path / f"o{ext}", reference=oblique))
    np.testing.assert_array_equal(back.array, oblique.array)
    for key in ("spacing", "origin", "direction"):
        got, want = np.array(getattr(back, key)), np.array(getattr(oblique, key))
        if tol == 0.0:
            np.testing.assert_array_equal(got, want, err_msg=key)
        else:
            np.testing.assert_allclose(got, want, atol=tol, err_msg=key)


def test_mhd_writes_header_and_raw_and_reads_back(tmp_path, oblique):
    out = write_mask(oblique.array, tmp_path / "m.mhd", reference=oblique)
    assert files_in(tmp_path) == ["m.mhd", "m.raw"]
    back = read_image(out)
    np.testing.assert_array_equal(back.array, oblique.array)
    assert back.spacing == oblique.spacing and back.direction == oblique.direction
    with pytest.raises(FileExistsError):
        write_mask(oblique.array, tmp_path / "m.mhd", reference=oblique)


def test_write_image_keeps_dtype_and_values(tmp_path, oblique):
    arr = np.random.default_rng(1).normal(size=oblique.array.shape).astype(np.float32)
    back = read_image(write_image(arr, tmp_path / "f.mha", reference=oblique))
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, arr)
    assert back.geometry() == oblique.geometry()


def test_mask_dtype_uint16_above_255_and_bool(tmp_path):
    big = np.zeros((4, 5, 6), np.int64)
    big[1, 2, 3] = 300
    assert read_image(write_mask(big, tmp_path / "big.mha")).array.dtype == np.uint16
    back = read_image(write_mask(big > 0, tmp_path / "b.nii.gz"))
    assert back.array.dtype == np.uint8 and back.array.sum() == 1
    with pytest.raises(ImageWriteError, match="labels"):
        write_mask(-big, tmp_path / "neg.mha")
    with pytest.raises(ImageWriteError, match="non-integer"):
        write_mask(np.full((3, 3), 0.5), tmp_path / "half.png")


def test_sitk_conversion_round_trip(oblique):
    img = oblique.to_sitk()
    assert img.GetSize() == (11, 9, 5)
    back = MedicalImage.from_sitk(img, "mem")
    np.testing.assert_array_equal(back.array, oblique.array)
    assert back.geometry() == oblique.geometry() and back.path == "mem"
    assert json.loads(json.dumps(oblique.geometry()))["spacing"] == [0.7, 0.9, 2.5]


# -- affine ---------------------------------------------------------------------------------------
def test_affine_matches_sitk_index_to_physical(oblique):
    a = oblique.affine()
    assert a.shape == (4, 4)
    img = oblique.to_sitk()
    np.testing.assert_allclose(a @ [0, 0, 0, 1], [*oblique.origin[::-1], 1])
    for idx_xyz in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (3, 7, 2)]:
        phys = np.array(img.TransformIndexToPhysicalPoint(idx_xyz))
        mapped = a @ np.array([*idx_xyz[::-1], 1.0])
        np.testing.assert_allclose(mapped[:3], phys[::-1], atol=1e-12)
    img2 = MedicalImage(np.zeros((4, 6)), (0.5, 2.0), (1.0, 2.0), (0.0, -1.0, 1.0, 0.0))
    p = img2.to_sitk().TransformIndexToPhysicalPoint((5, 3))
    np.testing.assert_allclose((img2.affine() @ [3, 5, 1])[:2], p[::-1])


# -- DICOM ----------------------------------------------------------------------------------------
def test_dicom_series_round_trip_oblique(tmp_path):
    arr = (np.arange(4 * 6 * 7).reshape(4, 6, 7) * 7 - 300).astype(np.int16)
    vol = MedicalImage(arr, (0.7, 0.9, 2.5), (-10.0, 20.5, 3.0), tuple(rotation_z(20).ravel()))
    write_dicom_series(vol, tmp_path)
    assert len(list(tmp_path.glob("*.dcm"))) == 4 and files_in(tmp_path) == sorted(files_in(tmp_path))
    back = read_image(tmp_path)
    np.testing.assert_array_equal(back.array, arr)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-4)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-4)


def test_dicom_float_volume_is_rescaled_not_truncated(tmp_path):
    arr = np.linspace(-1.0, 1.0, 3 * 4 * 5).reshape(3, 4, 5)
    write_dicom_series(MedicalImage(arr, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)), tmp_path)
    np.testing.assert_allclose(read_image(tmp_path).array, arr, atol=1e-4)


def test_two_dicom_series_in_one_folder(tmp_path):
    small = MedicalImage(np.full((3, 5, 5), 10, np.int16), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    large = MedicalImage(np.full((5, 5, 5), 20, np.int16), (0.5, 0.5, 1.0), (1.0, 2.0, 3.0), np.eye(3))
    write_dicom_series(small, tmp_path, description="small", series_uid="1.2.826.0.1.3680043.9.7.1")
    write_dicom_series(large, tmp_path, description="large", series_uid="1.2.826.0.1.3680043.9.7.2")
    found = {s.description: s for s in list_dicom_series(tmp_path)}
    assert set(found) == {"small", "large"}
    assert found["small"].n_files == 3 and found["large"].n_files == 5
    assert found["small"].uid == "1.2.826.0.1.3680043.9.7.1"
    picked = read_image(tmp_path, series_uid=found["small"].uid)
    assert picked.array.shape == (3, 5, 5) and (picked.array == 10).all()
    np.testing.assert_allclose(picked.spacing, (1.0, 1.0, 2.0), atol=1e-4)
    with pytest.raises(ImageReadError, match="2 DICOM series found; choose one") as err:
        read_image(tmp_path)  # never silently the largest
    assert "1.2.826.0.1.3680043.9.7.1" in str(err.value) and "1.2.826.0.1.3680043.9.7.2" in str(err.value)
    index = [s.description for s in list_dicom_series(tmp_path)].index("large")
    by_index = read_image(tmp_path, series_uid=str(index))
    assert by_index.array.shape == (5, 5, 5) and (by_index.array == 20).all()
    with pytest.raises(ImageReadError, match="no DICOM series with UID"):
        read_image(tmp_path, series_uid="1.2.3")
    with pytest.raises(FileExistsError):
        write_dicom_series(small, tmp_path, series_uid="1.2.826.0.1.3680043.9.7.1")


def test_empty_folder_is_not_a_dicom_series(tmp_path):
    with pytest.raises(ImageReadError, match="no DICOM series"):
        read_image(tmp_path)


# -- 2D -------------------------------------------------------------------------------------------
def _save(arr: np.ndarray, path: Path) -> Path:
    from PIL import Image

    Image.fromarray(arr).save(path, dpi=(96, 96))
    return path


def test_2d_bitmaps_shapes_and_unit_geometry(tmp_path):
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    g = read_image(_save(grey, tmp_path / "g.png"))
    assert g.array.shape == (20, 30) and g.ndim_spatial == 2 and not g.is_rgb and g.channels == 1
    np.testing.assert_array_equal(g.array, grey)
    j = read_image(_save(rgb, tmp_path / "c.jpg"))
    assert j.array.shape == (20, 30, 3) and j.array.dtype == np.uint8 and j.is_rgb and j.channels == 3
    assert j.spacing == (1.0, 1.0) and j.origin == (0.0, 0.0) and j.direction == (1.0, 0.0, 0.0, 1.0)
    a = read_image(_save(rgba, tmp_path / "a.png"))
    assert a.array.shape == (20, 30, 3) and a.is_rgb
    np.testing.assert_array_equal(a.array, rgba[..., :3])
    t = read_image(_save(rgb, tmp_path / "t.tif"))
    assert t.array.shape == (20, 30, 3) and t.spacing == (1.0, 1.0)  # 96 dpi is not anatomy
    np.testing.assert_array_equal(t.array, rgb)
    gif = read_image(_save(grey, tmp_path / "g.gif"))
    assert gif.array.shape == (20, 30)
    la = read_image(_save(np.stack([grey, grey // 2], axis=-1), tmp_path / "la.png"))  # grey + alpha
    assert la.array.shape == (20, 30) and not la.is_rgb
    np.testing.assert_array_equal(la.array, grey)


def test_png_mask_round_trip_keeps_label_values(tmp_path):
    img = MedicalImage(np.zeros((16, 24, 3), np.uint8), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    mask = np.zeros((16, 24), np.uint8)
    mask[4:9, 5:20] = 1
    mask[10:12, :3] = 3
    back = read_image(write_mask(mask, tmp_path / "m.png", reference=img))
    assert back.array.shape == (16, 24) and back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask)  # binary labels stay 0/1, not 0/255
    with pytest.raises(ImageWriteError, match="2D"):
        write_mask(np.zeros((2, 4, 4), np.uint8), tmp_path / "v.png")


def test_is_supported():
    assert is_supported("a/b/C.NII.GZ") and is_supported("x.nhdr") and is_supported("y.jpeg")
    assert not is_supported("notes.txt") and not is_supported("archive.gz")
    assert ".nii.gz" in SUPPORTED_EXTENSIONS and ".png" in SUPPORTED_EXTENSIONS


# -- errors ---------------------------------------------------------------------------------------
def test_read_errors_name_the_file(tmp_path):
    missing = tmp_path / "nothere.nii.gz"
    with pytest.raises(ImageReadError, match="nothere.nii.gz"):
        read_image(missing)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello", encoding="utf-8")
    with pytest.raises(ImageReadError, match=r"notes\.txt.*unsupported"):
        read_image(txt)
    bad = tmp_path / "random.nii.gz"
    bad.write_bytes(np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError, match=r"random\.nii\.gz"):
        read_image(bad)
    empty = tmp_path / "empty.mha"
    empty.touch()
    with pytest.raises(ImageReadError, match=r"empty\.mha.*empty file"):
        read_image(empty)
    bad_png = tmp_path / "junk.png"
    bad_png.write_bytes(b"\x89PNG but not really")
    with pytest.raises(ImageReadError, match=r"junk\.png"):
        read_image(bad_png)


def test_mhd_without_its_raw_file_is_refused(tmp_path, oblique):
    write_mask(oblique.array, tmp_path / "m.mhd")
    (tmp_path / "m.raw").unlink()
    with pytest.raises(ImageReadError, match=r"m\.mhd.*m\.raw is missing"):
        read_image(tmp_path / "m.mhd")


def test_truncated_volumes_are_refused(tmp_path, oblique):
    for ext in (".nii.gz", ".nii", ".mha"):
        good = write_image(np.random.default_rng(4).normal(size=(6, 20, 20)), tmp_path / f"good{ext}")
        data = good.read_bytes()
        cut = tmp_path / f"cut{ext}"
        cut.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(ImageReadError, match=rf"cut{ext.replace('.', '[.]')}"):
            read_image(cut)


def test_multichannel_volume_is_refused(tmp_path):
    vec = sitk.GetImageFromArray(np.zeros((3, 4, 5, 2), np.float32), isVector=True)
    sitk.WriteImage(vec, str(tmp_path / "vec.mha"))
    with pytest.raises(ImageReadError, match=r"vec\.mha.*components"):
        read_image(tmp_path / "vec.mha")


def test_overwrite_protection_and_replace(tmp_path, oblique):
    target = tmp_path / "m.nii.gz"
    write_mask(oblique.array, target, reference=oblique)
    before = target.read_bytes()
    with pytest.raises(FileExistsError, match="m.nii.gz"):
        write_mask(np.zeros_like(oblique.array), target, reference=oblique)
    assert target.read_bytes() == before
    write_mask(np.ones_like(oblique.array), target, reference=oblique, overwrite=True)
    assert (read_image(target).array == 1).all()
    assert files_in(tmp_path) == ["m.nii.gz"]


def test_shape_mismatch_and_bad_format_write_nothing(tmp_path, oblique):
    with pytest.raises(ImageWriteError, match="does not match the reference"):
        write_mask(np.zeros((5, 9, 10), np.uint8), tmp_path / "bad.nii.gz", reference=oblique)
    with pytest.raises(ImageWriteError, match="does not match the reference"):
        write_mask(np.zeros((9, 11), np.uint8), tmp_path / "bad2.nii.gz", reference=oblique)
    with pytest.raises(ImageWriteError, match="cannot write"):
        write_mask(oblique.array, tmp_path / "bad.jpg", reference=oblique)
    assert files_in(tmp_path) == []


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def boom(img, path, *a, **k):
        Path(path).write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", boom)
    with pytest.raises(ImageWriteError, match="disk full"):
        write_mask(np.zeros((4, 4, 4), np.uint8), tmp_path / "p.mha")
    assert files_in(tmp_path) == []
