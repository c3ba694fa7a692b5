"""The kit around a trained model: Export ONNX from a run, Live on a run folder, the runs browser
(list, compare, delete after confirmation), batch segmentation writing masks with the source geometry
and a metrics CSV, the menus under Layers > Segment (pytest-qt, xvfb-run)."""
from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

napari = pytest.importorskip("napari")
from test_widgets import _open_case, errors, runs  # noqa: E402,F401  (fixtures)

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("xdg_dirs")]


def test_runs_browser_export_then_live_on_the_run_folder(make_napari_viewer, qtbot, runs, errors):
    from napari_medkd._widgets.live_widget import LiveWidget
    from napari_medkd._widgets.runs_widget import RunsWidget

    viewer = make_napari_viewer()
    image, _, _ = _open_case(viewer, runs["data"])
    w = RunsWidget(viewer)
    w.root.value = runs["student"].parent
    assert [r.name for r in w.rows] == ["student", "teacher"]  # newest first
    assert w.table.item(0, 2).text() == "logit_kd" and w.table.item(1, 2).text() == "(trained)"
    w.select("student")
    w.export_row.export()
    qtbot.waitUntil(lambda: w.export_row.button.isEnabled(), timeout=90_000)
    assert not errors, errors
    assert (runs["student"] / "model.onnx").is_file() and "mask agreement" in w.export_row.last_report
    live = LiveWidget(viewer)
    live.image_layer.value = image
    live.onnx.value = runs["student"]  # a run folder, not an .onnx file
    live.request_slice()
    qtbot.waitUntil(lambda: live.slices_done >= 1, timeout=60_000)
    assert live.session.path == runs["student"] / "model.onnx"
    # "Compare with teacher" opens the Compare panel with both runs filled in
    cmp_widget = w.compare()
    assert cmp_widget.student_run.value == runs["student"] and cmp_widget.teacher_run.value == runs["teacher"]


def test_runs_browser_deletes_only_after_confirmation(make_napari_viewer, runs, tmp_path, errors):
    from napari_medkd._widgets.runs_widget import RunsWidget

    shutil.copytree(runs["teacher"], tmp_path / "old_run")
    viewer = make_napari_viewer()
    w = RunsWidget(viewer)
    w.root.value = tmp_path
    w.select("old_run")
    asked = []
    assert not w.delete_selected(confirm=lambda title, text: asked.append(text) or False)
    assert (tmp_path / "old_run").is_dir() and "cannot be undone" in asked[0]
    w.select("old_run")
    assert w.delete_selected(confirm=lambda *_: True)
    assert not (tmp_path / "old_run").exists() and w.rows == []


def test_batch_writes_masks_with_the_source_geometry_and_a_csv(make_napari_viewer, qtbot, runs, tmp_path, errors):
    import SimpleITK as sitk

    from napari_medkd._widgets.batch_widget import BatchWidget
    from napari_medkd.io.image_io import read_image

    src, lab = tmp_path / "images", tmp_path / "labels"
    src.mkdir()
    lab.mkdir()
    for case in ("c50", "c51"):  # 2D colour NIfTI with spacing and origin, the model's kind of image
        rgb = sitk.ReadImage(str(runs["data"] / "test" / "images" / f"{case}.png"))
        rgb.SetSpacing((0.5, 0.7))
        rgb.SetOrigin((3.0, -2.0))
        sitk.WriteImage(rgb, str(src / f"{case}.nii.gz"))
        m = sitk.ReadImage(str(runs["data"] / "test" / "masks" / f"{case}.png"))
        m.CopyInformation(rgb)
        sitk.WriteImage(m, str(lab / f"{case}.nii.gz"))
    viewer = make_napari_viewer()
    w = BatchWidget(viewer)
    w.run.value, w.inputs.value, w.labels.value, w.output.value = runs["student"], src, lab, tmp_path / "out"
    w.start()
    qtbot.waitUntil(lambda: w.result is not None, timeout=90_000)
    assert not errors, errors
    assert w.progress.value() == 2 and len(w.result.report.results) == 2
    for case in ("c50", "c51"):
        mask = read_image(tmp_path / "out" / f"{case}_mask.nii.gz")
        np.testing.assert_allclose(mask.spacing, (0.5, 0.7))
        np.testing.assert_allclose(mask.origin, (3.0, -2.0))
    rows = list(csv.DictReader(open(tmp_path / "out" / "metrics.csv", encoding="utf-8")))
    assert [r["case"] for r in rows] == ["c50.nii.gz", "c51.nii.gz"]
    assert all(r["volume_unit"] == "mm2" and 0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert float(rows[0]["volume"]) == pytest.approx(
        float((read_image(tmp_path / "out" / "c50_mask.nii.gz").array == 1).sum()) * 0.35)


def test_widgets_are_in_the_layers_segment_menu_with_readable_names(make_napari_viewer):
    from napari._app_model import get_app_model

    make_napari_viewer()
    app = get_app_model()
    items = [getattr(i, "command", None) for i in app.menus.get_menu("napari/layers/segment")]
    ids = {c.id for c in items if c is not None}
    for widget in ("distill", "compare", "live", "batch", "runs"):
        assert f"napari-medkd:{widget}_widget" in ids or f"napari-medkd.{widget}_widget" in ids, sorted(ids)
    titles = {c.title for c in items if c is not None and "medkd" in c.id}
    assert "Segment a folder of images (MedKD segmentation)" in titles, titles
    assert "Train a small model (distil) (MedKD segmentation)" in titles, titles


def test_export_int8_from_the_distil_panel(make_napari_viewer, qtbot, runs, tmp_path, errors):
    """The Distil panel's Export row on its finished run: int8 (fp32 first when missing), compared."""
    from napari_medkd._widgets.distill_widget import DistillWidget
    from napari_medkd.inference.ort_infer import OrtSegmenter

    run = tmp_path / "student"
    shutil.copytree(runs["student"], run, ignore=shutil.ignore_patterns("*.onnx"))
    viewer = make_napari_viewer()
    w = DistillWidget(viewer)
    assert not w.export_row.button.isEnabled()  # no run yet
    w.run_dir = run
    w._set_running(False)
    w.export_row.precision.setCurrentText("int8")
    w.export_row.export()
    qtbot.waitUntil(lambda: w.export_row.button.isEnabled(), timeout=120_000)
    assert not errors, errors
    assert (run / "model.onnx").is_file() and (run / "model.int8.onnx").is_file()
    assert "quantised" in w.export_row.last_report and "exported" in w.export_row.last_report
    assert OrtSegmenter(str(run / "model.int8.onnx")).card.quantization
