"""The Quick start: held-back data for one case (slices / rows, geometry kept) or several, the verdict, and the
napari panel end to end on the open sample volume at a tiny budget (result card, layers, ONNX)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_medkd._sample_data import HIPPOCAMPUS_CASE, sample_root

HIPPO = sample_root() / "hippocampus"


def _one_case(tmp_path: Path) -> Path:
    from napari_medkd.data.from_arrays import write_array_dataset
    from napari_medkd.io.image_io import read_image

    img, lab = read_image(HIPPO / "imagesTr" / HIPPOCAMPUS_CASE), read_image(HIPPO / "labelsTr" / HIPPOCAMPUS_CASE)
    return write_array_dataset(img.array, lab.array.astype(np.uint8), tmp_path / "one", geometry=img.geometry())


def test_one_volume_is_cut_into_train_validation_and_test_blocks_on_its_grid(tmp_path):
    from napari_medkd.data.datasets import load_dataset, load_label
    from napari_medkd.data.holdout import prepare_holdout
    from napari_medkd.io.image_io import read_image

    hold = prepare_holdout(_one_case(tmp_path), tmp_path / "held")
    spec = load_dataset(hold.root)
    assert [c.split for c in spec.cases] == ["train", "train", "test"] and hold.val_cases == [spec.cases[1].id]
    assert "one case only" in hold.note and "held back for validation" in hold.note and "slices" in hold.note
    whole = read_image(spec.cases[0].image.parent.parent.parent / "one" / "imagesTr" / "case_000.nii.gz")
    truth = read_image(spec.cases[0].image.parent.parent.parent / "one" / "labelsTr" / "case_000.nii.gz").array
    spans = sorted((a, b) for _, a, b in hold.blocks)
    assert spans[0][0] == 0 and spans[-1][1] == whole.array.shape[hold.axis]  # contiguous, all of it
    assert all(spans[i][1] == spans[i + 1][0] for i in range(2))
    for case, (_, start, stop) in zip(spec.cases, hold.blocks):
        part = read_image(case.image)
        np.testing.assert_array_equal(part.array, np.take(whole.array, range(start, stop), axis=hold.axis))
        np.testing.assert_array_equal(load_label(case.label), np.take(truth, range(start, stop), axis=hold.axis))
        d = len(whole.spacing) - 1 - hold.axis  # first voxel of the block lies where it lay in the whole volume
        expect = np.asarray(whole.origin) + np.reshape(whole.direction, (3, 3))[:, d] * whole.spacing[d] * start
        np.testing.assert_allclose(part.origin, expect)
    for case in spec.cases[1:]:  # both structures are in the validation and the evaluation block
        assert set(np.unique(load_label(case.label))) == {0, 1, 2}
    hold0 = prepare_holdout(tmp_path / "one", tmp_path / "held0", axes=(0,))  # a 2D model: whole slices
    assert hold0.axis == 0 and "(axis 0)" in hold0.note


def test_one_2d_image_holds_out_rows_and_several_cases_hold_out_cases(tmp_path):
    from napari_medkd.data.datasets import load_dataset
    from napari_medkd.data.from_arrays import write_array_dataset
    from napari_medkd.data.holdout import prepare_holdout

    rng = np.random.default_rng(0)
    lab = np.zeros((40, 30), np.uint8)
    lab[5:35, 10:20] = 1
    root = write_array_dataset(rng.random((40, 30)).astype(np.float32), lab, tmp_path / "img2d")
    hold = prepare_holdout(root, tmp_path / "h2d")
    assert "rows" in hold.note and len(load_dataset(hold.root).cases) == 3
    hold = prepare_holdout(HIPPO, tmp_path / "h3")  # the sample has its own labelled test cases
    assert hold.root == str(HIPPO) and "4 labelled test case(s)" in hold.note
    spec = load_dataset(HIPPO)
    train_only = tmp_path / "train_only.csv"
    train_only.write_text("image,label\n" + "".join(f"{c.image},{c.label}\n" for c in spec.cases if c.split == "train"))
    hold = prepare_holdout(train_only, tmp_path / "h4")
    cases = load_dataset(hold.root).cases
    assert sum(c.split == "test" for c in cases) == 2 and len(cases) == 12 and "2 of 12 cases" in hold.note


def test_verdict_is_plain_and_says_undertrained_without_or_with_low_validation():
    from napari_medkd.workflows.quick_result import verdict

    base = {"agreement": 0.97, "ms_per_slice": {"teacher (torch)": 12.0}, "ms_per_slice_onnx": 3.0}
    assert verdict({**base, "validation_dice": {"distilled": None}}).startswith("undertrained: train longer")
    assert verdict({**base, "validation_dice": {"distilled": 0.3}}).startswith("undertrained: train longer")
    v = verdict({**base, "validation_dice": {"distilled": 0.8}})
    assert "agrees with the big one on 97 % of the voxels" in v and "4.0x faster" in v


@pytest.mark.gui
@pytest.mark.slow  # the whole job in its subprocess: ~35 s on 2 idle cores, 105 s with the cores shared 5 ways
@pytest.mark.usefixtures("xdg_dirs")
def test_quick_start_panel_on_the_open_sample_volume_end_to_end(make_napari_viewer, qtbot, tmp_path):
    from napari_medkd._widgets.quick_start_widget import QuickStartWidget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-medkd", "hippocampus")
    n_layers = len(viewer.layers)
    w = QuickStartWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.image_layer.value.name == "hippocampus MRI" and w.labels_layer.value is not None
    w.teacher.value = "ready-made hippocampus teacher"
    w.iterations.value = 2
    out = tmp_path / "qs"
    w.out_dir.value = out
    w.start()
    assert w.running
    formats = []
    w.progress.valueChanged.connect(lambda *_: formats.append(w.progress.format()))
    qtbot.waitUntil(lambda: not w.running, timeout=240_000)
    assert w.result is not None, w.status.text()
    events = [json.loads(ln) for ln in (out / "quickstart_events.jsonl").read_text().splitlines()]
    phases = [e["phase"] for e in events if e["event"] == "phase"]
    assert phases == ["data", "teacher", "student", "distilled", "evaluate", "export"]
    fractions = [e["fraction"] for e in events if "fraction" in e]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # one bar, only forwards
    assert any("4/6 distilling · " in f and "elapsed" in f and "left" in f for f in formats)  # phase and times
    assert w.phase_label.text().startswith("Step 6 of 6: exporting")
    card = w.card_text.text()
    assert not w.card.isHidden() and "one case only" in card and "held back for validation" in card
    for who in ("teacher", "student alone", "distilled student", "ms per slice", "speed-up", "Verdict"):
        assert who in card
    res = w.result
    assert set(res["dice"]) == {"teacher", "student", "distilled"} and res["held_back_cases"] == 1
    assert set(res["dice"]["teacher"]) == {"Anterior", "Posterior"}  # the ready-made teacher names the classes
    assert all(v is not None for v in res["dice"]["teacher"].values())  # both are in the held-back slices
    assert res["validation_dice"]["distilled"] is not None  # the held-out slices validated it
    assert (out / "student.onnx").is_file() and res["onnx_mb"] > 0 and (out / "report.md").is_file()
    added = [lyr.name for lyr in viewer.layers][n_layers:]
    assert added == ["teacher (Quick start)", "distilled (Quick start)"]
    assert viewer.layers["teacher (Quick start)"].data.shape == viewer.layers["hippocampus MRI"].data.shape


@pytest.mark.gui
@pytest.mark.usefixtures("xdg_dirs")
def test_closing_the_panel_stops_its_job_and_bad_inputs_are_named(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari.utils import notifications

    from napari_medkd._widgets.quick_start_widget import QuickStartWidget

    errors = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: errors.append(str(msg)))
    viewer = make_napari_viewer()
    w = QuickStartWidget(viewer)
    w.out_dir.value = tmp_path / "qs0"
    w.start()  # nothing open yet
    assert not w.running and "open an image first" in errors[-1]
    w.scans.value, w.folder.value = "a folder of scans", tmp_path / "nowhere"
    w.start()
    assert not w.running and "nowhere" in errors[-1]
    w.scans.value, w.folder.value = "a folder of scans", HIPPO
    w.teacher.value = "a model file (ONNX / TorchScript)"
    w.start()
    assert not w.running and "model file" in errors[-1]
    w.teacher.value, w.iterations.value, w.out_dir.value = "train one here", 500, tmp_path / "qs"
    w.start()
    proc = w.proc
    assert w.running and proc.poll() is None
    w.close()
    w.deleteLater()
    qtbot.waitUntil(lambda: proc.poll() is not None, timeout=20_000)  # the job does not outlive its panel
