"""The Distil widget's runs belong to the widget and to one folder each: closing the dock stops the
run's process, every Start gets a new run folder (and its layers the run's name), an emptied path
field is "not set", and open layers become a data set inside the run folder (pytest-qt, xvfb-run)."""
from __future__ import annotations

import time

import numpy as np
import pytest

napari = pytest.importorskip("napari")
from test_widgets import _distill_widget, _events, _open_case, errors, runs  # noqa: E402,F401  (fixtures)

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("xdg_dirs")]


def test_closing_the_dock_mid_run_ends_its_process(make_napari_viewer, qtbot, runs, tmp_path, errors):
    from napari_medkd._widgets._runs import process_alive

    viewer = make_napari_viewer()
    _open_case(viewer, runs["data"])
    run = tmp_path / "long"
    w = _distill_widget(viewer, runs, run, 100_000)
    w.start()
    pid = w.proc.pid
    qtbot.waitUntil(lambda: any(e["event"] == "iter" for e in _events(run)), timeout=60_000)
    assert process_alive(pid)
    viewer.window.remove_dock_widget(w)  # what the dock's ✕ does: the widget is only unparented
    t0 = time.perf_counter()
    qtbot.waitUntil(lambda: not process_alive(pid), timeout=5_000)
    print(f"process {pid} ended {time.perf_counter() - t0:.2f} s after the dock closed")
    assert w.parent() is None  # the widget object lives on; its process does not


def test_two_starts_make_two_run_folders_and_two_named_layers(make_napari_viewer, qtbot, runs, tmp_path, errors):
    viewer = make_napari_viewer()
    image, _, _ = _open_case(viewer, runs["data"])
    w = _distill_widget(viewer, runs, tmp_path / "unused", 2)
    w.out_dir.line_edit.value = ""  # the user empties the field: a new folder per Start
    w.runs_root.value = tmp_path / "runs"
    viewer.layers.selection.active = image
    made = []
    for _ in range(2):
        w.start()
        assert w.running, errors
        made.append(w.run_dir)
        qtbot.waitUntil(lambda: not w.running, timeout=90_000)
        assert not errors, errors
    assert made[0] != made[1] and all(p.parent == tmp_path / "runs" for p in made)
    assert all(p.name.endswith("-unet_tiny-logit_kd") or "-unet_tiny-logit_kd-" in p.name for p in made)
    for p in made:
        assert [e["status"] for e in _events(p) if e["event"] == "end"] == ["finished"]
        assert (p / "process.log").is_file()  # the process's output stays in its run folder
        assert viewer.layers[f"{p.name} prediction"].data.shape == image.data.shape[:2]
    assert not (tmp_path / "unused").exists()


def test_an_emptied_path_field_is_not_set(make_napari_viewer, runs, tmp_path, errors, monkeypatch):
    from napari_medkd._widgets._common import path_value

    monkeypatch.chdir(runs["teacher"])  # a working folder that *is* a run folder must not be picked up
    viewer = make_napari_viewer()
    w = _distill_widget(viewer, runs, tmp_path / "run", 2)
    w.teacher_dir.line_edit.value = ""
    assert path_value(w.teacher_dir) is None
    w.start()
    assert not w.running and errors[-1].startswith("choose the teacher")
    w.teacher_dir.value = runs["teacher"]
    w.data_dir.line_edit.value = ""
    w.start()
    assert not w.running and errors[-1].startswith("choose a data set folder")
    w.out_dir.line_edit.value = ""
    w.runs_root.value = tmp_path / "runs"
    assert w.new_run_folder().parent == tmp_path / "runs"
    assert not list(tmp_path.glob("*run*/*")), "nothing was written"


def test_open_layers_data_set_lives_in_the_run_folder(make_napari_viewer, runs, tmp_path, errors):
    from napari_medkd.config import load_config

    viewer = make_napari_viewer()
    image, truth, _ = _open_case(viewer, runs["data"])
    w = _distill_widget(viewer, runs, tmp_path / "run", 2)
    w.source.value = "open layers"
    w.image_layer.value, w.labels_layer.value = image, truth
    [step] = w._plan()
    cfg = load_config(step["config"])
    assert cfg.data.root == str(tmp_path / "run" / "layers_data")
    assert (tmp_path / "run" / "layers_data" / "dataset.json").is_file()
    # the run accepts the folder holding its input data (and never clears it)
    from napari_medkd.train.run_dir import prepare_run_dir

    prepare_run_dir(cfg, tmp_path / "run", resume=False)
    assert (tmp_path / "run" / "layers_data" / "dataset.json").is_file()
    np.testing.assert_array_equal(image.data.shape[:2], truth.data.shape)
