"""The model card: one way into and out of a checkpoint, one into and out of ONNX properties; old
checkpoints' meta dicts and old ONNX files still load; a missing key is named."""
import dataclasses
import json

import pytest

from napari_medkd.card import ONNX_KEYS, ModelCard

PRE = {"modality": "RGB", "rgb_mode": "green", "ct_window": None, "percentiles": [0.5, 99.5],
       "target_spacing": None, "slice_axis": 0}
# what train/engine.py stored in a checkpoint's "meta" before the card (json.dumps of this dict)
OLD_META = {"model_name": "unet_tiny", "model_kwargs": {}, "in_channels": 1, "num_classes": 2,
            "class_names": {0: "background", 1: "vessel"}, "preprocess": PRE, "model_dims": 2,
            "data_root": "/data/drive", "spacing": [1.0, 1.0]}
# what export/onnx_export.py wrote into an .onnx file before the card
OLD_PROPS = {"medkd_version": "0.1.0", "model_name": "unet_tiny", "class_names": '{"0": "background", "1": "vessel"}',
             "in_channels": "1", "num_classes": "2", "model_dims": "2", "preprocess": json.dumps(PRE),
             "spacing": "[1.0, 1.0]", "size_divisor": "16", "source_run": "/runs/s", "data_root": "/data/drive",
             "exporter": "dynamo"}


def _card(**kw):
    base = dict(model_name="unet_tiny", in_channels=3, num_classes=3, class_names={0: "bg", 1: "a", 2: "b"},
                preprocess=PRE, model_dims=3, model_kwargs={"base": 8}, spacing=[0.8, 0.8, 2.5],
                data_root="/data/msd", teacher="/runs/teacher", method="gkd", medkd_version="0.1.0")
    return ModelCard(**{**base, **kw})


def test_checkpoint_round_trip():
    card = _card()
    text = card.to_checkpoint()
    assert isinstance(text, str) and json.loads(text)["teacher"] == "/runs/teacher"
    back = ModelCard.from_checkpoint(text)
    assert back == card
    assert back.class_names == {0: "bg", 1: "a", 2: "b"}  # int keys again after JSON's string keys


def test_old_checkpoint_meta_loads_and_unknown_keys_are_kept():
    card = ModelCard.from_checkpoint(json.dumps(OLD_META))
    assert (card.model_name, card.in_channels, card.num_classes, card.model_dims) == ("unet_tiny", 1, 2, 2)
    assert card.class_names == {0: "background", 1: "vessel"} and card.preprocess == PRE
    assert card.spacing == [1.0, 1.0] and card.data_root == "/data/drive"
    assert (card.teacher, card.method, card.size_divisor, card.quantization, card.extra) == ("", "", None, None, {})

    older = {k: v for k, v in OLD_META.items() if k not in ("model_dims", "model_kwargs", "spacing")}
    older["made_by"] = "a future version"
    card = ModelCard.from_checkpoint(json.dumps(older))
    assert card.model_dims is None and card.model_kwargs == {} and card.spacing is None
    assert card.extra == {"made_by": "a future version"}
    assert json.loads(card.to_checkpoint())["made_by"] == "a future version"


def test_checkpoint_meta_without_a_required_key_is_named():
    meta = {k: v for k, v in OLD_META.items() if k != "num_classes"}
    with pytest.raises(ValueError, match="'num_classes'"):
        ModelCard.from_checkpoint(json.dumps(meta))
    with pytest.raises(ValueError, match="not a JSON object"):
        ModelCard.from_checkpoint("[1, 2]")


def test_onnx_props_round_trip():
    card = _card(size_divisor=16, source_run="/runs/s", exporter="torchscript")
    props = card.to_onnx_props()
    assert set(ONNX_KEYS) == set(props) and all(isinstance(v, str) for v in props.values())
    back = ModelCard.from_onnx_props(props)
    # model_kwargs stay in the checkpoint: the ONNX graph needs no constructor arguments
    assert back == dataclasses.replace(card, model_kwargs={})
    q = ModelCard.from_onnx_props(dataclasses.replace(back, quantization="int8").to_onnx_props())
    assert q.quantization == "int8" and q.teacher == "/runs/teacher"


def test_old_onnx_props_load_and_other_props_are_ignored():
    card = ModelCard.from_onnx_props({**OLD_PROPS, "pkg.torch.version": "2.5"})
    assert card.class_names == {0: "background", 1: "vessel"} and card.preprocess == PRE
    assert (card.in_channels, card.num_classes, card.model_dims, card.size_divisor) == (1, 2, 2, 16)
    assert (card.spacing, card.source_run, card.exporter, card.data_root) == ([1.0, 1.0], "/runs/s", "dynamo",
                                                                             "/data/drive")
    assert (card.teacher, card.method, card.quantization, card.extra) == ("", "", None, {})
    minimal = {k: OLD_PROPS[k] for k in ("medkd_version", "class_names", "in_channels", "num_classes",
                                         "model_dims", "preprocess", "size_divisor")}
    card = ModelCard.from_onnx_props(minimal)
    assert card.model_name == "?" and card.spacing is None and card.source_run == ""


def test_onnx_props_missing_key_is_named():
    props = {k: v for k, v in OLD_PROPS.items() if k != "size_divisor"}
    with pytest.raises(ValueError, match="'size_divisor' property"):
        ModelCard.from_onnx_props(props)
    with pytest.raises(ValueError, match="size_divisor"):
        ModelCard.from_checkpoint(json.dumps(OLD_META)).to_onnx_props()  # not exported yet


def test_ort_segmenter_reads_the_card_from_the_file(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from napari_medkd.inference.ort_infer import OnnxModelError, OrtSegmenter

    def write(props, name):
        x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", 1, "h", "w"])
        y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 1, "h", "w"])
        graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "id", [x], [y])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        helper.set_model_props(proto, props)
        onnx.save(proto, tmp_path / name)
        return tmp_path / name

    card = _card(in_channels=1, model_dims=2, model_kwargs={}, size_divisor=16, spacing=[1.0, 1.0])
    seg = OrtSegmenter(write(card.to_onnx_props(), "m.onnx"), providers=["CPUExecutionProvider"], threads=1)
    assert seg.card == card
    assert (seg.class_names, seg.in_channels, seg.num_classes, seg.model_dims, seg.size_divisor) == (
        card.class_names, 1, 3, 2, 16)
    broken = {k: v for k, v in card.to_onnx_props().items() if k != "num_classes"}
    with pytest.raises(OnnxModelError, match="incomplete or damaged.*'num_classes'"):
        OrtSegmenter(write(broken, "broken.onnx"), providers=["CPUExecutionProvider"], threads=1)


def test_loaded_model_card_from_an_old_checkpoint(tmp_path):
    import torch

    from napari_medkd.models import build_model
    from napari_medkd.train.checkpoint import CheckpointError, save_checkpoint
    from napari_medkd.train.run_model import load_run_model

    torch.manual_seed(0)
    model = build_model("unet_tiny", in_channels=1, num_classes=2)
    old = {k: v for k, v in OLD_META.items() if k != "model_dims"}  # written before model_dims was stored
    path = save_checkpoint({"model": model.state_dict(), "meta": json.dumps(old)}, tmp_path / "old.pt")
    lm = load_run_model(path)
    assert lm.card.model_dims == 2 and lm.card.in_channels == 1
    assert lm.class_names == {0: "background", 1: "vessel"}
    bad = {k: v for k, v in OLD_META.items() if k != "model_name"}
    path = save_checkpoint({"model": model.state_dict(), "meta": json.dumps(bad)}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="model description.*'model_name'"):
        load_run_model(path)


@pytest.mark.parametrize("distilled", [False, True])
def test_engine_card_names_the_teacher_only_when_distilled(distilled):
    from napari_medkd.config import RunConfig
    from napari_medkd.train.card_build import model_card

    cfg = RunConfig()
    cfg.model.name, cfg.data.root = "unet_tiny", "/data/drive"
    cfg.distill.teacher, cfg.distill.method = "/runs/teacher", "gkd"
    card = model_card(cfg, {1: "vessel", 0: "background"}, PRE, 1, 2, 2, (1.0, 1.0), distilled=distilled)
    assert (card.teacher, card.method) == (("/runs/teacher", "gkd") if distilled else ("", ""))
    assert card.class_names == {0: "background", 1: "vessel"} and card.spacing == [1.0, 1.0]
    assert card.data_root == "/data/drive" and card.medkd_version
    assert ModelCard.from_checkpoint(card.to_checkpoint()) == card
