"""The five napari widgets end to end on tiny data (pytest-qt + make_napari_viewer, under xvfb-run)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("xdg_dirs")]


@pytest.fixture
def errors(monkeypatch):
    """Every error notification shown by the widgets."""
    from napari.utils import notifications

    seen = []
    monkeypatch.setattr(notifications, "show_error", lambda msg: seen.append(str(msg)))
    return seen


def _cfg(data, model, iterations, out_seed=0):
    from napari_medkd.config import RunConfig

    cfg = RunConfig()
    cfg.data.root = str(data)
    cfg.data.patch_size = 64
    cfg.model.name = model
    cfg.train.iterations, cfg.train.batch_size, cfg.train.val_every = iterations, 2, 1000
    cfg.train.device, cfg.train.seed, cfg.train.threads = "cpu", out_seed, 2
    return cfg


@pytest.fixture(scope="module")
def runs(tiny_vessels, tmp_path_factory):
    """A tiny teacher (unet_tiny, 4 iterations) and a logit-KD student (3 iterations), in process."""
    import torch

    from napari_medkd.train.engine import run_training

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("runs")
    run_training(_cfg(tiny_vessels, "unet_tiny", 4), root / "teacher")
    cfg = _cfg(tiny_vessels, "unet_tiny", 3, 1)
    cfg.distill.teacher, cfg.distill.method = str(root / "teacher"), "logit_kd"
    run_training(cfg, root / "student")
    return {"data": tiny_vessels, "teacher": root / "teacher", "student": root / "student"}


def _open_case(viewer, data: Path, split="test", case="c50"):
    from napari_medkd._reader import image_layer_data
    from napari_medkd.data.datasets import load_label
    from napari_medkd.io.image_io import read_image

    img = read_image(data / split / "images" / f"{case}.png")
    d, attrs, _ = image_layer_data(img, case, "image", source=str(img.path))
    image = viewer.add_image(d, **attrs)
    truth = viewer.add_labels(load_label(data / split / "masks" / f"{case}.png"), name="truth")
    fov = viewer.add_labels((load_label(data / split / "fov" / f"{case}.png") > 0).astype(np.uint8), name="fov")
    return image, truth, fov


def _events(run_dir: Path):
    from napari_medkd.train.events import read_events

    return read_events(run_dir / "events.jsonl")


def _distill_widget(viewer, runs, out: Path, iterations: int):
    from napari_medkd._widgets.distill_widget import DistillWidget

    w = DistillWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.data_dir.value = runs["data"]
    w.teacher_dir.value = runs["teacher"]
    w.student.value, w.method.value = "unet_tiny", "logit_kd"
    w.budget.value, w.patch_size.value, w.batch_size.value = iterations, 64, 2
    w.device.value = "cpu"
    w.out_dir.value = out
    return w


def test_distill_start_adds_prediction_layer(make_napari_viewer, qtbot, runs, tmp_path, errors):
    viewer = make_napari_viewer()
    image, _, _ = _open_case(viewer, runs["data"])
    image.scale, image.translate = (0.5, 0.25), (3.0, -1.0)
    image.metadata.pop("medkd_geometry")  # the geometry now comes from the layer's transform
    w = _distill_widget(viewer, runs, tmp_path / "run", 4)
    viewer.layers.selection.active = image
    w.start()
    assert w.running and w.proc is not None
    # the run is `medkd distill --config FILE --out RUN`, FILE holding the whole form
    from napari_medkd._widgets._runs import requested_config_path
    from napari_medkd.config import load_config

    req = requested_config_path(tmp_path / "run")
    assert w.proc.args[-5:] == ["distill", "--config", str(req), "--out", str(tmp_path / "run")]
    cfg = load_config(req)
    assert (cfg.distill.teacher, cfg.distill.method, cfg.model.name) == (str(runs["teacher"]), "logit_kd", "unet_tiny")
    assert (cfg.data.root, cfg.data.patch_size) == (str(runs["data"]), 64)
    assert (cfg.train.iterations, cfg.train.minutes, cfg.train.batch_size, cfg.train.device) == (4, None, 2, "cpu")
    qtbot.waitUntil(lambda: not w.running, timeout=90_000)
    assert not errors, errors
    assert [e["status"] for e in _events(tmp_path / "run") if e["event"] == "end"] == ["finished"]
    pred = w.prediction_layer
    assert pred is not None and pred in viewer.layers and pred._type_string == "labels"
    assert pred.data.shape == image.data.shape[:2]
    np.testing.assert_allclose(pred.scale, image.scale)
    np.testing.assert_allclose(pred.translate, image.translate)
    assert pred.metadata["medkd_geometry"]["spacing"] == [0.25, 0.5]
    assert w.plot.series["loss"][0], "the live plot got the iteration events"
    assert w.progress.value() == 1000
    print(f"max event-loop delay during the run: {w.max_event_loop_delay_ms:.1f} ms")
    assert w.max_event_loop_delay_ms < 1000


def test_distill_cancel_then_resume(make_napari_viewer, qtbot, runs, tmp_path, errors):
    viewer = make_napari_viewer()
    _open_case(viewer, runs["data"])
    run = tmp_path / "long"
    w = _distill_widget(viewer, runs, run, 100_000)
    w.start()
    qtbot.waitUntil(lambda: any(e["event"] == "iter" for e in _events(run)), timeout=60_000)
    w.cancel(grace_s=5.0)
    import time

    t0 = time.perf_counter()
    qtbot.waitUntil(lambda: not w.running, timeout=30_000)
    assert time.perf_counter() - t0 < 10.0
    assert not errors, errors
    ends = [e for e in _events(run) if e["event"] == "end"]
    assert ends[-1]["status"] == "stopped" and (run / "last.pt").exists()
    stopped_at = ends[-1]["iter"]
    w.budget.value = stopped_at + 3  # resume extends/limits the budget to a few more iterations
    w.resume()
    qtbot.waitUntil(lambda: not w.running, timeout=90_000)
    assert not errors, errors
    ends = [e for e in _events(run) if e["event"] == "end"]
    assert ends[-1]["status"] == "finished" and ends[-1]["iter"] == stopped_at + 3
    starts = [e for e in _events(run) if e["event"] == "start"]
    assert starts[-1]["resumed_at"] == stopped_at


def test_distill_plan_with_a_teacher_first_writes_two_configs(make_napari_viewer, runs, tmp_path, errors):
    from napari_medkd.config import load_config

    viewer = make_napari_viewer()
    w = _distill_widget(viewer, runs, tmp_path / "run", 10)
    w.train_teacher.value, w.teacher_model.value = True, "unet"
    w.budget_kind.value, w.budget.value, w.threads.value, w.val_every.value = "minutes", 1.5, 0, 7
    teacher_step, student_step = w._plan()
    assert not errors and not (tmp_path / "run").exists(), "planning never creates the run folders"
    assert teacher_step["run_dir"] == tmp_path / "run_teacher" and teacher_step["cmd"][3:5] == ["train", "--config"]
    t, s = load_config(teacher_step["config"]), load_config(student_step["config"])
    assert t.model.name == "unet" and t.distill.teacher is None and t.distill.method is None
    assert s.model.name == "unet_tiny" and s.distill.teacher == str(tmp_path / "run_teacher")
    assert s.distill.method == "logit_kd"
    for cfg in (t, s):
        assert (cfg.train.minutes, cfg.train.iterations, cfg.train.threads, cfg.train.val_every) == (1.5, None, None, 7)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("train: [not, a, mapping]\n", encoding="utf-8")
    w.resume()
    assert not w.running and "cannot resume" in errors[-1] and "mapping" in errors[-1]


def test_distill_bad_inputs_give_error_notifications(make_napari_viewer, runs, tmp_path, errors):
    viewer = make_napari_viewer()
    w = _distill_widget(viewer, runs, tmp_path / "bad", 4)
    w.teacher_dir.value = tmp_path / "no_such_teacher"
    w.start()
    assert not w.running and "teacher run folder" in errors[-1] and "does not exist" in errors[-1]
    w.teacher_dir.value = runs["teacher"]
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not an image", encoding="utf-8")
    w.data_dir.value = junk
    w.start()
    assert not w.running and "no cases found" in errors[-1]
    # image and labels layers of different shapes
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    viewer.add_labels(np.zeros((16, 16), np.uint8), name="lab")
    w.source.value = "open layers"
    w.image_layer.value, w.labels_layer.value = viewer.layers["img"], viewer.layers["lab"]
    w.start()
    assert not w.running and "(32, 32)" in errors[-1] and "(16, 16)" in errors[-1]
    assert len(errors) == 3
    viewer.add_points(np.zeros((1, 2)))  # the viewer still works
    assert len(viewer.layers) == 3


def test_compare_dice_matches_metrics_and_evaluate(make_napari_viewer, qtbot, runs):
    from napari_medkd._widgets.compare_widget import CompareWidget
    from napari_medkd.workflows.evaluate import evaluate_model
    from napari_medkd.train.run_model import load_run_model
    from napari_medkd.metrics.segmentation import segmentation_metrics

    viewer = make_napari_viewer()
    image, truth, fov = _open_case(viewer, runs["data"])
    w = CompareWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.image_layer.value, w.truth_layer.value, w.fov_layer.value = image, truth, fov
    w.teacher_run.value, w.student_run.value = runs["teacher"], runs["student"]
    w.grid.value = True
    w.compare()
    qtbot.waitUntil(lambda: w.result is not None, timeout=60_000)
    for name in ("teacher", "student", "disagreement"):
        assert w.layers[name].data.shape == truth.data.shape and w.layers[name] in viewer.layers
    assert viewer.grid.enabled
    t, s = w.layers["teacher"].data, w.layers["student"].data
    dis = w.layers["disagreement"].data
    np.testing.assert_array_equal(dis == 1, (t > 0) & (s == 0))
    np.testing.assert_array_equal(dis == 2, (s > 0) & (t == 0))
    m = w.result["metrics"]
    ref = segmentation_metrics(t, truth.data, [1], spacing=(1.0, 1.0), fov=fov.data > 0)
    assert m["teacher vs truth"][1]["dice"] == pytest.approx(ref[1]["dice"], abs=1e-12)
    ref_ts = segmentation_metrics(s, t, [1], spacing=(1.0, 1.0), fov=fov.data > 0)
    assert m["student vs teacher"][1]["dice"] == pytest.approx(ref_ts[1]["dice"], abs=1e-12)
    ev = evaluate_model(load_run_model(runs["teacher"]), runs["data"], "test")
    row = next(r for r in ev.rows if r["case"] == "c50" and r["class"] == 1)
    assert m["teacher vs truth"][1]["dice"] == pytest.approx(row["dice"], abs=1e-9)
    hd = m["teacher vs truth"][1]["hd95"]
    assert (math.isnan(hd) and math.isnan(row["hd95"])) or hd == pytest.approx(row["hd95"], abs=1e-9)
    assert w.table.rowCount() == 6 and w.table.columnCount() == 1
    assert w.table.item(0, 0).text() == f"{m['teacher vs truth'][1]['dice']:.3f}"


@pytest.mark.parametrize("kind", [0, 1])
def test_region_graph_adds_points_and_shapes(make_napari_viewer, qtbot, runs, kind):
    from napari_medkd._widgets.graph_widget import GRAPH_TYPES, GraphWidget

    viewer = make_napari_viewer()
    image, _, _ = _open_case(viewer, runs["data"])
    w = GraphWidget(viewer)
    w.image_layer.value = image
    w.teacher_run.value, w.student_run.value = runs["teacher"], runs["student"]
    w.graph_type.value, w.tap.value, w.top_k.value = GRAPH_TYPES[kind], "enc_high", 10
    w.show_side.value = "all"
    w.compute()
    qtbot.waitUntil(lambda: bool(w.result), timeout=60_000)
    for side in ("teacher", "student", "difference"):
        pts = viewer.layers[f"graph {side} nodes"]
        assert pts._type_string == "points" and len(pts.data) == int(w.result["valid"].sum()) >= 1
        if len(pts.data) > 1:
            shp = viewer.layers[f"graph {side} edges"]
            assert shp._type_string == "shapes" and 1 <= len(shp.data) <= 10
    a = w.result["affinity"]
    np.testing.assert_allclose(a["difference"], a["student"] - a["teacher"], atol=1e-6)
    if kind == 0:
        assert a["teacher"].shape[0] > 4 and np.allclose(np.diag(a["teacher"]), 1, atol=1e-4)
    assert len(w.plot.titles) == 3
    # a recompute updates the six layers in place (no remove / re-add)
    before = {lyr.name: lyr for lyr in viewer.layers}
    w.result = {}
    w.top_k.value = 5
    w.compute()
    qtbot.waitUntil(lambda: bool(w.result), timeout=60_000)
    assert all(viewer.layers[n] is lyr for n, lyr in before.items()) and len(viewer.layers) == len(before)
    for side in ("teacher", "student", "difference"):
        edges = viewer.layers[f"graph {side} edges"]
        assert len(edges.data) <= 5 and set(edges.shape_type) <= {"line"}


def test_alignment_adds_heatmap_layer(make_napari_viewer, qtbot, runs):
    from napari_medkd._widgets.alignment_widget import AlignmentWidget

    viewer = make_napari_viewer()
    image, _, _ = _open_case(viewer, runs["data"])
    w = AlignmentWidget(viewer)
    w.image_layer.value = image
    w.teacher_run.value, w.student_run.value = runs["teacher"], runs["student"]
    w.taps.value = ["bottleneck", "enc_low"]
    w.compute()
    qtbot.waitUntil(lambda: bool(w.result), timeout=60_000)
    for tap in ("bottleneck", "enc_low"):
        heat = viewer.layers[f"alignment {tap}"]
        assert heat._type_string == "image" and heat.data.shape == image.data.shape[:2]
        assert heat.colormap.name == "inferno" and heat.opacity == 0.5
        assert np.isfinite(heat.data).all() and heat.data.min() >= -1 - 1e-5 and heat.data.max() <= 1 + 1e-5
        assert heat.data.std() > 0, "the map shows where teacher and student differ"
    assert w.fsd_label.text().startswith("n/a: not a GKD run")


def test_live_inference_adds_mask(make_napari_viewer, qtbot, runs, tmp_path):
    try:
        from napari_medkd.export.onnx_export import export_onnx
        import napari_medkd.inference.ort_infer  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"ONNX export / runtime module missing: {exc}")
    from napari_medkd._widgets.live_widget import LiveWidget

    onnx_path = tmp_path / "student.onnx"
    export_onnx(runs["student"], onnx_path)
    viewer = make_napari_viewer()
    image, _, _ = _open_case(viewer, runs["data"])
    w = LiveWidget(viewer)
    w.image_layer.value = image
    w.onnx.value = onnx_path
    w.request_slice()
    qtbot.waitUntil(lambda: w.slices_done >= 1, timeout=60_000)
    live = viewer.layers[f"{image.name} live"]
    assert live._type_string == "labels" and live.data.shape == image.data.shape[:2]
    assert w.last_ms is not None and w.last_ms > 0
    w.segment_volume()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    from napari_medkd.inference.predict_files import predict_image
    from napari_medkd.train.run_model import load_run_model
    from napari_medkd.io.image_io import read_image

    ref = predict_image(load_run_model(runs["student"]), read_image(runs["data"] / "test" / "images" / "c50.png"))
    agree = float((viewer.layers[f"{image.name} live"].data == ref).mean())
    assert agree > 0.99


@pytest.fixture(scope="module")
def gkd_runs(tiny_msd, tmp_path_factory):
    """On 3D volumes (2D models on slices): a teacher and a GKD student with a short ACT stage."""
    import torch

    from napari_medkd.train.engine import run_training

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("gkd")
    cfg = _cfg(tiny_msd, "unet_tiny", 3)
    cfg.data.patch_size = 32
    run_training(cfg, root / "teacher")
    cfg = _cfg(tiny_msd, "unet_tiny", 2, 1)
    cfg.data.patch_size = 32
    # the DCGD term alone (its own MSAN pair + P-SAE, pre-trained in the "msan" stage)
    specs = [{"name": "gkd_dcgd", "weight": 1.0, "params": {"dim": 64}}]
    cfg.distill.teacher, cfg.distill.terms = str(root / "teacher"), specs
    cfg.distill.stage_iterations = {"msan": 2}
    run_training(cfg, root / "student")
    return {"data": tiny_msd, "teacher": root / "teacher", "student": root / "student"}


def test_gkd_alignment_fsd_and_graph_on_a_volume(make_napari_viewer, qtbot, gkd_runs):
    from napari_medkd._widgets.alignment_widget import AlignmentWidget
    from napari_medkd.analysis.fsd_probe import load_run_msan as load_msan
    from napari_medkd._widgets.graph_widget import GRAPH_TYPES, GraphWidget
    from napari_medkd.distill.terms.gkd_msan import MSANHeader

    assert (gkd_runs["student"] / "stages" / "msan.pt").exists()
    t_msan, s_msan, source = load_msan(gkd_runs["student"], 2)
    assert isinstance(t_msan, MSANHeader) and isinstance(s_msan, MSANHeader) and "gkd_dcgd" in source
    viewer = make_napari_viewer()
    [image] = viewer.open(str(gkd_runs["data"] / "imagesTr" / "blob_004.nii.gz"), plugin="napari-medkd")
    w = AlignmentWidget(viewer)
    w.image_layer.value = image
    w.teacher_run.value, w.student_run.value = gkd_runs["teacher"], gkd_runs["student"]
    w.taps.value = ["bottleneck", "dec_low"]
    w.compute()
    qtbot.waitUntil(lambda: bool(w.result), timeout=60_000)
    assert w.result["gkd"] and w.result["fsd"] is not None and w.result["fsd"] >= 0
    assert "12 slices" in w.fsd_label.text()
    heat = viewer.layers["alignment bottleneck"]
    assert heat.data.shape == image.data.shape and np.isfinite(heat.data).all()
    assert heat.data.min() >= -1 - 1e-5 and heat.data.max() <= 1 + 1e-5
    np.testing.assert_allclose(heat.scale, image.scale)
    # one slice only: the others stay NaN, the FSD needs the volume
    viewer.dims.set_point(0, image.data_to_world((5, 0, 0))[0])
    w.slice_only.value = True
    w.result = {}
    w.compute()
    qtbot.waitUntil(lambda: bool(w.result), timeout=60_000)
    m = viewer.layers["alignment bottleneck"].data
    assert np.isfinite(m[5]).all() and np.isnan(m[4]).all() and w.result["fsd"] is None
    # class-region graph on the slice in view of the volume
    g = GraphWidget(viewer)
    g.image_layer.value = image
    g.teacher_run.value, g.student_run.value = gkd_runs["teacher"], gkd_runs["student"]
    g.graph_type.value, g.tap.value = GRAPH_TYPES[1], "dec_low"
    g.compute()
    qtbot.waitUntil(lambda: bool(g.result), timeout=60_000)
    pts = viewer.layers["graph teacher nodes"]
    assert pts.data.shape[1] == 3 and np.all(pts.data[:, 0] == 5)


def test_open_layers_become_a_one_case_dataset(make_napari_viewer, tmp_path, errors):
    from napari_medkd._widgets._common import InputError, write_layer_dataset
    from napari_medkd.data.datasets import load_dataset, load_label
    from napari_medkd.io.image_io import read_image

    viewer = make_napari_viewer()
    img = viewer.add_image(np.random.default_rng(0).normal(size=(6, 20, 24)).astype(np.float32),
                           scale=(2.0, 0.5, 0.75), translate=(1.0, 2.0, 3.0))
    lab = np.zeros((6, 20, 24), np.uint8)
    lab[2:4, 5:10, 6:12] = 1
    lab[2:4, 10:15, 6:12] = 2
    labels = viewer.add_labels(lab)
    root = write_layer_dataset(img, labels, tmp_path / "ds")
    spec = load_dataset(root)
    assert len(spec.cases) == 1 and spec.dims == 3 and spec.class_names == {0: "background", 1: "class 1",
                                                                             2: "class 2"}
    back = read_image(spec.cases[0].image)
    np.testing.assert_allclose(back.spacing, (0.75, 0.5, 2.0))
    np.testing.assert_allclose(back.origin, (3.0, 2.0, 1.0))
    np.testing.assert_array_equal(load_label(spec.cases[0].label), lab)
    labels.data = np.zeros_like(lab)
    with pytest.raises(InputError, match="empty"):
        write_layer_dataset(img, labels, tmp_path / "ds2")


def test_put_layer_updates_in_place_without_private_attributes(make_napari_viewer):
    """A second result of the same kind and name updates the layer object (no remove/add, no napari
    'private attribute' warning); a layer of another kind under that name is replaced."""
    import warnings

    from napari_medkd._widgets._common import put_layer

    viewer = make_napari_viewer()
    first = put_layer(viewer, "labels", np.zeros((8, 8), np.uint8), "result")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = put_layer(viewer, "labels", np.ones((8, 8), np.uint8), "result")
    assert second is first and int(first.data.sum()) == 64 and len(viewer.layers) == 1
    image = put_layer(viewer, "image", np.ones((8, 8), np.float32), "result")
    assert image is not first and len(viewer.layers) == 1
