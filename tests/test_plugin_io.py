"""The napari plugin's manifest, readers, writer and sample data (GUI: run under xvfb-run)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("xdg_dirs")]

ROOT = Path(__file__).resolve().parents[1]


def rotation(ax: float, az: float) -> np.ndarray:
    cx, sx, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


@pytest.fixture
def oblique_nifti(tmp_path):
    import SimpleITK as sitk

    arr = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.9, 2.5))
    img.SetOrigin((12.0, -30.5, 7.25))
    img.SetDirection(tuple(rotation(0.35, 0.6).ravel()))
    path = tmp_path / "oblique.nii.gz"
    sitk.WriteImage(img, str(path))
    return path, sitk.ReadImage(str(path))


def test_oblique_nifti_world_coordinates_equal_sitk_physical(make_napari_viewer, oblique_nifti):
    path, ref = oblique_nifti
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-medkd")
    assert layer._type_string == "image" and layer.data.shape == (5, 6, 7)
    np.testing.assert_allclose(layer.scale, ref.GetSpacing()[::-1], rtol=1e-6)
    np.testing.assert_allclose(layer.translate, ref.GetOrigin()[::-1], atol=1e-5)
    for zyx in [(0, 0, 0), (4, 5, 6), (2, 1, 3), (1, 4, 0)]:
        world = np.asarray(layer.data_to_world(zyx))
        phys = np.asarray(ref.TransformIndexToPhysicalPoint(tuple(int(v) for v in zyx[::-1])))[::-1]
        np.testing.assert_allclose(world, phys, atol=1e-4)
    geo = layer.metadata["medkd_geometry"]
    np.testing.assert_allclose(geo["direction"], ref.GetDirection(), atol=1e-6)
    assert layer.metadata["source"] == str(path)


def test_label_files_open_as_labels_and_other_files_are_refused(tmp_path):
    import SimpleITK as sitk

    from napari_medkd._reader import get_reader

    lab = sitk.GetImageFromArray(np.array([[[0, 1], [2, 1]]], np.uint8))
    for rel in ("labelsTr/case.nii.gz", "case_seg.mha", "case_mask.nrrd"):
        p = tmp_path / rel
        p.parent.mkdir(exist_ok=True)
        sitk.WriteImage(lab, str(p))
        [(data, attrs, kind)] = get_reader(str(p))(str(p))
        assert kind == "labels" and np.issubdtype(data.dtype, np.integer) and data.max() == 2
    (tmp_path / "notes.txt").write_text("not an image", encoding="utf-8")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "labelsTr")) is None  # a folder without DICOM files


def _labels_layer_roundtrip(viewer, layer, out: Path):
    import SimpleITK as sitk

    mask = (np.asarray(layer.data) > np.asarray(layer.data).mean()).astype(np.uint8)
    lab = viewer.add_labels(mask, scale=layer.scale, translate=layer.translate, affine=layer.affine,
                            metadata=dict(layer.metadata))
    written = napari.save_layers(str(out), [lab], plugin="napari-medkd")
    assert [Path(p) for p in written] == [out]
    return mask, sitk.ReadImage(str(out))


def test_writer_round_trip_keeps_geometry(make_napari_viewer, oblique_nifti, tmp_path):
    import SimpleITK as sitk

    path, ref = oblique_nifti
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-medkd")
    for suffix in (".nii.gz", ".mha", ".nrrd"):
        mask, back = _labels_layer_roundtrip(viewer, layer, tmp_path / f"out{suffix}")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), mask)
        np.testing.assert_allclose(back.GetSpacing(), ref.GetSpacing(), rtol=1e-5)
        np.testing.assert_allclose(back.GetOrigin(), ref.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(back.GetDirection(), ref.GetDirection(), atol=1e-5)
    # without the metadata the writer takes the geometry from scale / translate / affine
    layer.metadata = {}
    mask, back = _labels_layer_roundtrip(viewer, layer, tmp_path / "plain.nii.gz")
    np.testing.assert_allclose(back.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), ref.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(back.GetSpacing(), ref.GetSpacing(), rtol=1e-5)


def test_png_writer_for_2d_labels(tmp_path):
    import SimpleITK as sitk

    from napari_medkd._writer import write_labels

    mask = np.zeros((9, 11), np.uint8)
    mask[2:5, 3:8] = 1
    [out] = write_labels(str(tmp_path / "m.png"), mask, {"scale": (1.0, 1.0), "translate": (0.0, 0.0)})
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(out)), mask)
    with pytest.raises(ValueError, match="2D masks only"):
        write_labels(str(tmp_path / "v.png"), np.zeros((2, 3, 4), np.uint8), {})


def test_dicom_folder_opens(make_napari_viewer, tmp_path):
    from napari_medkd.io.dicom import write_dicom_series
    from napari_medkd.io.image import MedicalImage

    arr = (np.arange(4 * 8 * 9).reshape(4, 8, 9) % 200).astype(np.int16)
    vol = MedicalImage(arr, (0.8, 0.8, 3.0), (5.0, -2.0, 10.0), tuple(np.eye(3).ravel()))
    write_dicom_series(vol, tmp_path / "series")
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(tmp_path / "series"), plugin="napari-medkd")
    np.testing.assert_array_equal(np.asarray(layer.data), arr)
    np.testing.assert_allclose(layer.scale, (3.0, 0.8, 0.8), rtol=1e-4)
    np.testing.assert_allclose(layer.translate, (10.0, -2.0, 5.0), atol=1e-3)


def test_npe2_validate_with_imports_and_no_torch_at_startup():
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-medkd", "--imports"],
                         capture_output=True, text=True, encoding="utf-8", errors="replace", env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in (res.stdout + res.stderr)
    code = ("import sys, napari_medkd._reader, napari_medkd._writer, napari_medkd._sample_data\n"
            "from napari_medkd._widgets import distill_widget, compare_widget, graph_widget, alignment_widget, "
            "live_widget, quick_start_widget\nprint('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace", env=env, timeout=120)
    assert res.stdout.strip() == "False", res.stdout + res.stderr


def test_sample_data_entries_load(make_napari_viewer, monkeypatch, tmp_path):
    import napari_medkd._sample_data as sd

    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-medkd", "hippocampus")
    image, labels = layers
    assert image._type_string == "image" and labels._type_string == "labels"
    assert image.data.ndim == 3 and labels.data.shape == image.data.shape
    assert set(np.unique(labels.data)) <= {0, 1, 2} and labels.data.max() == 2
    assert "medkd_geometry" in labels.metadata
    fundus, vessels = viewer.open_sample("napari-medkd", "fundus")
    assert fundus.rgb and fundus.data.shape[-1] == 3 and vessels.data.shape == fundus.data.shape[:2]
    assert set(np.unique(vessels.data)) == {0, 1}
    # without the repository's sample_data folder the 2D phantom is generated
    monkeypatch.setattr(sd, "SAMPLE_DATA", tmp_path / "absent")
    img, ves = sd.fundus_phantom()
    assert img[0].shape == (256, 256, 3) and ves[2] == "labels" and ves[0].max() == 1
    with pytest.raises(FileNotFoundError, match="hippocampus"):
        sd.hippocampus()


def test_prefer_medkd_reader_makes_file_open_use_the_plugin(make_napari_viewer, oblique_nifti):
    from napari.settings import get_settings

    from napari_medkd._reader import prefer_medkd_reader

    path, ref = oblique_nifti
    viewer = make_napari_viewer()
    prefer_medkd_reader()
    assert get_settings().plugins.extension2reader["*.nii.gz"] == "napari-medkd"
    [layer] = viewer.open(str(path), plugin=None)  # what File > Open and drag-and-drop do
    assert "medkd_geometry" in layer.metadata
    np.testing.assert_allclose(layer.translate, ref.GetOrigin()[::-1], atol=1e-5)


def test_manifest_suffixes_agree_with_the_one_suffix_table():
    """napari.yaml's reader patterns and writer extensions are the tables of napari_medkd/io/suffixes.py."""
    import yaml

    from napari_medkd._reader import MEDICAL_SUFFIXES
    from napari_medkd._writer import WRITER_SUFFIXES
    from napari_medkd.io.suffixes import LABEL_WRITE_EXTENSIONS, VOLUME_EXTENSIONS

    manifest = yaml.safe_load((ROOT / "napari_medkd" / "napari.yaml").read_text(encoding="utf-8"))
    [writer] = manifest["contributions"]["writers"]
    assert tuple(writer["filename_extensions"]) == WRITER_SUFFIXES == LABEL_WRITE_EXTENSIONS
    files = [r for r in manifest["contributions"]["readers"] if not r["accepts_directories"]]
    assert {p.removeprefix("*") for r in files for p in r["filename_patterns"]} == set(MEDICAL_SUFFIXES)
    assert MEDICAL_SUFFIXES == VOLUME_EXTENSIONS


def test_packaged_sample_data_is_found_through_the_package():
    from napari_medkd.io.resources import sample_data_dir, suite_path

    assert (sample_data_dir("hippocampus") / "dataset.json").is_file()
    assert sample_data_dir().parent == Path(__import__("napari_medkd").__file__).resolve().parent
    assert suite_path("drive").name == "drive.yaml" and suite_path("drive").parent.name == "suites"
    assert suite_path(str(suite_path("chase"))) == suite_path("chase")  # a path still works
    with pytest.raises(FileNotFoundError, match="packaged suites: .*drive"):
        suite_path("nope")
