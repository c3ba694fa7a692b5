"""Intensity normalisation, resampling, padding, slices, patch sampling and augmentation."""
from __future__ import annotations

import numpy as np
import pytest

from napari_medkd.data.augment import augment
from napari_medkd.data.prepare import (PreprocessConfig, crop_back, labels_to_source_grid, normalize_intensity,
                                       pad_to_multiple, plane_to_source_grid, preprocess_image, resample_to_spacing,
                                       work_slice_index, zscore_apply, zscore_stats)
from napari_medkd.data.slices import sample_patch, slices_to_volume, volume_to_slices
from napari_medkd.io.image import MedicalImage

IDENTITY3 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_ct_window_maps_ends_to_0_and_1():
    a = np.array([[-1000, -160, 40, 240, 3000]], np.int16)
    out = normalize_intensity(a, "CT", ct_window=(-160, 240))
    assert out.shape == (1, 1, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [0, 0, 0.5, 1, 1], atol=1e-6)


def test_mr_zscore_mean_0_std_1():
    rng = np.random.default_rng(0)
    vol = rng.gamma(2.0, 50.0, (8, 16, 16)).astype(np.float32)
    vol[0, 0, 0] = 1e6  # outlier, removed by the percentile clip
    out = normalize_intensity(vol, "MRI")
    assert out.shape == (1, 8, 16, 16)
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-3
    assert out.max() < 6
    flat = normalize_intensity(np.full((4, 4), 7.0), "grey")  # constant image: no division by zero
    assert np.all(np.isfinite(flat)) and np.allclose(flat, 0)


def test_rgb_green_channel_and_rgb_mode():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (12, 10, 3)).astype(np.uint8)
    img[..., 1] = np.arange(10)[None, :] * 20  # green: a horizontal ramp
    g = normalize_intensity(img, "RGB", rgb_mode="green")
    assert g.shape == (1, 12, 10)
    assert np.all(np.diff(g[0], axis=1) > 0)  # the ramp, not another channel
    rgb = normalize_intensity(img, "RGB", rgb_mode="rgb")
    assert rgb.shape == (3, 12, 10)
    np.testing.assert_allclose(rgb.reshape(3, -1).mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(rgb[1], g[0], atol=1e-6)
    with pytest.raises(ValueError, match="rgb_mode"):
        normalize_intensity(img, "RGB", rgb_mode="blue")


def test_config_roundtrip_and_preprocess_image():
    cfg = PreprocessConfig(modality="CT", ct_window=(-100, 100), target_spacing=(1, 1, 2), slice_axis=1)
    d = cfg.to_dict()
    assert d["target_spacing"] == [1.0, 1.0, 2.0]
    assert PreprocessConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown"):
        PreprocessConfig.from_dict({"modality": "CT", "bogus": 1})
    img = MedicalImage(np.full((4, 6, 6), 100, np.int16), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), IDENTITY3)
    out = preprocess_image(img, cfg)
    assert out.shape == (1, 4, 6, 6) and out.dtype == np.float32 and np.allclose(out, 1.0)
    rgb = MedicalImage(np.zeros((6, 8, 3), np.uint8), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    assert preprocess_image(rgb, PreprocessConfig(modality="RGB", rgb_mode="rgb")).shape == (3, 6, 8)
    assert preprocess_image(rgb, PreprocessConfig(modality="grey")).shape == (1, 6, 8)


def test_resample_changes_shape_by_spacing_ratio_and_keeps_origin():
    arr = np.zeros((10, 20, 30), np.float32)
    arr[3:7, 5:15, 10:20] = 1
    img = MedicalImage(arr, (1.0, 1.0, 2.0), (5.0, -3.0, 7.0), IDENTITY3)
    out = resample_to_spacing(img, (2.0, 0.5, 1.0))
    assert out.array.shape == (20, 40, 15)  # z 10*2/1, y 20*1/0.5, x 30*1/2
    assert tuple(out.spacing) == (2.0, 0.5, 1.0)
    np.testing.assert_allclose(out.origin, img.origin)
    lab = MedicalImage((arr * 2).astype(np.uint8), img.spacing, img.origin, IDENTITY3)
    lo = resample_to_spacing(lab, (2.0, 0.5, 1.0), is_label=True)
    assert lo.array.dtype == np.uint8 and set(np.unique(lo.array)) == {0, 2}  # nearest: no new values
    with pytest.raises(ValueError, match="spacing"):
        resample_to_spacing(img, (1.0, 1.0))


def test_zscore_stats_are_the_ones_normalisation_uses_on_large_volumes():
    """Over 4M voxels the statistics come from a strided subsample; zscore_stats gives exactly those
    (the full volume's percentiles differ, so a whole-volume recomputation would not match)."""
    rng = np.random.default_rng(1)
    vol = rng.gamma(2.0, 50.0, (17, 512, 512)).astype(np.float32)  # 4.46 M voxels > 1 << 22
    stats = zscore_stats(vol, (0.5, 99.5))
    full_hi = float(np.percentile(vol, 99.5))
    assert stats[1] != full_hi
    np.testing.assert_array_equal(zscore_apply(vol[5], stats), normalize_intensity(vol, "MR")[0, 5])
    small = vol[:2, :64, :64]
    assert zscore_stats(small, (0.5, 99.5))[1] == pytest.approx(float(np.percentile(small, 99.5)))


def test_work_slice_index_rounds_half_up_and_knows_the_grid_ends():
    assert work_slice_index(1, 1.0, 2.0, 4) == 1     # 0.5 -> 1 (Python's round would give 0)
    assert work_slice_index(3, 1.0, 2.0, 4) == 2     # 1.5 -> 2
    assert work_slice_index(2, 2.0, 1.0, 14) == 4
    assert work_slice_index(7, 1.0, 2.0, 4) == 3     # 3.5: past the grid -> clipped ...
    assert work_slice_index(7, 1.0, 2.0, 4, clip=False) == -1  # ... or -1
    assert work_slice_index(6, 1.0, 2.0, 4, clip=False) == 3


@pytest.mark.parametrize("src_sp,work_sp,n", [((1, 1, 1), (1, 1, 2), 9), ((0.7, 0.9, 1.0), (1.0, 1.1, 1.5), 11),
                                              ((1, 1, 2), (1, 1, 1), 7), ((1, 1, 3), (1, 1, 2), 8)])
def test_a_plane_maps_back_as_its_slice_of_the_whole_volume_does(src_sp, work_sp, n):
    img = MedicalImage(np.zeros((n, 13, 11), np.float32), src_sp, (3.0, -2.0, 5.0), IDENTITY3)
    work = resample_to_spacing(img, work_sp)
    lab = np.random.default_rng(0).integers(0, 3, work.array.shape).astype(np.uint8)
    back = labels_to_source_grid(lab, work, img)
    for i in range(n):
        j = work_slice_index(i, src_sp[2], work_sp[2], lab.shape[0], clip=False)
        plane = np.zeros(back.shape[1:], np.uint8) if j < 0 else plane_to_source_grid(lab[j], work, img, 0)
        np.testing.assert_array_equal(plane, back[i])
    first = lab[0]
    assert plane_to_source_grid(first, img, img, 0) is first  # no resampling: unchanged


def test_pad_to_multiple_and_crop_back():
    a = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    p, spec = pad_to_multiple(a, 4, n_spatial=2)
    assert p.shape == (2, 8, 8) and spec == ((0, 3), (0, 1))
    np.testing.assert_array_equal(crop_back(p, spec), a)
    lbl = np.zeros((8, 8))
    assert crop_back(lbl, spec).shape == (5, 7)  # label maps crop back with the same spec
    same, spec0 = pad_to_multiple(np.zeros((8, 16)), 8)
    assert same.shape == (8, 16) and spec0 == ((0, 0), (0, 0))


def test_slices_roundtrip():
    vol = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    for axis in range(3):
        sl = volume_to_slices(vol, axis)
        assert len(sl) == vol.shape[1 + axis] and sl[0].ndim == 3
        np.testing.assert_array_equal(slices_to_volume(sl, axis), vol)
    labs = [np.full((4, 5), i) for i in range(3)]
    assert slices_to_volume(labs, 0, channel_first=False).shape == (3, 4, 5)


@pytest.mark.parametrize("shape,patch", [((1, 64, 64), 16), ((1, 10, 40, 40), (8, 16, 16))])
def test_patch_sampling_with_fg_prob_1_contains_foreground(shape, patch):
    rng = np.random.default_rng(0)
    img = rng.normal(size=shape).astype(np.float32)
    lbl = np.zeros(shape[1:], np.uint8)
    lbl[(slice(2, 3),) * (len(shape) - 2) + (slice(30, 32),)] = 2  # a tiny object near one border
    for _ in range(30):
        ip, lp = sample_patch(img, lbl, patch, fg_prob=1.0, rng=rng)
        assert (lp > 0).any()
        assert ip.shape[1:] == lp.shape
    hits = sum((sample_patch(img, lbl, patch, fg_prob=0.0, rng=rng)[1] > 0).any() for _ in range(30))
    assert hits < 30  # without over-sampling most patches miss it


def test_patch_pads_small_images():
    img = np.ones((1, 5, 7), np.float32)
    lbl = np.ones((5, 7), np.uint8)
    ip, lp = sample_patch(img, lbl, 8, rng=np.random.default_rng(0))
    assert ip.shape == (1, 8, 8) and lp.shape == (8, 8)
    assert ip.sum() == 35 and lp.sum() == 35


def test_augment_keeps_image_and_label_aligned():
    rng = np.random.default_rng(3)
    for shape in ((2, 16, 16), (1, 6, 12, 12), (1, 16, 24)):
        img = rng.normal(size=shape).astype(np.float32)
        lbl = (img[0] > 0.3).astype(np.int64)
        fov = img[0] > -1.0
        seen = set()
        for _ in range(12):
            ai, al, af = augment(img, lbl, rng, intensity=None, fov=fov)
            np.testing.assert_array_equal((ai[0] > 0.3).astype(np.int64), al)
            np.testing.assert_array_equal(ai[0] > -1.0, af)
            seen.add(ai.tobytes())
        assert len(seen) > 3  # the geometry does change
    ai, al = augment(img, lbl, rng, flips=False, rot90=False, intensity=(0.1, 0.1))
    np.testing.assert_array_equal(al, lbl)
    assert not np.allclose(ai, img) and np.corrcoef(ai.ravel(), img.ravel())[0, 1] > 0.99
