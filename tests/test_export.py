"""ONNX export: every student passes the onnxruntime-vs-torch check on real (phantom) images, the file is
single and self-describing, dynamic sizes work; a failed check or an existing file leaves nothing
changed; int8 quantisation runs and reports agreement."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medkd.config import RunConfig
from napari_medkd.export import onnx_export
from napari_medkd.export.onnx_export import ExportCheckError, export_onnx
from napari_medkd.export.quantize import quantize_int8
from napari_medkd.train.run_model import load_run_model
from napari_medkd.train.engine import run_training

STUDENTS_2D = ["unet_tiny", "enet", "espnet", "erfnet", "mobilenetv2_unet"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_run(root: Path, model: str, out: Path, iterations: int = 1, patch: int = 32) -> Path:
    torch.manual_seed(0)
    cfg = RunConfig()
    cfg.data.root, cfg.data.patch_size = str(root), patch
    cfg.model.name = model
    cfg.train.iterations, cfg.train.batch_size, cfg.train.val_every = iterations, 2, iterations
    run_training(cfg, out)
    return out


@pytest.fixture(scope="module")
def runs(tiny_vessels, tiny_msd, tmp_path_factory):
    made = {}

    def get(model):
        if model not in made:
            root, patch = (tiny_msd, 16) if model.endswith("3d_tiny") else (tiny_vessels, 32)
            made[model] = make_run(root, model, tmp_path_factory.mktemp("runs") / model, patch=patch)
        return made[model]

    return get


def _ort(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# the dynamo exporter (the default) takes 5-10 s per model on 2 cores; the two covered by it here stand
# for the path, the others are exported with the faster TorchScript exporter to keep the file quick
@pytest.mark.parametrize("model,exporter", [("unet_tiny", "auto"), ("unet3d_tiny", "auto")]
                         + [(m, "torchscript") for m in STUDENTS_2D[1:]])
def test_each_student_exports_single_checked_file_with_metadata(runs, tmp_path, model, exporter):
    run = runs(model)
    out = tmp_path / "model.onnx"
    rep = export_onnx(run, out, exporter=exporter)
    assert rep.exporter == ("dynamo" if exporter == "auto" else exporter)
    assert rep.n_images >= 2 and rep.max_abs_diff <= 1e-4 and rep.mask_agreement >= 0.9999
    assert rep.size_mb > 0 and "mask agreement" in rep.format()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no .data, no temp file

    import onnx

    proto = onnx.load(str(out), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    props = {p.key: p.value for p in proto.metadata_props}
    lm = load_run_model(run)
    assert set(onnx_export.METADATA_KEYS) <= set(props)
    assert json.loads(props["class_names"]) == {str(k): v for k, v in lm.card.class_names.items()}
    assert int(props["in_channels"]) == lm.card.in_channels and int(props["num_classes"]) == lm.card.num_classes
    assert json.loads(props["preprocess"]) == lm.card.preprocess and props["model_name"] == model
    assert int(props["size_divisor"]) == lm.model.size_divisor and props["source_run"] == str(run)

    # dynamic batch and spatial sizes: two shapes, both equal to torch
    sess, div, dims = _ort(out), lm.model.size_divisor, lm.card.model_dims
    torch.manual_seed(1)
    for shape in ((1, lm.card.in_channels) + (div * 2,) * dims,
                  (3, lm.card.in_channels) + tuple(div * k for k in (1, 3, 5)[-dims:])):
        x = torch.randn(shape)
        with torch.no_grad():
            ref = lm.model(x).numpy()
        got = sess.run(None, {"image": x.numpy()})[0]
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4)


def _perturbing(exporter_fn):
    """An exporter that writes a slightly different model, as a broken export would."""
    def export(model, *args):
        bad = copy.deepcopy(model)
        with torch.no_grad():
            for p in bad.parameters():
                p.add_(0.05)
        return exporter_fn(bad, *args)
    return export


def test_failed_parity_raises_and_leaves_no_file(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "_export_torchscript", _perturbing(onnx_export._export_torchscript))
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportCheckError, match="disagree"):
        export_onnx(runs("unet_tiny"), out, exporter="torchscript")
    assert list(tmp_path.iterdir()) == []

    out.write_bytes(b"precious")  # an existing file survives a failed export even with overwrite=True
    with pytest.raises(ExportCheckError):
        export_onnx(runs("unet_tiny"), out, exporter="torchscript", overwrite=True)
    assert out.read_bytes() == b"precious" and sorted(tmp_path.iterdir()) == [out]


def test_existing_file_is_kept_unless_overwrite(runs, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(runs("unet_tiny"), out, exporter="torchscript")
    assert out.read_bytes() == b"precious"
    rep = export_onnx(runs("unet_tiny"), out, exporter="torchscript", overwrite=True, sample_images=[
        next((Path(load_run_model(runs("unet_tiny")).card.data_root) / "test" / "images").iterdir())])
    assert rep.n_images == 1 and out.stat().st_size > 1000


def test_missing_data_set_needs_sample_images(runs, tmp_path):
    lm = load_run_model(runs("unet_tiny"))
    lm.card.data_root = str(tmp_path / "gone")
    with pytest.raises(ExportCheckError, match="sample_images"):
        export_onnx(lm, tmp_path / "m.onnx", exporter="torchscript")
    assert list(tmp_path.iterdir()) == []


def test_int8_quantisation_runs_and_reports_agreement(runs, tmp_path):
    import onnx

    fp32 = export_onnx(runs("unet_tiny"), tmp_path / "m.onnx", exporter="torchscript").path
    rep = quantize_int8(fp32, tmp_path / "m_int8.onnx")
    assert rep.path.is_file() and rep.n_calibration >= 4 and rep.n_images >= 2
    assert 0.5 <= rep.mask_agreement <= 1.0 and 0.0 <= rep.dice_vs_fp32 <= 1.0
    assert rep.dice_fp32 is not None and rep.dice_change is not None and "agreement" in rep.format()
    proto = onnx.load(str(rep.path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert {p.key for p in proto.metadata_props} >= set(onnx_export.METADATA_KEYS)
    with pytest.raises(FileExistsError):
        quantize_int8(fp32, rep.path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m_int8.onnx"]
