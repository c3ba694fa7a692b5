"""``medkd bench`` on a tiny suite: table, CSV and plots written; finished runs reused on a rerun;
FSD columns for the cross-domain set when the suite has a GKD row."""
import csv

import yaml

from napari_medkd.cli import main


def _suite(tmp_path, data, cross):
    suite = {
        "name": "tiny", "data": str(data), "cross_domain": [str(cross)], "teacher": {"model": "unet_tiny"},
        "student": "unet_tiny", "methods": ["none", "gkd"], "seeds": [0, 1], "fsd_tile": 32,
        "data_options": {"patch_size": 32},
        "presets": {"cpu": {"teacher": {"iterations": 3, "batch_size": 2, "val_every": 3},
                            "train": {"iterations": 2, "batch_size": 2, "val_every": 2},
                            "stage_iterations": {"msan": 2}}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    return path


def test_bench_writes_table_and_reuses_runs(tiny_vessels, tmp_path, monkeypatch, capsys):
    import napari_medkd.workflows.bench as bench

    monkeypatch.setattr(bench, "_ort_ms", lambda run, log, shape=None: 1.0)  # ONNX timing is benchmarked elsewhere
    suite = _suite(tmp_path, tiny_vessels, tiny_vessels)
    results = tmp_path / "results"
    assert main(["bench", "--suite", str(suite), "--preset", "cpu", "--results", str(results)]) == 0
    root = results / "tiny" / "cpu"
    md = (root / "results.md").read_text(encoding="utf-8")
    for row in ("teacher (unet_tiny)", "student alone", "student + gkd"):
        assert row in md
    assert "FSD in vs" in md
    rows = list(csv.DictReader(open(root / "results.csv")))
    assert [r["method"] for r in rows] == ["teacher", "none", "gkd"]
    assert rows[1]["seeds"] == "2"
    assert (root / "dice.png").stat().st_size > 0 and (root / "dice_vs_ms.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["bench", "--suite", str(suite), "--preset", "cpu", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.count("reuse") == 5 and " train " not in out


def test_teacher_budget_is_not_mixed_with_the_students(tmp_path):
    from napari_medkd.workflows.bench import Suite, _config

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "data": str(tmp_path), "teacher": {"model": "unet"}, "student": "unet_tiny", "methods": ["none"],
        "presets": {"cpu": {"teacher": {"minutes": 10, "batch_size": 8},
                            "train": {"iterations": 300, "batch_size": 4, "threads": 2}}}}), encoding="utf-8")
    suite = Suite.load(path, "cpu")
    t = _config(suite, "unet", 0, {k: v for k, v in suite.teacher.items() if k != "model"})
    assert t.train.minutes == 10 and t.train.iterations is None and t.train.batch_size == 8 and t.train.threads == 2
    s = _config(suite, "unet_tiny", 1, {})
    assert s.train.iterations == 300 and s.train.minutes is None and s.train.seed == 1


def test_bench_trains_students_in_parallel_jobs(tiny_vessels, tmp_path, monkeypatch):
    """--jobs 2 trains the student runs in two processes; every run finishes and the table has the
    per-run training seconds and the suite's compute minutes."""
    import napari_medkd.workflows.bench as bench

    monkeypatch.setattr(bench, "_ort_ms", lambda run, log, shape=None: 1.0)
    suite = _suite(tmp_path, tiny_vessels, tiny_vessels)
    results = tmp_path / "results"
    assert main(["bench", "--suite", str(suite), "--preset", "cpu", "--results", str(results), "--jobs", "2",
                 "--methods", "none"]) == 0
    root = results / "tiny" / "cpu"
    for seed in (0, 1):
        assert bench._finished(root / "runs" / f"none_s{seed}")
        assert bench._run_seconds(root / "runs" / f"none_s{seed}") > 0
    md = (root / "results.md").read_text(encoding="utf-8")
    assert "train s/run" in md and "run-minutes" in md and "2 parallel job(s)" in md and "CPU cores" in md


def test_a_finished_run_with_other_settings_is_not_reused(tiny_vessels, tmp_path, monkeypatch):
    """Changing a preset (here the students' iterations) must not silently reuse old runs."""
    import pytest

    import napari_medkd.workflows.bench as bench

    monkeypatch.setattr(bench, "_ort_ms", lambda run, log, shape=None: 1.0)
    suite = _suite(tmp_path, tiny_vessels, tiny_vessels)
    results = tmp_path / "results"
    assert main(["bench", "--suite", str(suite), "--preset", "cpu", "--results", str(results), "--methods", "none"]) == 0
    raw = yaml.safe_load(suite.read_text(encoding="utf-8"))
    raw["presets"]["cpu"]["train"]["iterations"] = 3
    suite.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(RuntimeError, match="other settings.*iterations"):
        bench.run_bench(suite, "cpu", results, methods=["none"], log=lambda m: None)


def test_a_run_whose_method_preset_changed_is_not_reused(tiny_vessels, tmp_path, monkeypatch):
    """Each student run records its method's terms (method.json); when the preset in the code has other
    terms or weights since, the run is refused, not reused under the new name."""
    import json

    import pytest

    import napari_medkd.workflows.bench as bench

    monkeypatch.setattr(bench, "_ort_ms", lambda run, log, shape=None: 1.0)
    suite = _suite(tmp_path, tiny_vessels, tiny_vessels)
    raw = yaml.safe_load(suite.read_text(encoding="utf-8"))
    raw["methods"] = ["none", "logit_kd"]
    raw["seeds"] = [0]
    suite.write_text(yaml.safe_dump(raw), encoding="utf-8")
    results = tmp_path / "results"
    bench.run_bench(suite, "cpu", results, log=lambda m: None)
    record = results / "tiny" / "cpu" / "runs" / "logit_kd_s0" / "method.json"
    saved = json.loads(record.read_text(encoding="utf-8"))
    assert saved["method"] == "logit_kd" and [t[0] for t in saved["terms"]] == ["logit_kd"]
    bench.run_bench(suite, "cpu", results, log=lambda m: None)  # unchanged preset: reused
    saved["terms"].append(["skd_holistic", 0.1, {}])  # as if the preset had another term then
    record.write_text(json.dumps(saved), encoding="utf-8")
    with pytest.raises(RuntimeError, match="logit_kd_s0 was trained with method 'logit_kd'"):
        bench.run_bench(suite, "cpu", results, log=lambda m: None)


def test_bench_on_a_3d_suite_reports_volume_costs(tiny_msd, tmp_path):
    """3D networks: MACs and the onnxruntime time are of a 64³ volume (a 2D 256² input cannot go
    through a 3D network), exported and run for real."""
    import napari_medkd.workflows.bench as bench

    suite = {
        "name": "tiny3d", "data": str(tiny_msd), "teacher": {"model": "unet3d_tiny"}, "student": "unet3d_tiny",
        "methods": ["none"], "seeds": [0], "data_options": {"patch_size": 16, "val_fraction": 0.25},
        "presets": {"cpu": {"teacher": {"iterations": 2, "batch_size": 2, "val_every": 2},
                            "train": {"iterations": 2, "batch_size": 2, "val_every": 2}}},
    }
    path = tmp_path / "tiny3d.yaml"
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    md = bench.run_bench(path, "cpu", tmp_path / "results", log=lambda m: None).read_text(encoding="utf-8")
    assert "GMACs@64³" in md and "ORT ms/64³" in md and "64×64×64 volume" in md
    rows = list(csv.DictReader(open(tmp_path / "results" / "tiny3d" / "cpu" / "results.csv")))
    assert [r["method"] for r in rows] == ["teacher", "none"]
    assert float(rows[1]["gmacs"]) > 0 and float(rows[1]["ort_ms"]) > 0
