"""Folder `predict`/`infer` (issue 15, item 10): every file is tried, failures are listed at the end with
their reasons (non-zero exit), `--skip-existing` finishes an interrupted batch, a batch holds its output
folder's lock and removes killed writers' leftovers there."""
import errno
import shutil
from pathlib import Path

import pytest

from napari_medkd.cli import main
from napari_medkd.config import RunConfig
from napari_medkd.export.onnx_export import export_onnx
from napari_medkd.inference.batch import BatchError, run_batch
from napari_medkd.io.atomic import write_bytes_atomic
from napari_medkd.io.folder_lock import FolderLock, FolderLockedError
from napari_medkd.train.engine import run_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inputs(folder: Path, names=("a.png", "b.png", "c.png", "d.png")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"x")
    return folder


def _writer(fail=(), exc=None):
    calls = []

    def one(f, t):
        calls.append(f.name)
        if f.name in fail:
            raise exc or ValueError(f"{f}: not an image")
        write_bytes_atomic(t, b"mask")
        return t
    return one, calls


def test_every_file_is_tried_and_failures_are_listed(tmp_path):
    src, out = _inputs(tmp_path / "in"), tmp_path / "out"
    one, calls = _writer(fail=("b.png", "c.png"))
    with pytest.raises(BatchError) as err:
        run_batch(src, out, one)
    assert calls == ["a.png", "b.png", "c.png", "d.png"]
    rep = err.value.report
    assert [p.name for p, _ in rep.failed] == ["b.png", "c.png"] and len(rep.results) == 2
    msg = str(err.value)
    assert msg.startswith("2 of 4 file(s) failed") and f"{src / 'b.png'}: {src / 'b.png'}: not an image" in msg
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "d_mask.png"]


def test_skip_existing_resumes_a_batch(tmp_path):
    src, out = _inputs(tmp_path / "in"), tmp_path / "out"
    run_batch(src, out, _writer()[0])
    (out / "c_mask.png").unlink()
    with pytest.raises(FileExistsError, match="--skip-existing"):
        run_batch(src, out, _writer()[0])
    one, calls = _writer()
    rep = run_batch(src, out, one, skip_existing=True)
    assert calls == ["c.png"] and len(rep.skipped) == 3 and rep.summary().startswith("1 written, 3 skipped")
    with pytest.raises(ValueError, match="give one"):
        run_batch(src, out, one, skip_existing=True, overwrite=True)


def test_a_full_disk_stops_the_batch(tmp_path):
    src, out = _inputs(tmp_path / "in"), tmp_path / "out"
    one, calls = _writer(fail=("b.png",), exc=OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(BatchError, match="No space left") as err:
        run_batch(src, out, one)
    assert calls == ["a.png", "b.png"]
    assert [why for _, why in err.value.report.failed][1:] == ["not tried: the output cannot be written"] * 2


def test_a_single_file_fails_with_its_own_error(tmp_path):
    src = _inputs(tmp_path / "in", ("a.png",)) / "a.png"
    with pytest.raises(ValueError, match="not an image"):
        run_batch(src, tmp_path / "a_mask.png", _writer(fail=("a.png",))[0])


def test_batch_locks_its_output_folder_and_removes_leftovers(tmp_path):
    src, out = _inputs(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    (out / ".a_mask.png.abcd1234.tmp").write_bytes(b"half")
    (out / ".medkd-write-abcd1234").mkdir()
    (out / "notes.tmp").write_text("mine", encoding="utf-8")
    with FolderLock(out, "output folder"):
        with pytest.raises(FolderLockedError, match=f"output folder {out} is in use"):
            run_batch(src, out, _writer()[0])
    run_batch(src, out, _writer()[0])
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "b_mask.png", "c_mask.png", "d_mask.png",
                                                     "notes.tmp"]


@pytest.fixture(scope="module")
def model_run(tiny_vessels, tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch_model")
    cfg = RunConfig()
    cfg.data.root, cfg.data.patch_size, cfg.model.name = str(tiny_vessels), 32, "unet_tiny"
    cfg.train.iterations, cfg.train.batch_size, cfg.train.val_every = 1, 2, 1
    run_training(cfg, folder / "run")
    return folder / "run", export_onnx(folder / "run", folder / "m.onnx", exporter="torchscript").path


@pytest.mark.parametrize("cmd", ["infer", "predict"])
def test_cli_batch_with_a_broken_file(model_run, tiny_vessels, tmp_path, capsys, cmd):
    src = tmp_path / "in"
    shutil.copytree(tiny_vessels / "test" / "images", src)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "masks"
    model = str(model_run[1] if cmd == "infer" else model_run[0])
    args = [cmd, "--model", model, "--input", str(src), "--output", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "1 of 3 file(s) failed" in err and str(src / "broken.png") in err
    assert sorted(p.name for p in out.iterdir()) == ["c50_mask.png", "c51_mask.png"]
    (src / "broken.png").unlink()
    (out / "c51_mask.png").unlink()
    kept = (out / "c50_mask.png").stat().st_mtime_ns
    assert main(args) == 2 and "--skip-existing" in capsys.readouterr().err
    assert main(args + ["--skip-existing"]) == 0
    assert "1 written, 1 skipped" in capsys.readouterr().out
    assert (out / "c51_mask.png").is_file() and (out / "c50_mask.png").stat().st_mtime_ns == kept
