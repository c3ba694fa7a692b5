"""The ``medkd`` command line end to end on a tiny data set: train, evaluate, predict, distill,
export, infer; existing outputs are refused; bad inputs give one clear error line, no traceback."""
import json

import numpy as np
import pytest

from napari_medkd.cli import main
from napari_medkd.io.image_io import read_image


def _budget(n=4):
    return ["--iterations", str(n), "--batch-size", "2", "--patch-size", "32", "--val-every", str(n)]


@pytest.fixture(scope="module")
def teacher(tiny_vessels, tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "teacher"
    assert main(["train", "--data", str(tiny_vessels), "--model", "unet_tiny", "--out", str(run)] + _budget()) == 0
    return run


def test_models_and_methods_tables(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("unet", "enet", "espnet", "erfnet", "mobilenetv2_unet", "unet_tiny", "unet3d"):
        assert name in out
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("logit_kd", "mskd", "graph_flow", "gkd", "cwd", "emkd"):
        assert name in out


def test_evaluate_writes_summary(teacher, tiny_vessels, tmp_path, capsys):
    assert main(["evaluate", "--model", str(teacher), "--data", str(tiny_vessels), "--split", "test",
                 "--out", str(tmp_path / "ev")]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text(encoding="utf-8"))
    assert summary  # per-class statistics
    assert "dice" in capsys.readouterr().out.lower()


def test_distill_then_export_then_infer(teacher, tiny_vessels, tmp_path, capsys):
    student = tmp_path / "student"
    assert main(["distill", "--data", str(tiny_vessels), "--teacher", str(teacher), "--student", "unet_tiny",
                 "--method", "logit_kd", "--out", str(student)] + _budget(3)) == 0
    onnx_path = tmp_path / "student.onnx"
    assert main(["export", "--model", str(student), "--out", str(onnx_path), "--exporter", "torchscript"]) == 0
    assert onnx_path.is_file()
    # refusing to replace the export without --overwrite
    assert main(["export", "--model", str(student), "--out", str(onnx_path), "--exporter", "torchscript"]) == 2
    assert "exist" in capsys.readouterr().err
    src = tiny_vessels / "test" / "images" / "c50.png"
    out = tmp_path / "masks" / "c50_mask.png"
    assert main(["infer", "--model", str(onnx_path), "--input", str(src), "--output", str(out)]) == 0
    mask = read_image(out)
    assert mask.array.shape[:2] == read_image(src).array.shape[:2]
    assert set(np.unique(mask.array)) <= {0, 1}
    assert main(["infer", "--model", str(onnx_path), "--input", str(src), "--output", str(out)]) == 2
    assert "exist" in capsys.readouterr().err


def test_predict_refuses_to_overwrite(teacher, tiny_vessels, tmp_path, capsys):
    src = tiny_vessels / "test" / "images"
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(teacher), "--input", str(src), "--output", str(out)]) == 0
    written = sorted(out.iterdir())
    assert len(written) == 2
    stamp = [p.stat().st_mtime_ns for p in written]
    assert main(["predict", "--model", str(teacher), "--input", str(src), "--output", str(out)]) == 2
    assert "exist" in capsys.readouterr().err
    assert [p.stat().st_mtime_ns for p in written] == stamp


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    assert main(["infer", str(bogus), "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bogus.onnx" in err and "Traceback" not in err
    assert main(["train", "--data", str(tmp_path / "missing"), "--model", "unet_tiny",
                 "--out", str(tmp_path / "r")] + _budget()) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "Traceback" not in err


def test_evaluate_reports_fsd_for_a_gkd_student(teacher, tiny_vessels, tmp_path, capsys):
    import yaml

    cfg = tmp_path / "gkd.yaml"
    cfg.write_text(yaml.safe_dump({"distill": {"stage_iterations": {"msan": 2}}}), encoding="utf-8")
    student = tmp_path / "gkd"
    assert main(["distill", "--data", str(tiny_vessels), "--teacher", str(teacher), "--student", "unet_tiny",
                 "--method", "gkd", "--out", str(student), "--config", str(cfg)] + _budget(2)) == 0
    ev = tmp_path / "ev"
    assert main(["evaluate", "--model", str(student), "--data", str(tiny_vessels), "--no-surface",
                 "--fsd-against", str(tiny_vessels), "--fsd-tile", "32", "--out", str(ev)]) == 0
    fsd = json.loads((ev / "fsd.json").read_text(encoding="utf-8"))
    assert fsd["n"] == 8 and 0 <= fsd["fsd"] < 1e-6  # same images on both sides: 2 x 4 tiles, distance 0
    assert "FSD" in capsys.readouterr().out
    # a student without an MSAN needs a probe
    assert main(["evaluate", "--model", str(teacher), "--data", str(tiny_vessels), "--no-surface",
                 "--fsd-against", str(tiny_vessels), "--fsd-tile", "32"]) == 2
    assert "MSAN" in capsys.readouterr().err


def test_distill_takes_teacher_and_method_from_the_config(teacher, tiny_vessels, tmp_path, capsys):
    """``medkd distill --config FILE`` with the teacher, the student and the method in the YAML; a flag
    overrides the YAML's method; ``--resume`` keeps the run's teacher and method (its config.yaml)."""
    import yaml

    from napari_medkd.config import load_config
    from napari_medkd.train.events import read_events

    cfg = tmp_path / "kd.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"root": str(tiny_vessels)}, "model": {"name": "unet_tiny"},
                                   "distill": {"teacher": str(teacher), "method": "cwd"}}), encoding="utf-8")
    run = tmp_path / "kd"
    assert main(["distill", "--config", str(cfg), "--out", str(run)] + _budget(2)) == 0
    saved = load_config(run / "config.yaml")
    assert saved.distill.teacher == str(teacher) and saved.distill.method == "cwd"
    iters = [e for e in read_events(run / "events.jsonl") if e["event"] == "iter"]
    assert iters and all("cwd" in e["terms"] for e in iters)
    run2 = tmp_path / "kd2"
    assert main(["distill", "--config", str(cfg), "--method", "logit_kd", "--out", str(run2)] + _budget(2)) == 0
    assert load_config(run2 / "config.yaml").distill.method == "logit_kd"
    assert main(["distill", "--resume", str(run2), "--iterations", "3"]) == 0
    starts = [e for e in read_events(run2 / "events.jsonl") if e["event"] == "start"]
    assert [e["task"] for e in starts] == ["distill", "distill"]
    iters = [e for e in read_events(run2 / "events.jsonl") if e["event"] == "iter"]
    assert iters[-1]["iter"] == 3 and "logit_kd" in iters[-1]["terms"]
