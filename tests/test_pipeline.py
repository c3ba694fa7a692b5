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
    summary = run_pipeline(tiny_msd, out, minutes_teacher=0.03, minutes_student=0.02, teacher="unet_tiny",
                           student="unet_tiny", method="logit_kd", log=lambda s: None)
    report = (out / "report.md").read_text(encoding="utf-8")
    for row in ("teacher (unet_tiny)", "student (unet_tiny)", "student + logit_kd"):
        assert row in report
    assert "ONNX student" in report and "ms per slice" in report
    assert (out / "comparison.png").stat().st_size > 10_000
    assert (out / "student.onnx").is_file()
    assert set(summary["runs"]) == {"teacher", "student", "distilled"}
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["test"]
    # a rerun replaces its own folder only with overwrite
    with pytest.raises(FileExistsError):
        run_pipeline(tiny_msd, out, minutes_teacher=0.01, minutes_student=0.01, teacher="unet_tiny",
                     method="none", export=False, log=lambda s: None)


def test_pipeline_never_replaces_a_foreign_folder(tiny_msd, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep", encoding="utf-8")
    with pytest.raises(FileExistsError, match="not made by"):
        run_pipeline(tiny_msd, out, overwrite=True, log=lambda s: None)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep"
