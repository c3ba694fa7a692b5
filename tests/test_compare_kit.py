"""Compare, readable and guarded: a model that does not fit the image is refused with the reason,
Dice of a class absent from both maps is not defined, teacher/student are told apart by style, the
table has units, the chart has a bar per class, the grid puts the image in every cell."""
from __future__ import annotations

import math

import numpy as np
import pytest

from napari_medkd.card import ModelCard
from napari_medkd.io.image import MedicalImage


def _card(modality: str, dims: int, channels: int = 1, rgb_mode: str = "green") -> ModelCard:
    return ModelCard(model_name="unet", in_channels=channels, num_classes=3, class_names={0: "bg", 1: "a", 2: "b"},
                     preprocess={"modality": modality, "rgb_mode": rgb_mode}, model_dims=dims)


def _img(shape, spacing):
    n = len(spacing)
    return MedicalImage(np.zeros(shape, np.float32), spacing, (0.0,) * n, tuple(np.eye(n).ravel()))


def test_guard_names_what_does_not_fit():
    from napari_medkd.inference.fit import ModelDoesNotFit, check_fits, fit_problems

    fundus = _img((64, 64, 3), (1.0, 1.0))
    mri = _img((8, 16, 16), (1.0, 1.0, 1.0))
    problems = fit_problems(_card("MR", 3), fundus)
    assert len(problems) == 2
    assert "3D model" in problems[0] and "2D" in problems[0]
    assert "MR" in problems[1] and "RGB colour" in problems[1]
    with pytest.raises(ModelDoesNotFit, match="does not fit this image"):
        check_fits(_card("MR", 3), fundus)
    assert "RGB colour pictures" in fit_problems(_card("RGB", 2), mri)[0]
    assert fit_problems(_card("MR", 2), mri) == [] and fit_problems(_card("MR", 3), mri) == []
    assert fit_problems(_card("RGB", 2), fundus) == [] and fit_problems(_card("RGB", 2, 3, "rgb"), fundus) == []
    assert "input channel" in fit_problems(_card("RGB", 2, 3), fundus)[0]


def test_dice_of_a_class_absent_from_both_is_not_defined():
    from napari_medkd.analysis.compare import format_value, pair_metrics

    a = np.zeros((10, 10), np.uint8)
    b = np.zeros((10, 10), np.uint8)
    a[2:5, 2:5] = b[2:5, 3:6] = 1
    m = pair_metrics(a, b, [1, 2], spacing=(2.0, 0.5))
    assert m[1]["dice"] == pytest.approx(2 * 6 / 18) and not m[1]["absent"]
    assert math.isnan(m[2]["dice"]) and m[2]["absent"]
    assert format_value("dice", m[2]["dice"], True) == "not defined (absent in both)"
    assert format_value("hd95", m[1]["hd95"]).endswith(" mm")
    assert format_value("dice", 0.81234) == "0.812"


napari = pytest.importorskip("napari")
from test_widgets import _open_case, errors, runs  # noqa: E402,F401  (fixtures)


@pytest.mark.gui
@pytest.mark.usefixtures("xdg_dirs")
def test_compare_refuses_a_model_that_does_not_fit(make_napari_viewer, qtbot, runs, errors):
    from napari_medkd._widgets.compare_widget import CompareWidget

    viewer = make_napari_viewer()
    volume = viewer.add_image(np.random.default_rng(0).normal(size=(6, 32, 32)).astype(np.float32), name="MRI")
    w = CompareWidget(viewer)
    w.image_layer.value = volume
    w.teacher_run.value, w.student_run.value = runs["teacher"], runs["student"]
    w.compare()
    qtbot.waitUntil(lambda: w.compare_btn.isEnabled(), timeout=60_000)
    assert w.result is None and w.status.text() == "refused"
    assert "does not fit this image" in errors[-1] and "RGB colour pictures" in errors[-1]
    assert [lyr.name for lyr in viewer.layers] == ["MRI"]


@pytest.mark.gui
@pytest.mark.usefixtures("xdg_dirs")
def test_compare_is_readable(make_napari_viewer, qtbot, runs, errors):
    from napari_medkd._widgets._compare_style import CLASS_COLORS, DISAGREEMENT_COLORS
    from napari_medkd._widgets.compare_widget import CompareWidget

    viewer = make_napari_viewer()
    image, truth, _ = _open_case(viewer, runs["data"])
    w = CompareWidget(viewer)
    w.image_layer.value, w.truth_layer.value = image, truth
    w.teacher_run.value, w.student_run.value = runs["teacher"], runs["student"]
    w.grid.value = True
    w.compare()
    qtbot.waitUntil(lambda: w.result is not None, timeout=60_000)
    assert not errors, errors
    t, s, d = (w.layers[k] for k in ("teacher", "student", "disagreement"))
    assert t.name == f"teacher ({runs['teacher'].name})" and s.name == f"student ({runs['student'].name})"
    assert t.contour > 0 and s.contour == 0 and s.opacity < 1, "teacher outlined, student filled"
    assert {c.lower() for c in DISAGREEMENT_COLORS.values()}.isdisjoint(c.lower() for c in CLASS_COLORS)
    np.testing.assert_allclose(t.colormap.map(1), s.colormap.map(1))  # same class, same colour
    legend = w.legend.text()
    assert "outline" in legend and "filled" in legend and "student only" in legend and "teacher only" in legend
    headers = [w.table.verticalHeaderItem(r).text() for r in range(w.table.rowCount())]
    assert "HD95 (mm) teacher vs truth" in headers and "Dice student vs teacher" in headers
    assert set(w.chart.bars) == {"teacher vs truth", "student vs truth", "student vs teacher"}
    # grid: each result over its own copy of the image, titled; first result layer object kept
    assert viewer.canvas.grid.enabled and viewer.canvas.grid.stride == 2
    names = [lyr.name for lyr in viewer.layers]
    for ov in (t, s, d):
        i = names.index(ov.name)
        assert names[i - 1] == f"{image.name} | {ov.name}" and i % 2 == 1 and ov.name_overlay.visible
        assert viewer.layers[i - 1].data is image.data
    first = dict(w.layers)
    w.result = None
    w.compare()
    qtbot.waitUntil(lambda: w.result is not None, timeout=60_000)
    assert all(w.layers[k] is first[k] for k in first), "a second Compare updates the layers in place"
