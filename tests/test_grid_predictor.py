"""One grid predictor: torch (``medkd predict``, Compare), onnxruntime (``medkd infer``) and Live give
the same labels and logits on a real volume (MSD hippocampus, resampled by the run both ways), with the
same slice-index mapping and the same normalisation; the predictor's padding, batching and tiling."""
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE
from test_ort_infer import _export

from napari_medkd.data.prepare import prepare_image, zscore_apply
from napari_medkd.inference.ort_infer import OrtSegmenter
from napari_medkd.inference.predict_files import predict_image
from napari_medkd.io.image import MedicalImage
from napari_medkd.io.image_io import read_image
from napari_medkd.models.predict import GridPredictor, as_labels, predict_logits, torch_run
from napari_medkd.train.run_model import load_run_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HIPPO = SAMPLE / "hippocampus"
SPACING = [1.25, 1.25, 1.5]  # no exact half-way slices: the torch/ORT masks may not hinge on a rounding tie


@pytest.fixture(scope="module")
def hippo(tmp_path_factory) -> Path:
    """unet_tiny trained on the real sample volumes (1 mm) at 1.25 x 1.25 x 1.5 mm; 200 iterations (~12 s)
    give masks of about 1 % foreground, so agreement means something."""
    return _export(HIPPO, "unet_tiny", tmp_path_factory.mktemp("hippo"), 32, iterations=200, target_spacing=SPACING)


def _agree(a, b):
    assert a.shape == b.shape
    return float((a == b).mean())


def test_torch_onnx_and_live_agree_on_a_real_volume(hippo):
    img = read_image(HIPPO / "imagesTr" / "hippocampus_036.nii.gz")
    lm, seg = load_run_model(hippo.parent / "run"), OrtSegmenter(hippo, threads=1)
    torch_labels = predict_image(lm, img)                     # medkd predict / Compare
    assert torch_labels.shape == img.array.shape and (torch_labels > 0).sum() > 200
    whole = seg.segment(img).labels                           # medkd infer
    assert _agree(whole, torch_labels) >= 0.999
    image_cf, work = prepare_image(img, seg.pcfg)             # the working grid, as in training
    assert work.array.shape != img.array.shape
    np.testing.assert_allclose(seg.predict_logits(image_cf), predict_logits(lm.model, image_cf), atol=1e-4)

    n = seg.prepare_volume(img)                               # Live, slice by slice
    live = np.stack([seg.segment_slice_index(i).labels for i in range(n)], axis=seg.slice_axis)
    np.testing.assert_array_equal(live, whole)  # same slice mapping and plane mapping as the volume
    assert _agree(live, torch_labels) >= 0.999

    stats = seg.normalisation_stats(img)                      # Live on raw slices at the model's spacing
    work_labels = seg.predict_labels(image_cf)
    for j in (5, image_cf.shape[1] // 2):
        raw = np.take(work.array, j, axis=seg.slice_axis)
        np.testing.assert_allclose(zscore_apply(raw, (stats.lo, stats.hi, stats.mean, stats.std)),
                                   np.take(image_cf[0], j, axis=seg.slice_axis), atol=1e-6)
        np.testing.assert_array_equal(seg.segment_slice(raw, stats=stats).labels,
                                      np.take(work_labels, j, axis=seg.slice_axis))


def test_normalisation_stats_of_a_large_volume_are_the_training_ones(hippo):
    """Over 4M voxels training measures a strided subsample; Live's statistics are those, not the full
    volume's (which differ)."""
    seg = OrtSegmenter(hippo, threads=1)
    rng = np.random.default_rng(0)
    big = MedicalImage(rng.gamma(2.0, 50.0, (17, 512, 512)).astype(np.float32), SPACING, (0, 0, 0),
                       (1, 0, 0, 0, 1, 0, 0, 0, 1))
    stats = seg.normalisation_stats(big)
    image_cf, work = prepare_image(big, seg.pcfg)
    assert stats.hi != pytest.approx(float(np.percentile(work.array, 99.5)), abs=1e-6)
    np.testing.assert_array_equal(zscore_apply(work.array[3], (stats.lo, stats.hi, stats.mean, stats.std)),
                                  image_cf[0, 3])


def _fake_run(calls):
    """A 'model' that checks its input is padded to 16 and returns (x, -x) as two class logits."""
    def run(batch):
        assert all(s % 16 == 0 for s in batch.shape[2:]), batch.shape
        calls.append(batch.shape)
        return np.concatenate([batch[:, :1], -batch[:, :1]], 1)
    return run


def test_grid_predictor_pads_centred_batches_slices_and_tiles_large_images():
    rng = np.random.default_rng(0)
    calls = []
    gp = GridPredictor(_fake_run(calls), model_dims=2, size_divisor=16, slice_axis=1, batch_size=4, max_whole=64)
    vol = rng.normal(size=(1, 5, 10, 20)).astype(np.float32)
    logits = gp.logits(vol)
    np.testing.assert_array_equal(logits[0], vol[0])  # the crop undoes the centred padding exactly
    assert calls == [(4, 1, 16, 32)] * 2 + [(2, 1, 16, 32)]  # 10 slices along axis 1, 4 at a time
    np.testing.assert_array_equal(gp.labels(vol), as_labels(logits))  # labels per batch = argmax of all
    calls.clear()
    big = rng.normal(size=(1, 100, 60)).astype(np.float32)  # over max_whole squared: 64 x 64 windows, blended
    tiled = gp.logits(big)
    assert tiled.shape == (2, 100, 60) and all(c[2:] == (64, 64) for c in calls)
    np.testing.assert_allclose(tiled[0], big[0], atol=1e-5)  # Gaussian blending of an identity is identity
    with pytest.raises(ValueError, match="3D model cannot segment a 2D image"):
        GridPredictor(_fake_run([]), model_dims=3).logits(big)


def test_torch_run_uses_eval_mode_and_restores_it():
    from napari_medkd.models import build_model

    torch.manual_seed(0)
    model = build_model("unet_tiny", in_channels=1, num_classes=2).train()
    x = np.random.default_rng(0).normal(size=(1, 1, 32, 32)).astype(np.float32)
    with torch_run(model) as run:
        assert not model.training
        out = run(x)
    assert model.training and out.dtype == np.float32 and out.shape == (1, 2, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(out, model.eval()(torch.from_numpy(x)).numpy(), atol=1e-5)
