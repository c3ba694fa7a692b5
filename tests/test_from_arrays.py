"""A one-case data set from in-memory arrays (what the Distil widget trains on for open layers)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from napari_medkd.data.from_arrays import ArrayDatasetError, guess_modality, image_from_arrays, write_array_dataset


def test_guess_modality():
    rng = np.random.default_rng(0)
    assert guess_modality(image_from_arrays(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), ndim_spatial=2)) == "RGB"
    assert guess_modality(image_from_arrays(np.full((4, 8, 8), -1000.0))) == "CT"
    assert guess_modality(image_from_arrays(np.full((4, 8, 8), 10.0))) == "MR"
    assert guess_modality(image_from_arrays(np.full((8, 8), -1000.0))) == "grey"


def test_volume_round_trip_keeps_geometry_and_labels(tmp_path):
    from napari_medkd.data.datasets import load_dataset, load_label
    from napari_medkd.io.image_io import read_image

    vol = np.random.default_rng(0).normal(size=(5, 12, 14)).astype(np.float32)
    lab = np.zeros(vol.shape, np.uint8)
    lab[1:3, 2:6, 3:8], lab[1:3, 6:9, 3:8] = 1, 3
    geo = {"spacing": [0.75, 0.5, 2.0], "origin": [3.0, 2.0, 1.0], "direction": np.eye(3).ravel().tolist()}
    root = write_array_dataset(vol, lab, tmp_path / "ds", geometry=geo, name="my set")
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert meta["name"] == "my set" and meta["modality"] == {"0": "MR"}
    spec = load_dataset(root)
    assert len(spec.cases) == 1 and spec.dims == 3
    assert spec.class_names == {0: "background", 1: "class 1", 2: "class 2", 3: "class 3"}
    back = read_image(spec.cases[0].image)
    np.testing.assert_allclose(back.spacing, geo["spacing"])
    np.testing.assert_allclose(back.origin, geo["origin"])
    np.testing.assert_allclose(back.array, vol)
    np.testing.assert_array_equal(load_label(spec.cases[0].label), lab)


def test_rgb_image_is_written_as_png(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (16, 20, 3), dtype=np.uint8)
    lab = np.zeros((16, 20), np.uint8)
    lab[4:8, 5:9] = 1
    root = write_array_dataset(rgb, lab, tmp_path / "rgb", geometry={"spacing": [1.0, 1.0], "origin": [0.0, 0.0],
                                                                     "direction": [1.0, 0.0, 0.0, 1.0]})
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    assert meta["modality"] == {"0": "RGB"} and meta["training"][0]["image"].endswith(".png")


@pytest.mark.parametrize("labels, match", [
    (np.ones((8, 9), np.uint8), r"has shape \(8, 10\) but labels layer 'lab' has shape \(8, 9\)"),
    (np.full((8, 10), -1, np.int16), "non-negative integer"),
    (np.full((8, 10), 0.5, np.float32), "non-negative integer"),
    (np.zeros((8, 10), np.uint8), "empty"),
])
def test_bad_labels_are_refused_and_nothing_is_written(tmp_path, labels, match):
    with pytest.raises(ArrayDatasetError, match=match):
        write_array_dataset(np.zeros((8, 10), np.float32), labels, tmp_path / "bad", image_name="img",
                            labels_name="lab")
    assert not (tmp_path / "bad").exists()
