"""Teachers from anywhere (issue 13): each adapter on a small model made here, against the model it came from,
on real Hippocampus images (the packaged sample): logits within 1e-4, preprocessing read and honoured,
ONNX internal tensors equal to the torch taps, and methods refused when the teacher lacks their taps."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medkd.config import RunConfig
from napari_medkd.data.prepare import PreprocessConfig, prepare_image
from napari_medkd.distill.task import DistillError, check_fit, load_teacher, needs_only_outputs
from napari_medkd.io.image_io import read_image
from napari_medkd.models.predict import predict_logits
from napari_medkd.models.taps import run_with_taps
from napari_medkd.registry import METHODS
from napari_medkd.teachers import TeacherError, open_teacher, register_module, teacher_kind
from napari_medkd.teachers.resolve import suggested_taps
from napari_medkd.train.engine import run_training

from conftest import SAMPLE

HIPPO = SAMPLE / "hippocampus"
IMAGES = [HIPPO / "imagesTr" / f"hippocampus_{i}.nii.gz" for i in ("001", "003")]
TAPS = ["enc_low", "enc_mid", "bottleneck", "dec_mid", "dec_low"]


def tiny_hippo_cfg(root=HIPPO, iterations=2):
    cfg = RunConfig()
    cfg.data.root, cfg.data.patch_size = str(root), 32
    cfg.model.name = "unet_tiny"
    cfg.train.iterations, cfg.train.batch_size, cfg.train.val_every, cfg.train.threads = iterations, 4, iterations, 1
    return cfg


@pytest.fixture(scope="module")
def hippo_run(tmp_path_factory, one_torch_thread) -> Path:
    """A tiny U-Net trained for 3 steps on the sample Hippocampus volumes (3 classes)."""
    run = tmp_path_factory.mktemp("teachers") / "run"
    assert run_training(tiny_hippo_cfg(iterations=3), run)["status"] == "finished"
    return run


@pytest.fixture(scope="module")
def exports(hippo_run, tmp_path_factory):
    from napari_medkd.export.onnx_export import export_onnx
    from napari_medkd.export.torchscript_export import export_torchscript

    out = tmp_path_factory.mktemp("exports")
    export_onnx(hippo_run, out / "model.onnx", exporter="torchscript", sample_images=IMAGES[:1])
    export_torchscript(hippo_run, out / "model.ts")
    return out


def real_images(preprocess) -> list:
    pcfg = PreprocessConfig.from_dict(preprocess)
    return [prepare_image(read_image(p), pcfg)[0] for p in IMAGES]


def max_logit_diff(a, b, images) -> float:
    return max(float(np.abs(predict_logits(a, x, device="cpu") - predict_logits(b, x, device="cpu")).max())
               for x in images)


def test_a_run_folder_gives_todays_teacher_with_every_tap(hippo_run):
    t = open_teacher(hippo_run)
    old, card = load_teacher(hippo_run, "cpu")
    assert t.kind == "run" and teacher_kind(hippo_run) == "run" and t.has_parts
    assert set(t.taps) >= set(TAPS) and t.card.to_checkpoint() == card.to_checkpoint()
    assert not any(p.requires_grad for p in t.module.parameters()) and not t.module.training
    assert max_logit_diff(t.module, old, real_images(card.preprocess)) == 0.0
    assert t.provenance()["format"] == "run" and len(t.provenance()["sha256"]) == 64


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_onnx_teacher_gives_the_runs_logits_and_its_taps_as_graph_outputs(hippo_run, exports, exporter, tmp_path):
    from napari_medkd.export.onnx_export import export_onnx

    path = exports / "model.onnx"
    if exporter == "dynamo":  # the default exporter of `medkd export`: module scopes live in node metadata
        path = tmp_path / "dynamo.onnx"
        export_onnx(hippo_run, path, exporter="dynamo", sample_images=IMAGES[:1])
    t, run = open_teacher(path), open_teacher(hippo_run)
    assert t.kind == "onnx" and t.card.class_names == run.card.class_names and t.card.preprocess == run.card.preprocess
    assert set(t.taps) >= set(TAPS) and not t.has_parts
    images = real_images(t.card.preprocess)
    assert max_logit_diff(t.module, run.module, images) < 1e-4
    x = torch.from_numpy(np.moveaxis(images[0], 1, 0)[10:14].copy())  # 4 real slices, padded below
    x = torch.nn.functional.pad(x, (0, 48 - x.shape[-1], 0, 64 - x.shape[-2]))
    got, ref = t.features(x, TAPS), run_with_taps(run.module, x, TAPS)
    for name in TAPS + ["logits"]:
        assert got[name].shape == ref[name].shape
        assert float((got[name] - ref[name]).abs().max()) < 1e-4, name


def test_onnx_tap_suggestions_from_shapes_are_the_models_own_taps(exports):
    t = open_teacher(exports / "model.onnx")
    found = suggested_taps(t)
    assert found == {k: v for k, v in t.module.tap_tensors.items() if k in found} and set(found) == set(TAPS)


def test_torchscript_teacher_logits_and_no_taps(hippo_run, exports):
    t, run = open_teacher(exports / "model.ts"), open_teacher(hippo_run)
    assert t.kind == "torchscript" and t.taps == [] and t.card.class_names == run.card.class_names
    assert t.card.preprocess == run.card.preprocess
    assert max_logit_diff(t.module, run.module, real_images(t.card.preprocess)) < 1e-4


def test_a_method_needing_missing_taps_is_refused_naming_the_methods_that_can_run(exports):
    t = open_teacher(exports / "model.ts", taps={"enc_mid": "down_2"})
    assert any("TorchScript" in n for n in t.notes)
    cfg = RunConfig()
    cfg.distill.method = "mskd"
    with pytest.raises(DistillError, match=r"needs the teacher features \['dec_low', 'enc_high'\]") as err:
        check_fit(t, cfg.distill, 2)
    output_only = [m for m in METHODS.names() if needs_only_outputs(m)]  # exactly what a logits-only teacher serves
    assert f"Methods that can run with this teacher: {', '.join(output_only)}." in str(err.value)
    cfg.distill.method = "gkd"
    with pytest.raises(DistillError, match="bottleneck"):
        check_fit(t, cfg.distill, 2)
    cfg.distill.method = "logit_kd"
    check_fit(t, cfg.distill, 2)
    onnx_t = open_teacher(exports / "model.onnx")  # taps, but no encode/decode: GKD cannot run
    cfg.distill.method = "gkd"
    with pytest.raises(DistillError, match="encode/decode"):
        check_fit(onnx_t, cfg.distill, 2)
    cfg.distill.method = "mskd"
    check_fit(onnx_t, cfg.distill, 2)


def strip_metadata(src: Path, dst: Path) -> Path:
    import onnx

    proto = onnx.load(str(src))
    del proto.metadata_props[:]
    onnx.save(proto, str(dst))
    return dst


def test_a_foreign_onnx_takes_its_preprocessing_from_the_user(exports, tmp_path):
    path = strip_metadata(exports / "model.onnx", tmp_path / "vendor.onnx")
    bare = open_teacher(path)
    assert bare.card.num_classes == 3 and bare.card.preprocess == {} and bare.taps == []
    assert any("--teacher-preprocess" in n for n in bare.notes)
    t = open_teacher(path, preprocess={"modality": "MR", "percentiles": [1, 99], "class_names": ["bg", "a", "p"]},
                     taps={"enc_mid": "down_2", "bottleneck": "/down_4/convs/conv_1/adn/A/LeakyRelu_output_0"})
    assert t.card.preprocess == {"modality": "MR", "percentiles": [1.0, 99.0]}
    assert t.card.class_names == {0: "bg", 1: "a", 2: "p"} and t.taps == ["bottleneck", "enc_mid"]
    with pytest.raises(TeacherError, match="unknown teacher option"):
        open_teacher(path, preprocess={"normalise": "yes"})
    with pytest.raises(TeacherError, match="no tensor or module"):
        open_teacher(path, taps={"enc_mid": "no_such_layer"})


def write_bundle(folder: Path, net, network_def: dict, transforms: list) -> Path:
    """A MONAI bundle as monai.bundle lays it out: configs/{inference,metadata}.json, models/model.pt."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    inference = {"image_key": "image", "network_def": network_def, "device": "$torch.device('cpu')",
                 "network": "$@network_def.to(@device)",
                 "preprocessing": {"_target_": "Compose", "transforms": transforms}}
    meta = {"version": "0.1.0", "license": "Apache-2.0", "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [64, 64]}},
        "outputs": {"pred": {"type": "image", "num_channels": 3,
                             "channel_def": {"0": "background", "1": "anterior", "2": "posterior"}}}}}
    (folder / "configs" / "inference.json").write_text(json.dumps(inference), encoding="utf-8")
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


BASIC_UNET = {"_target_": "BasicUNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 3,
              "features": [8, 8, 16, 32, 32, 8]}
LOAD = [{"_target_": "LoadImaged", "keys": "@image_key"}, {"_target_": "EnsureChannelFirstd", "keys": "@image_key"}]


def test_monai_bundle_teacher_reads_its_transforms_and_matches_the_network(tmp_path):
    from monai.networks.nets import BasicUNet
    from monai.transforms import NormalizeIntensity

    torch.manual_seed(0)
    net = BasicUNet(2, 1, 3, (8, 8, 16, 32, 32, 8)).eval()
    folder = write_bundle(tmp_path / "bundle", net, BASIC_UNET,
                          LOAD + [{"_target_": "NormalizeIntensityd", "keys": "@image_key"},
                                  {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"}])
    t = open_teacher(folder, taps={"enc_mid": "down_2", "dec_mid": "upcat_3"})
    assert t.kind == "monai_bundle" and t.licence == "Apache-2.0" and t.taps == ["dec_mid", "enc_mid"]
    assert t.card.class_names == {0: "background", 1: "anterior", 2: "posterior"} and t.dims == 2
    assert t.card.preprocess == {"modality": "MR", "percentiles": [0.0, 100.0]}  # NormalizeIntensity = z-score
    assert any("Orientation" in n for n in t.notes)
    for path in IMAGES:  # medkd's preprocessing of the bundle's settings == MONAI's own transform
        raw = read_image(path).array.astype(np.float32)[None]
        monai_in = np.asarray(NormalizeIntensity()(raw))
        ours = real_images(t.card.preprocess)[IMAGES.index(path)]
        assert float(np.abs(ours - monai_in).max()) < 1e-5
        diff = np.abs(predict_logits(t.module, ours, device="cpu") - predict_logits(net, monai_in, device="cpu"))
        assert float(diff.max()) < 1e-4


def test_a_bundle_that_needs_code_is_refused(tmp_path):
    from monai.networks.nets import BasicUNet

    net = BasicUNet(2, 1, 3, (8, 8, 16, 32, 32, 8))
    folder = write_bundle(tmp_path / "b", net, {**BASIC_UNET, "_target_": "scripts.net.MyNet"}, LOAD)
    with pytest.raises(TeacherError, match="does not run code from files.*ckpt_export"):
        open_teacher(folder)
    shutil.rmtree(folder)
    write_bundle(folder, net, {**BASIC_UNET, "out_channels": "$__import__('os').getpid() % 5"}, LOAD)
    with pytest.raises(TeacherError, match=r"\$__import__"):
        open_teacher(folder)


def test_a_torch_module_given_in_python(hippo_run):
    from monai.networks.nets import BasicUNet

    torch.manual_seed(1)
    net = BasicUNet(2, 1, 3, (8, 8, 16, 32, 32, 8))
    source = register_module(net, "my_net")
    t = open_teacher(source, preprocess={"modality": "MR"}, taps={"bottleneck": "down_4"})
    assert source == "python:my_net" and t.kind == "module" and t.card.num_classes == 3 and t.taps == ["bottleneck"]
    assert t.card.preprocess == {"modality": "MR"} and not net.training
    images = real_images(open_teacher(hippo_run).card.preprocess)
    assert max_logit_diff(t.module, net, images) == 0.0
    seg = load_teacher(hippo_run, "cpu")[0]
    t2 = open_teacher(seg)  # a medkd model: its own taps and parts
    assert t2.has_parts and set(t2.taps) >= set(TAPS)
    with pytest.raises(TeacherError, match="no Python teacher"):
        open_teacher("python:not_registered")


def test_what_is_not_a_teacher_gets_a_message_naming_the_kinds(tmp_path):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(TeacherError, match="run folder.*MONAI bundle.*onnx.*TorchScript"):
        open_teacher(tmp_path / "notes.txt")
    with pytest.raises(TeacherError, match="does not exist"):
        open_teacher(tmp_path / "missing.onnx")
