"""onnxruntime inference: volumes (resampled and 3D), PNG folders and DICOM series give masks with the
source geometry equal to the torch path; live slices match whole-volume results; bad files and
inputs give clear errors; nothing is overwritten unless asked."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medkd.config import RunConfig
from napari_medkd.export.onnx_export import export_onnx
from napari_medkd.inference.ort_infer import OnnxModelError, OrtSegmenter, infer_path
from napari_medkd.inference.predict_files import predict_image
from napari_medkd.train.run_model import LoadedModel, load_run_model
from napari_medkd.io.image import MedicalImage
from napari_medkd.io.image_io import read_image
from napari_medkd.train.engine import run_training


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _export(root: Path, model: str, out: Path, patch: int, iterations: int = 10, **data) -> Path:
    """Train briefly (10 iterations give masks with content), export with the fast exporter."""
    torch.manual_seed(0)
    cfg = RunConfig()
    cfg.data.root, cfg.data.patch_size = str(root), patch
    for k, v in data.items():
        setattr(cfg.data, k, v)
    cfg.model.name = model
    cfg.train.iterations, cfg.train.batch_size, cfg.train.val_every, cfg.train.lr = iterations, 2, iterations, 1e-2
    run_training(cfg, out / "run")
    return export_onnx(out / "run", out / f"{model}.onnx", exporter="torchscript").path


@pytest.fixture(scope="module")
def vol2d(tiny_msd, tmp_path_factory):
    """A 2D student on 1x1x2 mm volumes trained at 1x1x1 mm: slice-wise, resampled both ways."""
    return _export(tiny_msd, "unet_tiny", tmp_path_factory.mktemp("v2"), 16, target_spacing=[1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def vol3d(tiny_msd, tmp_path_factory):
    return _export(tiny_msd, "unet3d_tiny", tmp_path_factory.mktemp("v3"), 16)


@pytest.fixture(scope="module")
def png2d(tiny_vessels, tmp_path_factory):
    return _export(tiny_vessels, "unet_tiny", tmp_path_factory.mktemp("p2"), 32, iterations=1)


def _agree(a, b):
    assert a.shape == b.shape
    return float((a == b).mean())


@pytest.mark.parametrize("which", ["vol2d", "vol3d"])
def test_volume_mask_has_source_geometry_and_matches_torch(request, tiny_msd, tmp_path, which):
    onnx_path = request.getfixturevalue(which)
    src = tiny_msd / "imagesTr" / "blob_004.nii.gz"  # a test case
    res = infer_path(onnx_path, src, tmp_path / "out.nii.gz")
    assert len(res) == 1 and res[0].output == tmp_path / "out.nii.gz"
    img, mask = read_image(src), read_image(tmp_path / "out.nii.gz")
    assert mask.array.shape == img.array.shape
    assert mask.spacing == img.spacing and mask.origin == img.origin and mask.direction == img.direction
    torch_labels = predict_image(load_run_model(onnx_path.parent / "run"), img)
    assert len(np.unique(torch_labels)) > 1  # a mask with content, so agreement means something
    assert _agree(mask.array, torch_labels) >= 0.999


def test_live_slices_match_the_whole_volume(vol2d, tiny_msd):
    seg = OrtSegmenter(vol2d)
    img = read_image(tiny_msd / "imagesTr" / "blob_005.nii.gz")
    whole = seg.segment(img)
    assert whole.n_slices == 24 and whole.labels.shape == img.array.shape and whole.ms_per_slice > 0
    n = seg.prepare_volume(img)
    assert n == img.array.shape[seg.slice_axis]
    live = np.stack([seg.segment_slice_index(i).labels for i in range(n)], axis=seg.slice_axis)
    np.testing.assert_array_equal(live, whole.labels)
    # a raw slice with the volume's normalisation statistics gives the same labels
    stats = seg.normalisation_stats(img)
    for i in (3, 6):
        one = seg.segment_slice(np.take(img.array, i, axis=seg.slice_axis), stats=stats)
        np.testing.assert_array_equal(one.labels, live[i])
        assert one.ms > 0
    with pytest.raises(IndexError):
        seg.segment_slice_index(n)


def test_3d_model_live_slices_come_from_the_volume(vol3d, tiny_msd):
    seg = OrtSegmenter(vol3d)
    img = read_image(tiny_msd / "imagesTr" / "blob_004.nii.gz")
    whole = seg.segment(img).labels
    seg.prepare_volume(img)
    np.testing.assert_array_equal(seg.segment_slice_index(5).labels, whole[5])


def test_png_folder_and_single_slice(png2d, tiny_vessels, tmp_path):
    folder = tiny_vessels / "test" / "images"
    res = infer_path(png2d, folder, tmp_path / "masks")
    assert [r.output.name for r in res] == ["c50_mask.png", "c51_mask.png"]
    lm = load_run_model(png2d.parent / "run")
    seg = OrtSegmenter(png2d, threads=1)
    for r in res:
        img = read_image(r.source)
        mask = read_image(r.output).array
        assert mask.shape == img.array.shape[:2]
        assert _agree(mask, predict_image(lm, img)) >= 0.999
        np.testing.assert_array_equal(seg.segment_slice(img.array).labels, mask)  # RGB slice, live path
    # never overwrite; all targets are checked before any is written
    (tmp_path / "masks" / "c50_mask.png").unlink()
    before = (tmp_path / "masks" / "c51_mask.png").read_bytes()
    with pytest.raises(FileExistsError, match="c51_mask.png"):
        infer_path(png2d, folder, tmp_path / "masks")
    assert not (tmp_path / "masks" / "c50_mask.png").exists()
    assert (tmp_path / "masks" / "c51_mask.png").read_bytes() == before
    assert len(infer_path(png2d, folder, tmp_path / "masks", overwrite=True)) == 2


def test_large_image_is_tiled_and_blended(png2d):
    seg = OrtSegmenter(png2d)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 1100, 40)).astype(np.float32)
    tiled = seg.predict_logits(x)
    assert tiled.shape == (seg.num_classes, 1100, 40)
    xp = np.pad(x, ((0, 0), (2, 2), (4, 4)))[None]  # 1104 x 48: one whole-image pass for comparison
    whole = seg.run(xp)[0][:, 2:-2, 4:-4]
    assert _agree(tiled.argmax(0), whole.argmax(0)) >= 0.98


def test_dicom_series_folder(vol3d, tiny_msd, tmp_path):
    from napari_medkd.io import write_dicom_series

    img = read_image(tiny_msd / "imagesTr" / "blob_004.nii.gz")
    write_dicom_series(img, tmp_path / "series")
    res = infer_path(vol3d, tmp_path / "series", tmp_path / "out")
    assert res[0].output == tmp_path / "out" / "series_mask.nii.gz"
    mask, dcm = read_image(res[0].output), read_image(tmp_path / "series")
    assert mask.array.shape == dcm.array.shape
    np.testing.assert_allclose(mask.spacing, dcm.spacing, atol=1e-4)
    np.testing.assert_allclose(mask.origin, dcm.origin, atol=1e-3)


@pytest.mark.parametrize("name,content", [("junk.onnx", None), ("notes.txt", b"not a model\n")])
def test_bad_model_files_are_named_in_the_error(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(np.random.default_rng(0).bytes(3000) if content is None else content)
    with pytest.raises(OnnxModelError, match=f"{name}.*not an ONNX model"):
        OrtSegmenter(p)
    with pytest.raises(OnnxModelError, match="does not exist"):
        OrtSegmenter(tmp_path / "missing.onnx")


def test_onnx_without_medkd_metadata(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1, "h", "w"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "plain", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "plain.onnx")
    with pytest.raises(OnnxModelError, match="plain.onnx.*no napari-medkd metadata"):
        OrtSegmenter(tmp_path / "plain.onnx")


def test_three_channel_model_refuses_a_grey_image(png2d, tmp_path):
    from napari_medkd.models import build_model

    base = load_run_model(png2d.parent / "run")
    # e.g. a 3-sequence MR model: a single grey image cannot feed it
    card = dataclasses.replace(base.card, in_channels=3, preprocess={**base.card.preprocess, "modality": "MR"})
    torch.manual_seed(0)
    lm = LoadedModel(build_model("unet_tiny", in_channels=3, num_classes=2).eval(), card, base.checkpoint)
    seg = OrtSegmenter(export_onnx(lm, tmp_path / "rgb3.onnx", exporter="torchscript", check=False).path)
    grey = MedicalImage(np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32), (1, 1), (0, 0), (1, 0, 0, 1),
                        path="grey.png")
    with pytest.raises(ValueError, match="expects 3 input channel.*grey.png.*has 1"):
        seg.segment(grey)
    with pytest.raises(ValueError, match="expects 3 input channel"):
        seg.predict_logits(np.zeros((1, 32, 32), np.float32))
    assert seg.predict_logits(np.zeros((3, 32, 32), np.float32)).shape == (2, 32, 32)
