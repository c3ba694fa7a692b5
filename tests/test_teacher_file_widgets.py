"""Issue 13 item 4 in napari: the Distil widget distils a teacher *file* (here the ready-made student's ONNX)
on the scan open in the viewer, masks or none, in one action; the Compare widget compares with such a
teacher; a file that is no teacher is refused with a message naming it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("xdg_dirs")]


@pytest.fixture
def errors(monkeypatch):
    from napari.utils import notifications

    seen = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: seen.append(str(msg)))
    return seen


@pytest.fixture
def onnx_teacher():
    from napari_medkd.io.ready_made import model_path

    return model_path("hippocampus_student", "onnx")


def test_distil_an_onnx_teacher_on_the_open_scan_without_masks(make_napari_viewer, qtbot, tmp_path, errors,
                                                               onnx_teacher):
    from napari_medkd._widgets._runs import requested_config_path
    from napari_medkd._widgets.distill_widget import DistillWidget
    from napari_medkd.config import load_config
    from napari_medkd.data.datasets import load_dataset
    from napari_medkd.train.run_model import load_run_model

    viewer = make_napari_viewer()
    viewer.open_sample("napari-medkd", "hippocampus")
    viewer.layers.remove("hippocampus labels")  # scans only: the teacher labels them
    w = DistillWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.source.value = "open layers"
    w.teacher_file.value = onnx_teacher
    w.student.value, w.method.value = "unet_tiny", "logit_kd"
    w.budget.value, w.patch_size.value, w.batch_size.value, w.threads.value = 2, 48, 2, 1
    w.device.value = "cpu"
    w.out_dir.value = tmp_path / "run"
    w.start()
    assert w.running and not errors, errors
    cfg = load_config(requested_config_path(tmp_path / "run"))
    assert cfg.distill.teacher == str(onnx_teacher) and cfg.distill.method == "logit_kd"
    spec = load_dataset(cfg.data.root)
    assert len(spec.cases) == 1 and spec.cases[0].label is None  # the open scan, no masks
    qtbot.waitUntil(lambda: not w.running, timeout=180_000)
    assert not errors, errors
    card = load_run_model(tmp_path / "run").card
    assert card.teacher_info["format"] == "onnx" and card.class_names[1] == "Anterior"  # the teacher's classes
    pred = w.prediction_layer
    assert pred is not None and pred.data.shape == viewer.layers["hippocampus MRI"].data.shape


def test_a_file_that_is_no_teacher_is_refused_by_name(make_napari_viewer, tmp_path, errors):
    from napari_medkd._widgets.distill_widget import DistillWidget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-medkd", "hippocampus")
    w = DistillWidget(viewer)
    bad = tmp_path / "notes.txt"
    bad.write_text("not a model")
    w.source.value, w.teacher_file.value, w.out_dir.value = "open layers", bad, tmp_path / "run"
    w.start()
    assert not w.running and len(errors) == 1 and "notes.txt" in errors[0] and "teacher" in errors[0]


def test_compare_with_an_onnx_teacher(make_napari_viewer, qtbot, onnx_teacher):
    from napari_medkd._widgets.compare_widget import CompareWidget
    from napari_medkd.io.ready_made import model_path

    viewer = make_napari_viewer()
    viewer.open_sample("napari-medkd", "hippocampus")
    w = CompareWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.image_layer.value, w.truth_layer.value = viewer.layers["hippocampus MRI"], viewer.layers["hippocampus labels"]
    w.teacher_file.value = onnx_teacher                         # the ONNX export of ...
    w.student_run.value = model_path("hippocampus_student")      # ... this checkpoint (fp16 weights, torch)
    w.compare()
    qtbot.waitUntil(lambda: w.result is not None, timeout=60_000)
    m = w.result["metrics"]
    assert m["student vs teacher"][1]["dice"] > 0.99 and m["student vs teacher"][2]["dice"] > 0.99
    assert m["teacher vs truth"][1]["dice"] == pytest.approx(m["student vs truth"][1]["dice"], abs=0.01)
    assert m["teacher vs truth"][2]["dice"] > 0.5  # a working model on a case it trained on
    t, s, d = (w.layers[k] for k in ("teacher", "student", "disagreement"))  # layers named after the runs
    assert t.data.shape == viewer.layers["hippocampus labels"].data.shape
    assert w.result["class_names"] == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert np.array_equal(d.data > 0, t.data != s.data)


def test_live_picker_offers_the_ready_made_student(make_napari_viewer, qtbot, onnx_teacher):
    from napari_medkd._widgets.live_widget import LiveWidget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-medkd", "hippocampus")
    w = LiveWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.use_ready_made()
    assert Path(str(w.onnx.value)) == onnx_teacher
    w.segment_volume()  # the model loads in a worker first, then the volume is segmented
    qtbot.waitUntil(lambda: w.session is not None and not w.busy and "hippocampus MRI live" in viewer.layers
                    and viewer.layers["hippocampus MRI live"].data.any(), timeout=60_000)
    seg = viewer.layers["hippocampus MRI live"].data
    truth = viewer.layers["hippocampus labels"].data
    assert seg.shape == truth.shape and set(np.unique(seg)) == {0, 1, 2}
    assert 2 * ((seg > 0) & (truth > 0)).sum() / ((seg > 0).sum() + (truth > 0).sum()) > 0.6
