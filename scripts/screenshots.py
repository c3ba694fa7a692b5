"""Screenshots of the napari-medkd widgets on the hippocampus sample (needs a display: xvfb-run).

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshots.py [--out docs/screenshots]

Runs every widget for real, with short budgets: the Distil widget trains a teacher (``unet``) and
distils a student into it in background processes; Compare, Region graphs and Alignment maps use
those two runs; the runs browser lists them and exports the student to ONNX, which Live inference
runs (given the run folder); the batch panel segments the sample's training images. Each shot is
``viewer.screenshot(canvas_only=False)`` saved as ``<out>/<widget>.png``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "napari_medkd" / "sample_data" / "hippocampus"


def wait(cond, timeout: float, what: str) -> None:
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    t0 = time.time()
    while not cond():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
    for _ in range(20):  # let the canvas and the plots draw
        app.processEvents()
        time.sleep(0.02)


def close_notifications(viewer) -> None:
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication

    for widget in QApplication.topLevelWidgets() + viewer.window._qt_window.findChildren(NapariQtNotification):
        if isinstance(widget, NapariQtNotification):
            widget.close()
    wait(lambda: True, 1, "closing notifications")


def shoot(viewer, out: Path, name: str) -> Path:
    close_notifications(viewer)
    path = out / f"{name}.png"
    viewer.screenshot(str(path), canvas_only=False)
    print(f"saved {path}", flush=True)
    return path


_DOCKED = []


def dock(viewer, widget, name: str):
    """Dock ``widget`` on the right, replacing the previous one (the canvas keeps its size)."""
    while _DOCKED:
        viewer.window.remove_dock_widget(_DOCKED.pop())
    widget.setMaximumWidth(560)  # wide tables would otherwise squeeze the canvas
    dw = viewer.window.add_dock_widget(widget, name=name, area="right")
    _DOCKED.append(dw)
    viewer.window.resize(1400, 900)
    return dw


def busiest_slice(labels: np.ndarray) -> int:
    return int(np.argmax((labels > 0).reshape(labels.shape[0], -1).sum(1)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    ap.add_argument("--work", help="folder for the runs (default: a temporary folder)")
    ap.add_argument("--minutes", type=float, default=1.5, help="training budget of the teacher and of the student")
    ap.add_argument("--method", default="mskd")
    ap.add_argument("--student", help="a finished student run folder to reuse (skips training and the Distil shot)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="medkd-shots-"))

    import napari

    from napari_medkd._widgets.alignment_widget import AlignmentWidget
    from napari_medkd._widgets.compare_widget import CompareWidget
    from napari_medkd._widgets.distill_widget import DistillWidget
    from napari_medkd._widgets.graph_widget import GraphWidget
    from napari_medkd._widgets.live_widget import LiveWidget
    from napari_medkd._widgets.batch_widget import BatchWidget
    from napari_medkd._widgets.runs_widget import RunsWidget

    viewer = napari.Viewer(show=True, title="napari-medkd")
    viewer.window.resize(1400, 900)
    image, labels = viewer.open_sample("napari-medkd", "hippocampus")
    z = busiest_slice(np.asarray(labels.data))
    viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])
    viewer.reset_view()

    # 1. Distil: teacher first, then the student, each in its own process
    w = DistillWidget(viewer)
    dock(viewer, w, "Distil")
    w.data_dir.value = DATA
    w.train_teacher.value = True
    w.teacher_model.value = "unet"
    w.student.value, w.method.value = "unet_tiny", args.method
    w.budget_kind.value, w.budget.value = "minutes", args.minutes
    w.patch_size.value, w.batch_size.value, w.val_every.value = 48, 8, 40
    w.runs_root.value = work  # the run folder field stays empty: one new folder per Start
    viewer.layers.selection.active = image
    if args.student:  # reuse a finished run (its teacher beside it): no training, no Distil shot
        run = Path(args.student)
    else:
        w.start()
        wait(lambda: not w.running, 3600, "teacher training and distillation")
        if w.prediction_layer is None:
            raise RuntimeError(f"the Distil run did not finish: {w.status.text()}")
        run = w.run_dir  # the student's run folder (the teacher's is <run>_teacher)
        w.prediction_layer.opacity = 0.6
        labels.visible = False
        shoot(viewer, out, "distill")
        print(f"event-loop delay during the runs: max {w.max_event_loop_delay_ms:.0f} ms", flush=True)
    teacher_run = run.with_name(run.name + "_teacher")

    # 2. Compare
    c = CompareWidget(viewer)
    dock(viewer, c, "Compare")
    c.image_layer.value, c.truth_layer.value = image, labels
    c.teacher_run.value, c.student_run.value = teacher_run, run
    c.compare()
    wait(lambda: c.result is not None, 600, "compare")
    for lyr in viewer.layers:
        lyr.visible = lyr in (image, c.layers["teacher"], c.layers["student"])
    shoot(viewer, out, "compare")
    c.grid.value = True
    c.result = None
    c.compare()
    wait(lambda: c.result is not None, 600, "compare (grid)")
    shown = {lyr.name for lyr in c.layers.values()}
    for lyr in viewer.layers:
        lyr.visible = lyr.name in shown or any(lyr.name == f"{image.name} | {n}" for n in shown)
    viewer.reset_view()
    shoot(viewer, out, "compare_grid")
    viewer.canvas.grid.enabled = False
    for lyr in viewer.layers:
        lyr.visible = lyr is image

    # 3. Region graphs (class-region prototypes on the slice in view)
    g = GraphWidget(viewer)
    dock(viewer, g, "Region graphs")
    g.image_layer.value = image
    g.teacher_run.value, g.student_run.value = teacher_run, run
    g.graph_type.value, g.tap.value, g.top_k.value = g.graph_type.choices[0], "enc_high", 40
    g.compute()
    wait(lambda: bool(g.result), 600, "region graphs")
    for lyr in viewer.layers:
        lyr.visible = lyr is image or lyr.name.startswith("graph teacher")
    shoot(viewer, out, "graph")

    # 4. Alignment maps
    a = AlignmentWidget(viewer)
    dock(viewer, a, "Alignment maps")
    a.image_layer.value = image
    a.teacher_run.value, a.student_run.value = teacher_run, run
    a.taps.value = ["enc_low"]
    a.compute()
    wait(lambda: bool(a.result), 600, "alignment maps")
    for lyr in viewer.layers:
        lyr.visible = lyr in (image, viewer.layers["alignment enc_low"])
    shoot(viewer, out, "alignment")

    # 5. Runs browser: the two runs; Export ONNX of the student
    rw = RunsWidget(viewer)
    dock(viewer, rw, "Trained models (runs)")
    rw.root.value = work
    rw.select(run.name)
    rw.export_row.export()
    wait(lambda: rw.export_row.button.isEnabled(), 600, "export")
    rw.refresh()
    rw.select(run.name)
    viewer.layers.selection.active = image
    rw.show_on_image()
    wait(lambda: f"{run.name} prediction" in viewer.layers and not rw.worker.is_running, 300, "show on image")
    for lyr in viewer.layers:
        lyr.visible = lyr in (image, viewer.layers[f"{run.name} prediction"])
    shoot(viewer, out, "runs")

    # 6. Batch: the sample's training images, with their labels for the metrics CSV
    bw = BatchWidget(viewer)
    dock(viewer, bw, "Segment a folder")
    bw.run.value, bw.inputs.value, bw.labels.value = run, DATA / "imagesTr", DATA / "labelsTr"
    bw.output.value = work / "batch_masks"
    bw.start()
    wait(lambda: bw.result is not None, 600, "batch")
    for lyr in viewer.layers:
        lyr.visible = lyr in (image, labels)
    shoot(viewer, out, "batch")

    # 7. Live ONNX inference, given the run folder (its exported model)
    lw = LiveWidget(viewer)
    dock(viewer, lw, "Live inference")
    lw.image_layer.value = image
    lw.onnx.value = run
    lw.request_slice()
    wait(lambda: lw.slices_done >= 1, 300, "live slice")
    lw.segment_volume()
    wait(lambda: not lw.busy, 600, "live volume")
    for lyr in viewer.layers:
        lyr.visible = lyr in (image, lw.result_layer)
    shoot(viewer, out, "live")
    print(f"runs in {work}", flush=True)
    viewer.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
