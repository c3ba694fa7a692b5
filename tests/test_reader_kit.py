"""What a user meets when opening files: a broken file gives a notification naming it (no traceback
toast), image and labels of one case get distinct names, and napari-medkd offers once to become the
reader for medical images (pytest-qt, xvfb-run)."""
from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("xdg_dirs")]


@pytest.fixture
def shown(monkeypatch, tmp_path):
    """Error messages and dispatched notifications; a fresh config folder (the offer not yet made)."""
    from napari.utils import notifications

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    seen = {"errors": [], "dispatched": []}
    monkeypatch.setattr(notifications, "show_error", lambda msg: seen["errors"].append(str(msg)))
    monkeypatch.setattr(notifications.notification_manager, "dispatch", lambda n: seen["dispatched"].append(n))
    return seen


def _write(path, arr):
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))


def test_a_broken_file_gives_a_notification_naming_it(make_napari_viewer, tmp_path, shown):
    bad = tmp_path / "scan_07.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    viewer = make_napari_viewer()
    layers = viewer.open(str(bad), plugin="napari-medkd")  # no exception reaches napari
    assert layers == [] and len(viewer.layers) == 0
    [msg] = shown["errors"]
    assert "could not open scan_07.nii.gz" in msg and str(bad) in msg
    # one bad file among good ones: the good ones open, the bad one is named
    good = tmp_path / "good.nii.gz"
    _write(good, np.zeros((3, 4, 5), np.float32))
    from napari_medkd._reader import read_paths

    out = read_paths([str(good), str(bad)])
    assert [d[1]["name"] for d in out] == ["good"] and "scan_07.nii.gz" in shown["errors"][-1]


def test_image_and_labels_of_a_case_get_distinct_names(make_napari_viewer, tmp_path, shown):
    _write(tmp_path / "imagesTr" / "hippocampus_003.nii.gz", np.zeros((3, 4, 5), np.float32))
    _write(tmp_path / "labelsTr" / "hippocampus_003.nii.gz", np.ones((3, 4, 5), np.uint8))
    _write(tmp_path / "case_mask.nii.gz", np.ones((3, 4, 5), np.uint8))
    viewer = make_napari_viewer()
    for rel in ("imagesTr/hippocampus_003.nii.gz", "labelsTr/hippocampus_003.nii.gz", "case_mask.nii.gz"):
        viewer.open(str(tmp_path / rel), plugin="napari-medkd")
    assert [lyr.name for lyr in viewer.layers] == ["hippocampus_003", "hippocampus_003 labels", "case_mask"]
    assert [lyr._type_string for lyr in viewer.layers] == ["image", "labels", "labels"]


def test_one_time_offer_to_become_the_medical_image_reader(make_napari_viewer, tmp_path, shown):
    from napari.settings import get_settings

    from napari_medkd._reader_offer import BUTTON, PATTERNS, reader_is_preferred

    get_settings().plugins.extension2reader = {}
    path = tmp_path / "ct.nii.gz"
    _write(path, np.zeros((3, 4, 5), np.float32))
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-medkd")
    [offer] = shown["dispatched"]
    assert offer.severity == "info" and "NIfTI" in offer.message
    [(text, action)] = offer.actions
    assert text == BUTTON and not reader_is_preferred()
    viewer.open(str(path), plugin="napari-medkd")
    assert len(shown["dispatched"]) == 1, "offered once only"
    action(None)  # the toast's button
    mapping = get_settings().plugins.extension2reader
    assert reader_is_preferred() and {mapping[p] for p in PATTERNS} == {"napari-medkd"}
    assert "*.nii.gz" in PATTERNS and "*.dcm" in PATTERNS and "*.mha" in PATTERNS and "*.nrrd" in PATTERNS
    [layer] = viewer.open(str(path), plugin=None)  # what File > Open does: now napari-medkd
    assert "medkd_geometry" in layer.metadata


def test_volumes_get_anatomical_axis_labels_and_samples_readable_colours(make_napari_viewer, shown):
    from napari_medkd._reader import anatomical_axis_labels

    assert anatomical_axis_labels(np.eye(3).ravel(), 3) == ("I→S", "A→P", "R→L")
    flipped = np.diag([-1.0, -1.0, 1.0])  # RAS-stored NIfTI: x and y run the other way
    assert anatomical_axis_labels(flipped.ravel(), 3) == ("I→S", "P→A", "L→R")
    assert anatomical_axis_labels(np.eye(2).ravel(), 2) is None
    viewer = make_napari_viewer()
    mri, labels = viewer.open_sample("napari-medkd", "hippocampus")
    geo = mri.metadata["medkd_geometry"]
    assert tuple(mri.axis_labels) == anatomical_axis_labels(geo["direction"], 3)
    assert [lbl[0] for lbl in mri.axis_labels] in (["I", "P", "L"], ["I", "A", "R"])  # Decathlon: I, P, L
    assert tuple(viewer.dims.axis_labels) == tuple(mri.axis_labels)
    np.testing.assert_allclose(labels.colormap.map(1)[:3], [0x3B / 255, 0x82 / 255, 0xF6 / 255], atol=1e-6)
    _, vessels = viewer.open_sample("napari-medkd", "fundus")
    np.testing.assert_allclose(vessels.colormap.map(1)[:3], [0, 0xE5 / 255, 1], atol=1e-6)
    assert vessels.colormap.map(0)[3] == 0
