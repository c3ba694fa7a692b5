import math

import numpy as np
import pytest

from napari_medkd.metrics.overlap import dice_per_class
from napari_medkd.metrics.segmentation import segmentation_metrics, summarize


def squares(shift=0, shape=(40, 40)):
    a = np.zeros(shape, np.uint8)
    b = np.zeros(shape, np.uint8)
    a[10:20, 10:20] = 1
    b[10:20, 10 + shift:20 + shift] = 1
    return a, b


def test_identical_masks_are_perfect():
    a, _ = squares()
    m = segmentation_metrics(a, a, [1])[1]
    assert m["dice"] == pytest.approx(1.0) and m["iou"] == pytest.approx(1.0)
    assert m["hd95"] == pytest.approx(0.0) and m["asd"] == pytest.approx(0.0)


def test_shifted_square_matches_hand_values_and_spacing():
    a, b = squares(shift=2)
    m = segmentation_metrics(b, a, [1], spacing=(1.0, 1.0))[1]
    # overlap 10x8 = 80, sizes 100 and 100
    assert m["dice"] == pytest.approx(2 * 80 / 200)
    assert m["iou"] == pytest.approx(80 / 120)
    assert m["hd95"] == pytest.approx(2.0)
    m2 = segmentation_metrics(b, a, [1], spacing=(1.0, 0.5))[1]  # x spacing halves the distance
    assert m2["hd95"] == pytest.approx(1.0)
    assert m2["dice"] == pytest.approx(m["dice"])


def test_fov_excludes_outside_voxels():
    a, _ = squares()
    pred = a.copy()
    pred[0:5, 0:5] = 1  # false positives outside the FOV
    fov = np.zeros_like(a, bool)
    fov[8:30, 8:30] = True
    assert segmentation_metrics(pred, a, [1], fov=fov, surface=False)[1]["dice"] == pytest.approx(1.0)
    assert segmentation_metrics(pred, a, [1], surface=False)[1]["dice"] < 1.0


def test_absent_class_conventions_and_summary():
    a, _ = squares()
    empty = np.zeros_like(a)
    both_empty = segmentation_metrics(empty, empty, [1])[1]
    assert both_empty["dice"] == 1.0 and both_empty["hd95"] == 0.0
    one_empty = segmentation_metrics(empty, a, [1])[1]
    assert one_empty["dice"] == 0.0 and math.isnan(one_empty["hd95"])
    s = summarize([both_empty and {1: both_empty}, {1: one_empty}])
    assert s["dice_1"]["mean"] == pytest.approx(0.5)
    assert s["hd95_1"]["n"] == 1


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(np.zeros((4, 4)), np.zeros((5, 4)), [1])


def test_fast_dice_agrees_with_monai():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 3, (30, 30))
    p = np.where(rng.random((30, 30)) < 0.8, t, rng.integers(0, 3, (30, 30)))
    fast = dice_per_class(p, t, 3)
    ref = segmentation_metrics(p, t, [1, 2], surface=False)
    assert fast == pytest.approx([ref[1]["dice"], ref[2]["dice"]])
