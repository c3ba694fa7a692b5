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
    assert "Trained on cpu" in md  # where the runs were trained, from their logs (a GPU lease's runs say so)
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


def test_a_suite_distill_terms_override_reaches_the_run(tiny_vessels, tmp_path, monkeypatch):
    """A method entry's ``distill.terms`` replaces its preset's terms: it is in the run's config.yaml and
    the run trains with those terms (logged each iteration), not the preset's."""
    import json

    import napari_medkd.workflows.bench as bench
    from napari_medkd.config import load_config
    from napari_medkd.train.events import read_events

    monkeypatch.setattr(bench, "_ort_ms", lambda run, log, shape=None: 1.0)
    suite = _suite(tmp_path, tiny_vessels, tiny_vessels)
    raw = yaml.safe_load(suite.read_text(encoding="utf-8"))
    terms = [{"name": "cwd", "weight": 2.0, "params": {"tau": 2.0}}]
    raw["methods"] = ["none", {"name": "logit_kd", "distill": {"terms": terms}}]
    raw["seeds"] = [0]
    suite.write_text(yaml.safe_dump(raw), encoding="utf-8")
    logs = []
    bench.run_bench(suite, "cpu", tmp_path / "results", log=logs.append)
    run = tmp_path / "results" / "tiny" / "cpu" / "runs" / "logit_kd_s0"
    saved = load_config(run / "config.yaml")
    assert saved.distill.terms == terms and saved.distill.method == "logit_kd"
    iters = [e for e in read_events(run / "events.jsonl") if e["event"] == "iter"]
    assert iters and all("cwd" in e["terms"] and "logit_kd" not in e["terms"] for e in iters)
    assert json.loads((run / "method.json").read_text(encoding="utf-8"))["terms"] == terms
    alone = load_config(tmp_path / "results" / "tiny" / "cpu" / "runs" / "none_s0" / "config.yaml")
    assert alone.distill.terms is None
    assert not any("WARNING" in m for m in logs)  # the teacher's budget is in iterations


def test_a_row_can_name_its_method_preset_and_settings(tmp_path):
    """``{name: ROW, method: PRESET, distill: {...}}`` puts one preset in several rows with other settings
    (validation tuning): the row's runs carry the preset as their method and the row's distill keys, and
    the plain row keeps the defaults."""
    from napari_medkd.workflows.bench import Suite, _student_config

    suite = _suite(tmp_path, tmp_path, tmp_path)
    raw = yaml.safe_load(suite.read_text(encoding="utf-8"))
    raw["methods"] = ["none", "pseudo_label", {"name": "pseudo_label_nowarm", "method": "pseudo_label",
                                                "distill": {"warmup": None}}]
    suite.write_text(yaml.safe_dump(raw), encoding="utf-8")
    s = Suite.load(suite, "cpu")
    assert s.methods == ["none", "pseudo_label", "pseudo_label_nowarm"]
    plain = _student_config(s, "pseudo_label", 0, tmp_path / "teacher")
    tuned = _student_config(s, "pseudo_label_nowarm", 0, tmp_path / "teacher")
    assert plain.distill.method == tuned.distill.method == "pseudo_label"
    assert plain.distill.warmup == [0.2, 0.6] and tuned.distill.warmup is None
    assert _student_config(s, "none", 0, tmp_path / "teacher").distill.method == "none"


def test_a_minutes_only_teacher_budget_is_warned_about(tmp_path):
    from napari_medkd.workflows.bench import Suite, _teacher_config

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "data": str(tmp_path), "teacher": {"model": "unet"}, "student": "unet_tiny", "methods": ["none"],
        "presets": {"cpu": {"teacher": {"minutes": 10}, "train": {"iterations": 300}},
                    "it": {"teacher": {"iterations": 3000}, "train": {"iterations": 300}}}}), encoding="utf-8")
    logs = []
    assert _teacher_config(Suite.load(path, "cpu"), logs.append).train.minutes == 10
    assert len(logs) == 1 and "WARNING" in logs[0] and "minutes" in logs[0]
    logs.clear()
    assert _teacher_config(Suite.load(path, "it"), logs.append).train.iterations == 3000 and not logs


def test_shipped_suites_budget_the_teacher_in_iterations():
    from pathlib import Path

    suites = sorted((Path(__file__).resolve().parents[1] / "napari_medkd" / "suites").glob("*.yaml"))
    assert suites
    for path in suites:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        for name, preset in raw["presets"].items():
            teacher = {**raw["teacher"], **preset.get("teacher", {})}
            assert "minutes" not in teacher and teacher.get("iterations"), (path.name, name)


def _rows(teacher, alone, kd, sd=0.002):
    base = {"params": 10, "gmacs": 0.1, "spatial_dims": 2, "ort_ms": 1.0, "train_s_per_run": 1.0, "eval_s": 1.0,
            "hd95_in": 5.0, "hd95_in_sd": float("nan")}
    return [dict(base, row="teacher (unet)", method="teacher", seeds=1, dice_in=teacher, dice_in_sd=float("nan")),
            dict(base, row="student alone", method="none", seeds=3, dice_in=alone, dice_in_sd=sd),
            dict(base, row="student + logit_kd", method="logit_kd", seeds=3, dice_in=kd, dice_in_sd=sd)]


def _table(rows):
    from napari_medkd.workflows.bench_table import _gap, render_table

    _gap(rows)
    lines = render_table(rows, ["in"], [])
    head = next(i for i, ln in enumerate(lines) if ln.startswith("| model"))
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[head:head + 5] if ln.startswith("|")]
    header, body = cells[0], cells[2:]
    table = {r[0]: dict(zip(header, r)) for r in body}
    return lines, head, table


def test_table_without_headroom_prints_no_ratio():
    """Teacher below the student alone: no ratio (the sign would flip), the footnote, and a warning
    above the table because the teacher is not the best row."""
    lines, head, t = _table(_rows(teacher=0.70, alone=0.75, kd=0.74))
    assert t["student + logit_kd"]["gap closed (in)"].startswith("–")
    assert t["teacher (unet)"]["gap closed (in)"].startswith("–")
    assert any("no headroom: the teacher is not better than the student alone" in ln for ln in lines)
    assert any("Warning" in ln and "teacher is not the best row" in ln for ln in lines[:head])
    assert t["student + logit_kd"]["Δ vs alone (in)"].startswith("-0.010")


def test_table_with_a_teacher_close_to_alone_prints_no_ratio():
    """teacher − alone = 0.005 is under 0.01 (and under 2 pooled sd): the ratio would explode."""
    lines, head, t = _table(_rows(teacher=0.755, alone=0.75, kd=0.753))
    assert t["student + logit_kd"]["gap closed (in)"].startswith("–")
    assert any("no headroom" in ln for ln in lines)
    assert not any("Warning" in ln for ln in lines[:head])


def test_table_with_headroom_prints_ratio_and_significant_delta():
    lines, head, t = _table(_rows(teacher=0.85, alone=0.75, kd=0.80))
    kd = t["student + logit_kd"]
    assert kd["gap closed (in)"] == "0.50"
    assert kd["Δ vs alone (in)"] == "0.050 ± 0.003*"  # |Δ| > 2 x pooled sd (0.002): significant
    assert t["student alone"]["Δ vs alone (in)"] == "–" and t["student alone"]["gap closed (in)"] == "0.00"
    assert not any("no headroom" in ln for ln in lines) and not any("Warning" in ln for ln in lines[:head])
    _, _, t = _table(_rows(teacher=0.85, alone=0.75, kd=0.753))
    assert t["student + logit_kd"]["Δ vs alone (in)"] == "0.003 ± 0.003"  # within 2 sd: no star


def test_a_results_folder_is_re_rendered_from_its_csv(tmp_path):
    import math

    from napari_medkd.workflows.bench_table import _write_csv, rerender

    rows = _rows(teacher=0.70, alone=0.75, kd=0.74)
    _write_csv(rows, tmp_path / "results.csv")
    (tmp_path / "results.md").write_text("Suite `x` on some machine.\n\n| old table |\n", encoding="utf-8")
    md = rerender(tmp_path).read_text(encoding="utf-8")
    assert md.startswith("Suite `x` on some machine.\n\n") and "| old table |" not in md
    assert "Δ vs alone (in)" in md and "no headroom" in md
    back = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert math.isnan(float(back[2]["gap_closed_in"])) and abs(float(back[2]["delta_in"]) + 0.01) < 1e-9


def test_named_teacher_is_trained_once_and_shared_and_students_get_their_own_data(tiny_vessels, tmp_path,
                                                                                   monkeypatch, capsys):
    """Two suites naming the same teacher train it once (``RESULTS/teachers/<preset>/<name>``); the label-scarce
    suite's ``student_data`` reaches the students only, the teacher keeps every label."""
    import napari_medkd.workflows.bench as bench
    from napari_medkd.config import load_config

    monkeypatch.setattr(bench, "_ort_ms", lambda run, log, shape=None: 1.0)
    import shutil

    results = tmp_path / "results"
    shutil.copytree(tiny_vessels / "test" / "images", tmp_path / "imgs")  # relative to the suite file
    for name, extra in (("full", {}), ("scarce", {"student_data": {"labelled_cases": 1, "unlabelled_root": "imgs"},
                                                   "student_kwargs": {"width": 0.5}})):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "name": name, "data": str(tiny_vessels), "teacher": {"model": "unet_tiny", "name": "shared_t"},
            "student": "unet_tiny", "methods": ["none", "logit_kd"], "seeds": [0], "data_options": {"patch_size": 32},
            "presets": {"cpu": {"teacher": {"iterations": 3, "batch_size": 2, "val_every": 3},
                                "train": {"iterations": 2, "batch_size": 2, "val_every": 2}}}, **extra}), encoding="utf-8")
        assert main(["bench", "--suite", str(path), "--preset", "cpu", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    teacher = results / "teachers" / "cpu" / "shared_t"
    assert (teacher / "best.pt").exists() and not (results / "scarce" / "cpu" / "runs" / "teacher").exists()
    assert out.count("train shared_t") == 1 and "reuse shared_t" in out
    assert load_config(teacher / "config.yaml").data.labelled_cases is None
    kd = load_config(results / "scarce" / "cpu" / "runs" / "logit_kd_s0" / "config.yaml")
    assert kd.data.labelled_cases == 1 and kd.distill.teacher == str(teacher)
    assert kd.data.unlabelled_root == str(tmp_path / "imgs") and kd.model.kwargs == {"width": 0.5}
    md = (results / "scarce" / "cpu" / "results.md").read_text(encoding="utf-8")
    assert "Headroom on validation" in md


def test_runs_without_a_teacher_are_not_compared_on_distillation_settings():
    """A teacher or student-alone run made before a distillation default changed is still reused; a
    distilled run with other distillation settings is not."""
    from napari_medkd.config import RunConfig
    from napari_medkd.workflows.bench_runs import _config_differences

    saved, wanted = RunConfig(), RunConfig()
    saved.distill.warmup, wanted.distill.warmup = None, [0.2, 0.6]
    assert _config_differences(saved, wanted) == []
    saved.distill.method = wanted.distill.method = "logit_kd"
    assert any("distill.warmup" in d for d in _config_differences(saved, wanted))


def test_training_devices_count_each_session_of_each_run(tmp_path):
    import json

    from napari_medkd.workflows.bench_table import _training_devices

    def run(name, *devices):
        d = tmp_path / name
        d.mkdir()
        lines = [json.dumps({"event": "start", "device": dev}) for dev in devices] + [json.dumps({"event": "end"})]
        (d / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return d

    runs = [run("a", "cuda:0 (H200)"), run("b", "cuda:0 (H200)", "cpu (2 threads)"), tmp_path / "missing"]
    assert _training_devices(runs) == "cuda:0 (H200): 2 sessions; cpu (2 threads): 1 session"


def test_a_finished_run_is_reused_whatever_teacher_backend_now_runs():
    """``distill.teacher_backend`` only changes how the frozen teacher is computed (a converted one must agree
    with torch first), so a run from before the setting existed, or with another backend, is reused."""
    from napari_medkd.config import RunConfig
    from napari_medkd.workflows.bench_runs import _config_differences

    saved, wanted = RunConfig(), RunConfig()
    saved.distill.method = wanted.distill.method = "logit_kd"
    saved.distill.teacher_backend, wanted.distill.teacher_backend = "torch", "auto"
    assert _config_differences(saved, wanted) == []
    wanted.distill.grad_ratio = saved.distill.grad_ratio * 2  # what the student learns: still a difference
    assert _config_differences(saved, wanted)
