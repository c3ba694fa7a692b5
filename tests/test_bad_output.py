"""Nothing silently wrong (issue 15): a write that fails (full disk, file-size limit, read-only folder,
a parent that is a file, /proc) is an error naming the user's file and the cause, never a corrupt file
with exit 0 or a traceback; training that cannot save stops with its last good checkpoint; hostile or
odd inputs (a PNG claiming 60000 x 60000 pixels, FIFOs, /dev/zero, binary configs, malicious or ONNX
checkpoints, folders without images) get one clear line; a 1 x 5000 strip runs in one go."""
import errno
import os
import struct
import subprocess
import sys
import textwrap
import time
import types
import zlib
from pathlib import Path

import numpy as np
import pytest

from napari_medkd.cli import main
from napari_medkd.io import atomic, image_io
from napari_medkd.io.image_io import read_image, write_mask

from conftest import write_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _budget(n=2):
    return ["--iterations", str(n), "--batch-size", "2", "--patch-size", "32", "--val-every", str(n)]


@pytest.fixture(scope="module")
def models(tiny_vessels, tmp_path_factory):
    """A tiny trained run and its ONNX export."""
    root = tmp_path_factory.mktemp("bad_output")
    run = root / "run"
    assert main(["train", "--data", str(tiny_vessels), "--model", "unet_tiny", "--out", str(run)] + _budget()) == 0
    onnx_path = root / "m.onnx"
    assert main(["export", "--model", str(run), "--out", str(onnx_path), "--exporter", "torchscript"]) == 0
    return {"predict": str(run), "infer": str(onnx_path)}


def _segment(cmd, models, src, out, *extra):
    return main([cmd, "--model", models[cmd], "--input", str(src), "--output", str(out), *extra])


def _one_clean_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and ".medkd-write-" not in err and ".tmp" not in err, err
    return err


def _bomb_png(path: Path, side: int = 60000) -> Path:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (side + 1) * 2)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


# -- 1. a full disk: verified writes --------------------------------------------------------------------
def _short_writes(monkeypatch):
    """SimpleITK on a full disk: prints NWAD, raises nothing, leaves a truncated file."""
    import SimpleITK as sitk

    real = sitk.WriteImage

    def short_write(img, path, *args, **kwargs):
        real(img, path, *args, **kwargs)
        os.truncate(path, os.path.getsize(path) // 2)

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    monkeypatch.setattr(image_io, "write_error_of", lambda path: ENOSPC)


@pytest.mark.parametrize("ext", [".png", ".nii.gz", ".mha"])
def test_a_short_write_is_an_error_naming_the_file_and_the_cause(tmp_path, monkeypatch, ext):
    _short_writes(monkeypatch)
    target = tmp_path / f"mask{ext}"
    mask = (np.arange(4096).reshape(16, 16, 16) % 3).astype(np.uint8)
    with pytest.raises(OSError) as err:
        write_mask(mask[0] if ext == ".png" else mask, target)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
    assert "no space left on device" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither the mask nor a temporary file


@pytest.mark.parametrize("cmd", ["predict", "infer"])
def test_predict_and_infer_on_a_full_disk_exit_non_zero_without_a_mask(models, tiny_vessels, tmp_path, monkeypatch,
                                                                        capsys, cmd):
    _short_writes(monkeypatch)
    out = tmp_path / "c50_mask.png"
    assert _segment(cmd, models, tiny_vessels / "test" / "images" / "c50.png", out) != 0
    err = _one_clean_line(capsys)
    assert str(out) in err and "no space left on device" in err
    assert list(tmp_path.iterdir()) == []


def _run_limited(code: str, limit: int) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python with a file-size limit (``ulimit -f``) of ``limit`` bytes."""
    def set_limit():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          preexec_fn=set_limit, timeout=120, cwd=Path(__file__).resolve().parents[1])


def test_a_real_file_size_limit_is_caught_although_simpleitk_raises_nothing(tmp_path):
    target = tmp_path / "big.nii.gz"
    res = _run_limited(f"""
        import numpy as np
        from napari_medkd.io.image_io import write_mask
        labels = np.random.default_rng(0).integers(0, 256, (64, 64, 64)).astype(np.uint8)
        try:
            write_mask(labels, {str(target)!r})
        except OSError as exc:
            print("ERRNO", exc.errno, exc)
        """, limit=50_000)
    assert f"ERRNO {errno.EFBIG}" in res.stdout and str(target) in res.stdout and "file too large" in res.stdout, res
    assert list(tmp_path.iterdir()) == []


# -- 5. no tracebacks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["predict", "infer"])
def test_a_png_claiming_60000_squared_pixels_is_refused_in_one_line(models, tmp_path, capsys, cmd):
    bomb = _bomb_png(tmp_path / "bomb.png")
    t0 = time.perf_counter()
    assert _segment(cmd, models, bomb, tmp_path / "out" / "m.png") == 2
    assert time.perf_counter() - t0 < 10
    err = _one_clean_line(capsys)
    assert "bomb.png" in err and "claims more pixels" in err


def _read_only(monkeypatch):
    """Every temporary file or folder the writers make fails as on a read-only file system."""
    def refuse(*args, dir=None, prefix="", suffix="", **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(str(dir), prefix + "abcd1234" + suffix))
    monkeypatch.setattr(atomic, "tempfile", types.SimpleNamespace(mkstemp=refuse, mkdtemp=refuse))


@pytest.mark.parametrize("cmd", ["predict", "infer", "export"])
def test_an_output_in_a_read_only_folder_is_one_line(models, tiny_vessels, tmp_path, monkeypatch, capsys, cmd):
    _read_only(monkeypatch)
    if cmd == "export":
        out = tmp_path / "m.onnx"
        code = main(["export", "--model", models["predict"], "--out", str(out), "--exporter", "torchscript"])
    else:
        out = tmp_path / "m.png"
        code = _segment(cmd, models, tiny_vessels / "test" / "images" / "c50.png", out)
    assert code == 2
    err = _one_clean_line(capsys)
    assert str(out) in err and "read-only file system" in err and len(err.splitlines()) == 1


def test_a_checkpoint_over_a_file_size_limit_keeps_the_previous_one(tmp_path):
    path = tmp_path / "last.pt"
    res = _run_limited(f"""
        import torch
        from napari_medkd.train.checkpoint import load_checkpoint, save_checkpoint
        save_checkpoint({{"model": {{"w": torch.zeros(10)}}, "iter": 1}}, {str(path)!r})
        try:
            save_checkpoint({{"model": {{"w": torch.zeros(100_000)}}, "iter": 2}}, {str(path)!r})
        except OSError as exc:
            print("ERRNO", exc.errno, exc)
        print("ITER", load_checkpoint({str(path)!r})["iter"])
        """, limit=100_000)
    assert f"ERRNO {errno.EFBIG}" in res.stdout and str(path) in res.stdout and "file too large" in res.stdout, res
    assert "ITER 1" in res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_training_that_cannot_save_stops_cleanly_with_its_last_good_checkpoint(tiny_vessels, tmp_path, monkeypatch,
                                                                              capsys):
    from napari_medkd.train.checkpoint import load_checkpoint

    real, saved = atomic._write_fully, []

    def full_after_first_validation(fh, data):
        if ".pt." in os.path.basename(fh.name):
            saved.append(fh.name)
            if len(saved) > 2:  # last.pt and best.pt at iteration 2 fit; the disk is full at iteration 4
                fh.write(bytes(data)[:100])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fh, data)

    monkeypatch.setattr(atomic, "_write_fully", full_after_first_validation)
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_vessels), "--model", "unet_tiny", "--out", str(run), "--iterations", "4",
            "--batch-size", "2", "--patch-size", "32", "--val-every", "2"]
    assert main(args) == 2
    err = _one_clean_line(capsys)
    assert str(run / "last.pt") in err and "no space left on device" in err
    assert load_checkpoint(run / "last.pt")["iter"] == 2
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


# -- 6. numeric options are range-checked when parsed -----------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "d", "--iterations", "-5"], "argument --iterations: must be a positive whole number, got -5"),
    (["train", "--data", "d", "--epochs", "0"], "argument --epochs: must be a positive whole number"),
    (["train", "--data", "d", "--minutes", "nan"], "argument --minutes: must be a positive number"),
    (["train", "--data", "d", "--lr", "-0.001"], "argument --lr: must be a positive number"),
    (["train", "--data", "d", "--batch-size", "2.5"], "argument --batch-size: expected a whole number, got '2.5'"),
    (["train", "--data", "d", "--seed", "-1"], "argument --seed: must be a non-negative whole number"),
    (["distill", "--val-every", "0"], "argument --val-every: must be a positive whole number"),
    (["distill", "--patch-size", "-32"], "argument --patch-size: must be a positive whole number"),
    (["infer", "m.onnx", "--input", "i", "--output", "o", "--threads", "0"], "argument --threads"),
    (["export", "m", "--out", "o.onnx", "--opset", "3"], "argument --opset: must be a whole number from 7 to 30"),
    (["export", "m", "--out", "o.onnx", "--atol", "-1"], "argument --atol: must be a non-negative number"),
    (["pipeline", "--labelled", "-1"], "argument --labelled: must be a non-negative whole number"),
    (["pipeline", "--teacher-iterations", "0"], "argument --teacher-iterations"),
    (["models", "--size", "0"], "argument --size"),
    (["bench", "--suite", "drive", "--jobs", "0"], "argument --jobs"),
    (["evaluate", "--model", "m", "--data", "d", "--fsd-tile", "0"], "argument --fsd-tile"),
])
def test_numeric_options_are_range_checked_at_parse_time(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_a_config_file_is_range_checked_too(tmp_path, capsys):
    from napari_medkd.config import ConfigError, load_config

    cfg = tmp_path / "run.yaml"
    cfg.write_text("train: {iterations: -5}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"train.iterations must be a positive whole number, got -5"):
        load_config(cfg)
    cfg.write_text("train: {lr: 1e-3, iterations: 10}\n", encoding="utf-8")  # YAML reads 1e-3 as text
    assert load_config(cfg).train.lr == 0.001


# -- 8. clear messages ------------------------------------------------------------------------------------
def test_a_binary_config_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "weights.bin"
    cfg.write_bytes(b"\x80\x04\x95binary\x00\xff")
    assert main(["train", "--config", str(cfg), "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = _one_clean_line(capsys)
    assert str(cfg) in err and "not UTF-8 text" in err and "YAML" in err and "codec" not in err


@pytest.mark.parametrize("cmd", ["predict", "infer"])
def test_an_output_under_proc_names_the_users_path(models, tiny_vessels, capsys, cmd):
    if not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    out = Path("/proc/medkd_mask.png")
    assert _segment(cmd, models, tiny_vessels / "test" / "images" / "c50.png", out) == 2
    err = _one_clean_line(capsys)
    assert str(out) in err and "/proc does not accept new files" in err


def test_export_on_a_full_disk_fails_fast_naming_the_file(models, tmp_path, monkeypatch, capsys):
    from napari_medkd.export import onnx_export

    tried = []
    monkeypatch.setattr(onnx_export, "_export_dynamo", lambda *a: tried.append("dynamo"))
    monkeypatch.setattr(onnx_export, "_export_torchscript", lambda *a: tried.append("torchscript"))
    monkeypatch.setattr(onnx_export, "write_error_of", lambda path: ENOSPC)
    out = tmp_path / "m.onnx"
    t0 = time.perf_counter()
    assert main(["export", "--model", models["predict"], "--out", str(out)]) == 2
    assert time.perf_counter() - t0 < 5 and tried == []  # refused before any exporter ran
    err = _one_clean_line(capsys)
    assert str(out) in err and "no space left on device" in err
    assert list(tmp_path.iterdir()) == []


def test_export_stops_at_the_first_exporter_that_meets_a_full_disk(models, tmp_path, monkeypatch):
    from napari_medkd.export import onnx_export

    tried = []

    def dynamo_on_a_full_disk(*args):
        tried.append("dynamo")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            raise RuntimeError("serialisation failed") from exc

    monkeypatch.setattr(onnx_export, "_export_dynamo", dynamo_on_a_full_disk)
    monkeypatch.setattr(onnx_export, "_export_torchscript", lambda *a: tried.append("torchscript"))
    out = tmp_path / "m.onnx"
    with pytest.raises(OSError, match="no space left on device") as err:
        onnx_export.export_onnx(models["predict"], out, exporter="auto")
    assert tried == ["dynamo"] and err.value.filename == str(out)


@pytest.mark.parametrize("cmd", ["predict", "infer"])
def test_an_output_whose_parent_is_a_file(models, tiny_vessels, tmp_path, capsys, cmd):
    blocker = tmp_path / "taken.png"
    blocker.write_bytes(b"x")
    out = blocker / "mask.png"
    assert _segment(cmd, models, tiny_vessels / "test" / "images" / "c50.png", out) == 2
    err = _one_clean_line(capsys)
    assert str(out) in err and f"{blocker} is a file, not a folder" in err and "Errno" not in err


def test_fifos_and_devices_are_not_called_missing(models, tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")
    for src in (fifo, zero):
        assert _segment("predict", models, src, tmp_path / "o.png") == 2
        err = _one_clean_line(capsys)
        assert str(src) in err and "not a regular file" in err and "does not exist" not in err
    assert "a FIFO" in str(pytest.raises(ValueError, read_image, fifo).value)
    assert "character device (a link to /dev/zero)" in str(pytest.raises(ValueError, read_image, zero).value)
    assert main(["predict", "--model", str(fifo), "--input", str(zero), "--output", str(tmp_path / "o.png")]) == 2
    assert "is not a regular file: it is a FIFO" in _one_clean_line(capsys)


def test_a_folder_without_images_says_so(models, tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here", encoding="utf-8")
    assert _segment("predict", models, folder, tmp_path / "out") == 2
    err = _one_clean_line(capsys)
    assert f"no images found in {folder}" in err and ".nii.gz" in err and "DICOM series found" not in err


def test_a_malicious_checkpoint_is_refused_without_advice_to_load_it_unsafely(tmp_path, capsys):
    import torch

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, evil)
    assert main(["predict", "--model", str(evil), "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    err = _one_clean_line(capsys)
    assert str(evil) in err and "not loaded" in err and "weights_only" not in err and "False" not in err
    assert not marker.exists()


def test_an_onnx_file_given_to_predict_points_to_infer(models, tiny_vessels, tmp_path, capsys):
    assert _segment("predict", {"predict": models["infer"]}, tiny_vessels / "test" / "images", tmp_path / "o") == 2
    assert "is an ONNX model: use `medkd infer`" in _one_clean_line(capsys)


# -- 11. a long thin image ----------------------------------------------------------------------------------
def test_a_1x5000_strip_runs_in_one_call_and_infer_matches_predict(models, tmp_path, capsys):
    from napari_medkd.models.predict import GridPredictor

    calls = []
    gp = GridPredictor(lambda b: calls.append(b.shape) or np.repeat(b[:, :1], 2, 1), 2, 16)
    assert gp.logits(np.zeros((1, 1, 5000), np.float32)).shape == (2, 1, 5000)
    assert calls == [(1, 1, 16, 5008)]  # not windows of 16 x 1024, blended
    strip = tmp_path / "strip.png"
    write_png(strip, np.random.default_rng(0).integers(0, 255, (1, 5000), dtype=np.uint8))
    for cmd in ("predict", "infer"):
        assert _segment(cmd, models, strip, tmp_path / f"{cmd}.png") == 0
    a, b = (read_image(tmp_path / f"{c}.png").array for c in ("predict", "infer"))
    assert a.shape == (1, 5000) and (a == b).mean() > 0.999
