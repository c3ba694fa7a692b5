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
    import napari_medkd.bench as bench

    monkeypatch.setattr(bench, "_ort_ms", lambda run, log: 1.0)  # ONNX timing is benchmarked elsewhere
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
