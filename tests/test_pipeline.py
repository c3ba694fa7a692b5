"""The one-click pipeline: three models trained, evaluated, the student exported, a report written;
an output folder it did not make is never replaced."""
import json

import pytest

from napari_medkd.workflows.pipeline import run_pipeline


@pytest.fixture
def ascii_locale():
    """Qt and other libraries may leave LC_CTYPE at "C" (ASCII); text files must still be written as UTF-8."""
    import locale

    old = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    yield
    locale.setlocale(locale.LC_CTYPE, old)


def test_pipeline_writes_report_figure_and_onnx(tiny_msd, tmp_path, ascii_locale):
    out = tmp_path / "out"
    summary = run_pipeline(tiny_msd, out, teacher_iterations=6, student_iterations=4, teacher="unet_tiny",
                           student="unet_tiny", method="logit_kd", labelled=1, teacher_kwargs={},
                           log=lambda s: None)
    report = (out / "report.md").read_text(encoding="utf-8")
    for row in ("teacher (unet_tiny)", "student (unet_tiny)", "student + logit_kd"):
        assert row in report
    assert "both students saw 1 labelled training case(s)" in report and "vs alone)" in report
    assert summary["labelled"] == 1 and summary["iterations"] == {"teacher": 6, "student": 4, "distilled": 4}
    # the students saw one labelled case; the distilled one also the other training images, unlabelled
    from napari_medkd.train.events import read_events

    starts = {r: next(e for e in read_events(out / r / "events.jsonl") if e["event"] == "start")
              for r in ("teacher", "student", "distilled")}
    assert starts["teacher"]["labelled_cases"] == starts["teacher"]["train_cases"]
    assert starts["student"]["labelled_cases"] == 1 and starts["student"]["sampled_cases"] == 1
    assert starts["distilled"]["labelled_cases"] == 1
    assert starts["distilled"]["sampled_cases"] == starts["distilled"]["train_cases"] > 1
    assert "ONNX student" in report and "ms per slice" in report
    assert (out / "comparison.png").stat().st_size > 10_000
    assert (out / "student.onnx").is_file()
    assert set(summary["runs"]) == {"teacher", "student", "distilled"}
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["test"]
    # a rerun replaces its own folder only with overwrite
    with pytest.raises(FileExistsError):
        run_pipeline(tiny_msd, out, teacher_iterations=2, student_iterations=2, teacher="unet_tiny",
                     method="none", export=False, log=lambda s: None)


def test_pipeline_never_replaces_a_foreign_folder(tiny_msd, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep", encoding="utf-8")
    with pytest.raises(FileExistsError, match="not made by"):
        run_pipeline(tiny_msd, out, overwrite=True, log=lambda s: None)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep"
