"""What failed or killed runs leave behind (issue 15, item 9): a run that failed before its first checkpoint
is started again in its folder with a notice; `--overwrite` replaces an earlier run (its own files only);
temporary files of killed writers are removed by the next run or resume; metrics.csv is rolled back
to the resumed checkpoint; a half-written event line is cut; summary.json holds no NaN."""
import json
import math

import pytest

from napari_medkd.cli import main
from napari_medkd.train.checkpoint import load_checkpoint
from napari_medkd.train.engine import RunExistsError, run_training
from napari_medkd.train.events import read_events
from napari_medkd.train.run_dir import rollback_metrics

from test_engine import tiny_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LEFTOVERS = (".last.pt.ab12cd_9.tmp", "stages/.paraphraser.pt.x1y2z3w4.tmp", ".s.onnx.qwertyui.tmp",
             ".medkd-write-k2j_ab9x/part.dcm")


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def _notices(run):
    return [e["message"] for e in read_events(run / "events.jsonl") if e["event"] == "notice"]


def test_failed_run_before_its_first_checkpoint_is_started_again(tiny_vessels, tmp_path):
    run = tmp_path / "run"
    bad = tiny_cfg(tiny_vessels, iterations=2, val_every=2)
    bad.model.name = "no_such_model"
    with pytest.raises(Exception):
        run_training(bad, run)
    assert (run / "config.yaml").exists() and not (run / "last.pt").exists()
    res = run_training(tiny_cfg(tiny_vessels, iterations=2, val_every=2), run)
    assert res["status"] == "finished"
    notes = _notices(run)
    assert len(notes) == 1 and "failed" in notes[0] and "no_such_model" in notes[0] and "starting it again" in notes[0]
    assert [e["event"] for e in read_events(run / "events.jsonl")].count("start") == 1


def test_run_with_checkpoints_needs_resume_or_overwrite(tiny_vessels, tmp_path, capsys):
    run = tmp_path / "run"
    run_training(tiny_cfg(tiny_vessels, iterations=2, val_every=2), run)
    with pytest.raises(RunExistsError, match="--resume .*--overwrite"):
        run_training(tiny_cfg(tiny_vessels, iterations=2, val_every=2), run)
    args = ["train", "--data", str(tiny_vessels), "--model", "unet_tiny", "--out", str(run), "--iterations", "3",
            "--val-every", "3", "--batch-size", "2", "--patch-size", "32"]
    assert main(args) == 2
    assert main(args + ["--overwrite"]) == 0
    assert "[note] replaced the earlier run" in capsys.readouterr().out
    assert load_checkpoint(run / "last.pt")["iter"] == 3
    assert [e["event"] for e in read_events(run / "events.jsonl")].count("start") == 1


def test_overwrite_never_removes_files_a_run_does_not_write(tiny_vessels, tmp_path):
    run = tmp_path / "run"
    run_training(tiny_cfg(tiny_vessels, iterations=2, val_every=2), run)
    (run / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(RunExistsError, match="notes.txt"):
        run_training(tiny_cfg(tiny_vessels, iterations=2), run, overwrite=True)
    assert (run / "notes.txt").read_text(encoding="utf-8") == "mine" and (run / "last.pt").exists()
    with pytest.raises(ValueError, match="--resume"):
        run_training(tiny_cfg(tiny_vessels, iterations=2), run, resume=True, overwrite=True)


def test_distill_has_overwrite_too():
    from napari_medkd.cli import build_parser

    args = build_parser().parse_args(["distill", "--out", "x", "--overwrite"])
    assert args.overwrite


def test_resume_removes_leftovers_rolls_back_metrics_and_cuts_a_half_line(tiny_vessels, tmp_path):
    run, cfg = tmp_path / "run", tiny_cfg(tiny_vessels, iterations=6, val_every=2)
    stop_at_four = lambda rec: rec.get("iter") == 4 and (run / "STOP").write_text("", encoding="utf-8")  # noqa: E731
    assert run_training(cfg, run, on_event=stop_at_four)["iterations"] == 4
    for name in LEFTOVERS:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(b"partial")
    (run / "keep.tmp").write_text("not ours", encoding="utf-8")
    with open(run / "metrics.csv", "a", encoding="utf-8") as fh:  # killed after a validation, before its checkpoint
        fh.write("6,1.0,0.5,0.5\n8,1.")
    with open(run / "events.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"event": "iter", "it')
    assert run_training(cfg, run, resume=True)["iterations"] == 6
    assert not any((run / name).exists() for name in LEFTOVERS)
    assert not (run / ".medkd-write-k2j_ab9x").exists() and (run / "stages").is_dir()
    assert (run / "keep.tmp").exists()
    assert any("removed 4 temporary file(s)" in n for n in _notices(run))
    rows = (run / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4", "6"]
    for line in (run / "events.jsonl").read_text(encoding="utf-8").splitlines():
        _strict_json(line)


def test_rollback_metrics(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("iter,elapsed_s,dice_mean\n3,1,0.1\n6,2,0.2\n6,2,0.2\n9,3,0.3\n12,4,0.", encoding="utf-8")
    assert rollback_metrics(path, 6) == 3
    assert path.read_text(encoding="utf-8") == "iter,elapsed_s,dice_mean\n3,1,0.1\n6,2,0.2\n"
    assert rollback_metrics(path, 6) == 0
    path.write_text("iter,elaps", encoding="utf-8")
    rollback_metrics(path, 0)
    assert not path.exists()


def test_summary_json_holds_no_nan(tmp_path):
    from napari_medkd.io.jsonsafe import dumps
    from napari_medkd.workflows.evaluate import EvalResult

    res = EvalResult("m", "d", "test", {0: "background", 1: "vessel"})
    res.rows = [{"case": "c1", "class": 1, "class_name": "vessel", "dice": 0.5, "hd95": math.nan, "asd": math.inf}]
    res.summary = {"1": {"dice": 0.5, "hd95": math.nan, "asd": math.inf}}
    res.write(tmp_path)
    summary = _strict_json((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert summary["summary"]["1"] == {"dice": 0.5, "hd95": None, "asd": None}
    assert summary["seconds_per_case"] is None
    assert dumps({"a": [float("nan")]}) == '{"a": [null]}'
