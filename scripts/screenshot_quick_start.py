"""Screenshots of the Quick start panel on the hippocampus sample volume (needs a display: xvfb-run).

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_quick_start.py [--iterations 100]

Opens the sample (one MRI volume and its labels), docks the Quick start panel with the ready-made
teacher and the laptop-CPU preset, saves the form (``quick_start.png``), presses Start and, when the
job is done, saves the panel with its result card and the teacher's and distilled student's masks
(``quick_start_result.png``). The job is the real one (``medkd quickstart`` in a subprocess); only the
number of iterations per model is lowered from the preset's 400 (``--iterations``).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from screenshots import busiest_slice, close_notifications, wait  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--work", help="output folder of the job (default: a new temporary folder)")
    args = ap.parse_args(argv)
    import napari

    from napari_medkd._widgets.quick_start_widget import QuickStartWidget

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open_sample("napari-medkd", "hippocampus")
    w = QuickStartWidget(viewer)
    viewer.window.add_dock_widget(w, name="Quick start (make a fast model)", area="right")
    w.teacher.value = "ready-made hippocampus teacher"
    w.iterations.value = args.iterations
    w.out_dir.value = Path(args.work or tempfile.mkdtemp(prefix="medkd-shot-")) / "quick_start"
    wait(lambda: True, 2, "drawing")
    close_notifications(viewer)
    w.grab().save(str(out / "quick_start_panel.png"))
    t0 = time.time()
    w.start()
    wait(lambda: w.progress.value() > 100, 600, "the job running")
    close_notifications(viewer)
    viewer.screenshot(str(out / "quick_start.png"), canvas_only=False)
    wait(lambda: not w.running, 3600, "the Quick start job")
    print(f"job done in {time.time() - t0:.0f} s: {w.status.text()}", flush=True)
    if w.result is None:
        raise SystemExit(f"the job failed: {w.status.text()}")
    teacher = viewer.layers["teacher (Quick start)"].data
    viewer.dims.set_current_step(0, busiest_slice(teacher))
    viewer.layers["hippocampus labels"].visible = False
    wait(lambda: True, 2, "drawing")
    close_notifications(viewer)
    viewer.screenshot(str(out / "quick_start_result.png"), canvas_only=False)
    w.grab().save(str(out / "quick_start_card.png"))
    print("\n".join(w.result["card"]))
    print(f"saved {out}/quick_start.png, quick_start_panel.png, quick_start_result.png, quick_start_card.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
