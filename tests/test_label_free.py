"""Label-free and label-scarce distillation from a teacher file (issue 13): `medkd distill --teacher model.onnx
--data scans/` on scans without a single mask, masks for some scans (`--labels`), the library API with a torch
module, agreement with the teacher as the validation, and the teacher's provenance in the student's card."""
import json
import shutil

import numpy as np
import pytest
import yaml

from napari_medkd.cli import main
from napari_medkd.config import RunConfig, load_config
from napari_medkd.data.label_folder import attach_labels
from napari_medkd.data.datasets import load_dataset
from napari_medkd.data.validate import check_dataset
from napari_medkd.metrics.agreement import agreement, mean_agreement
from napari_medkd.teachers import open_teacher
from napari_medkd.train.events import read_events
from napari_medkd.train.run_model import load_run_model
from napari_medkd.workflows.distill_teacher import distill_from_teacher

from test_teachers import HIPPO, exports, hippo_run  # noqa: F401 - fixtures

BUDGET = ["--iterations", "4", "--batch-size", "4", "--patch-size", "32", "--val-every", "2", "--threads", "1"]
NAMES = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_007"]


@pytest.fixture
def scans(tmp_path):
    """A plain folder of five sample volumes and no mask at all; the masks of two of them elsewhere."""
    for name in NAMES:
        (tmp_path / "scans").mkdir(exist_ok=True)
        shutil.copy(HIPPO / "imagesTr" / f"{name}.nii.gz", tmp_path / "scans")
    for name in NAMES[:2]:
        (tmp_path / "masks").mkdir(exist_ok=True)
        shutil.copy(HIPPO / "labelsTr" / f"{name}.nii.gz", tmp_path / "masks")
    return tmp_path / "scans"


def test_medkd_distill_from_an_onnx_file_on_scans_without_masks(exports, scans, tmp_path, capsys):  # noqa: F811
    teacher, run = exports / "model.onnx", tmp_path / "student"
    cache = ["--teacher-cache", str(tmp_path / "cache")]
    assert main(["distill", "--teacher", str(teacher), "--data", str(scans), "--student", "unet_tiny",
                 "--method", "logit_kd", "--out", str(run)] + cache + BUDGET) == 0
    out = capsys.readouterr().out
    assert "classes from the teacher" in out and "(4 computed, 0 reused" in out and "agreement with the teacher" in out
    cfg = load_config(run / "config.yaml")
    assert cfg.data.class_names == {0: "background", 1: "Anterior", 2: "Posterior"} and cfg.data.modality == "MR"
    assert cfg.distill.cache_teacher and cfg.distill.warmup  # the warm-up is dropped at run time, noted
    events = read_events(run / "events.jsonl")
    start = next(e for e in events if e["event"] == "start")
    assert start["labelled_cases"] == 0 and start["train_cases"] == 4 and start["val_cases"] == 1
    vals = [e for e in events if e["event"] == "val"]
    assert vals and all(set(v["agreement"]) >= {"dice", "voxel_agreement", "disagreement_ml"} for v in vals)
    assert any(e["event"] == "notice" and "no labelled cases" in e["message"] for e in events)
    iters = [e for e in events if e["event"] == "iter"]
    assert all(e["terms"]["seg"] == 0 for e in iters) and iters[0]["terms"]["logit_kd.w"] > 0
    card = load_run_model(run).card  # provenance: into the checkpoint, and on into the student's ONNX file
    info = open_teacher(teacher)
    assert card.teacher_info["format"] == "onnx" and card.teacher_info["sha256"] == info.file_hash()
    assert card.teacher_info["preprocess"]["modality"] == "MR" and card.method == "logit_kd"
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "s.onnx"), "--exporter", "torchscript",
                 "--images", str(scans / "hippocampus_001.nii.gz")]) == 0
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "s.onnx")).metadata_props}
    assert json.loads(props["teacher_info"])["sha256"] == info.file_hash()
    # a second student reuses the teacher's outputs
    assert main(["distill", "--teacher", str(teacher), "--data", str(scans), "--student", "enet",
                 "--method", "pseudo_label_kd", "--out", str(tmp_path / "s2")] + cache + BUDGET) == 0
    assert "(0 computed, 4 reused" in capsys.readouterr().out


def test_a_method_the_teacher_cannot_serve_is_refused_before_training(exports, scans, tmp_path, capsys):  # noqa: F811
    assert main(["distill", "--teacher", str(exports / "model.ts"), "--data", str(scans), "--student", "unet_tiny",
                 "--method", "mskd", "--out", str(tmp_path / "s")] + BUDGET) == 2
    err = capsys.readouterr().err
    assert "needs the teacher features" in err and "logit_kd" in err and not (tmp_path / "s").exists()


def test_teacher_preprocessing_that_contradicts_the_configuration_is_refused(exports, scans, tmp_path, capsys):  # noqa: F811
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": {"modality": "CT"}}), encoding="utf-8")
    assert main(["distill", "--teacher", str(exports / "model.onnx"), "--data", str(scans), "--student", "unet_tiny",
                 "--method", "logit_kd", "--config", str(config), "--out", str(tmp_path / "s"),
                 "--teacher-cache", str(tmp_path / "c")] + BUDGET) == 2
    assert "modality: teacher 'MR', this run 'CT'" in capsys.readouterr().err


def test_masks_for_some_scans_add_the_segmentation_loss_where_they_exist(exports, scans, tmp_path):  # noqa: F811
    cfg = RunConfig()
    cfg.data.val_cases = NAMES[4:]  # hold back an unlabelled scan: agreement is the validation
    res = distill_from_teacher(exports / "model.onnx", scans, tmp_path / "s", labels=scans.parent / "masks",
                               method="logit_kd", config=cfg, cache_dir=tmp_path / "cache", iterations=4,
                               batch_size=4, patch_size=32, val_every=4, threads=1)
    assert res["status"] == "finished" and any("classes from the teacher" in n for n in res["notes"])
    events = read_events(tmp_path / "s" / "events.jsonl")
    start = next(e for e in events if e["event"] == "start")
    assert start["labelled_cases"] == 2 and start["sampled_cases"] == 4
    iters = [e for e in events if e["event"] == "iter"]
    assert all(e["terms"]["seg"] > 0 for e in iters)  # half of every batch is labelled
    assert load_config(tmp_path / "s" / "config.yaml").data.labels_root == str(scans.parent / "masks")


def test_the_library_api_takes_a_torch_module(scans, tmp_path):
    import torch
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    net = BasicUNet(2, 1, 3, (8, 8, 16, 32, 32, 8))
    res = distill_from_teacher(net, scans, tmp_path / "s", method="logit_kd", preprocess={"modality": "MR"},
                               cache_dir=tmp_path / "cache", iterations=2, batch_size=2, patch_size=32, val_every=2,
                               threads=1)
    assert res["status"] == "finished"
    card = load_run_model(tmp_path / "s").card
    assert card.teacher.startswith("python:BasicUNet") and card.teacher_info["format"] == "module"
    assert card.num_classes == 3


def test_a_plain_scan_folder_never_expects_masks_and_takes_them_by_name(scans, tmp_path):
    (scans.parent / "labels").mkdir()  # a folder beside it is not taken for its masks
    spec = attach_labels(load_dataset(scans))
    assert spec.layout == "images" and check_dataset(spec).ok
    (scans.parent / "masks" / "stray.nii.gz").write_bytes(b"")
    spec = attach_labels(load_dataset(scans), scans.parent / "masks")
    assert sorted(c.id for c in spec.cases if c.label is not None) == NAMES[:2]
    assert [p.name for p in spec.orphan_labels] == ["stray.nii.gz"]
    with pytest.raises(ValueError, match="plain folder of scans"):
        attach_labels(load_dataset(HIPPO), scans.parent / "masks")


def test_agreement_between_two_masks():
    a = np.zeros((4, 10, 10), np.uint8)
    a[1:3, 2:6, 2:6] = 1
    b = a.copy()
    b[1:3, 2:6, 2:4] = 2
    row = agreement(a, b, 3, spacing=(2.0, 1.0, 1.0))
    assert row["dice"]["1"] == pytest.approx(2 * 16 / (32 + 16)) and row["dice"]["2"] == 0.0
    assert row["disagreement_voxels"] == 16 and row["disagreement_ml"] == pytest.approx(16 * 2 / 1000)
    assert row["voxel_agreement"] == pytest.approx(1 - 16 / 400)
    same = agreement(a, a, 3)
    assert same["dice_mean"] == 1.0 and same["disagreement_voxels"] == 0 and same["disagreement_ml"] is None
    mean = mean_agreement([row, same])
    assert mean["cases"] == 2 and mean["disagreement_voxels"] == 8


def test_medkd_agreement_reports_what_it_measured(exports, hippo_run, scans, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "eval"
    assert main(["agreement", "--student", str(hippo_run), "--teacher", str(exports / "model.onnx"),
                 "--data", str(scans), "--labels", str(scans.parent / "masks"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "agreement with the teacher on 5 scans; Dice against ground truth on the 2 with masks" in text
    report = json.loads((out / "agreement.json").read_text(encoding="utf-8"))
    assert report["agreement"]["cases"] == 5 and report["agreement"]["voxel_agreement"] == pytest.approx(1.0)
    assert report["ground_truth"]["cases"] == 2
    assert report["ground_truth"]["student"] == pytest.approx(report["ground_truth"]["teacher"])  # its own export
    rows = (out / "agreement_per_case.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("case,agree_dice_1,agree_dice_2") and len(rows) == 6
    assert main(["agreement", "--student", str(hippo_run), "--teacher", str(exports / "model.onnx"),
                 "--data", str(scans)]) == 0
    assert "none has a mask, no ground-truth metric was measured" in capsys.readouterr().out
