"""The ready-made hippocampus models: shipped intact with their model card, loadable as a run and as a teacher,
and fetched into the cache (file:// URL, checksum) where not shipped; a missing network fails fast with a
message that says what to do."""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from napari_medkd.io import ready_made as rm


def test_catalogue_lists_teacher_and_student_with_licence_and_test_metrics():
    cat = rm.catalogue()
    assert set(rm.names("teacher")) == {"hippocampus_teacher"} and set(rm.names("student")) == {"hippocampus_student"}
    for entry in cat.values():
        assert entry["licence"] == "CC BY-SA 4.0" and "Simpson" in entry["citation"] and "Antonelli" in entry["citation"]
        m = entry["test_metrics"]
        assert m["test_cases"] == 52 and set(m["dice"]) == {"1", "2"} and all(0.5 < v < 1 for v in m["dice"].values())
    total = sum(rm.model_path(n, k).stat().st_size for n, k in
                (("hippocampus_teacher", "pt"), ("hippocampus_student", "pt"), ("hippocampus_student", "onnx")))
    assert total <= 5 * 2 ** 20  # the brief's limit for shipping them in the package


def test_ready_made_teacher_loads_as_run_and_teacher_and_segments_the_sample():
    import torch

    from napari_medkd._sample_data import HIPPOCAMPUS_CASE, sample_root
    from napari_medkd.inference.predict_files import predict_image
    from napari_medkd.io.image_io import read_image
    from napari_medkd.teachers import open_teacher
    from napari_medkd.train.run_model import load_run_model

    path = rm.model_path("hippocampus_teacher")
    state = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state["model"].values() if v.is_floating_point())  # fp16 storage
    lm = load_run_model(path)
    assert next(lm.model.parameters()).dtype == torch.float32
    assert lm.card.class_names == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert lm.card.extra["licence"] == "CC BY-SA 4.0" and lm.card.extra["test_metrics"]["test_cases"] == 52
    t = open_teacher(path)
    assert t.kind == "run" and t.licence == "CC BY-SA 4.0"
    root = sample_root() / "hippocampus"
    pred = predict_image(lm, read_image(root / "imagesTr" / HIPPOCAMPUS_CASE))
    truth = np.asarray(read_image(root / "labelsTr" / HIPPOCAMPUS_CASE).array)
    dice = [2 * ((pred == c) & (truth == c)).sum() / ((pred == c).sum() + (truth == c).sum()) for c in (1, 2)]
    assert min(dice) > 0.6, dice  # a working model (this case is among its training volumes)


def _catalogue_without_files(tmp_path, name="hippocampus_student"):
    """A models.json naming ``name`` whose file is not beside it (a package built without weights)."""
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "models.json").write_text(json.dumps({name: rm.catalogue()[name]}))
    return folder


def test_fetch_through_a_file_url_checks_the_checksum_and_reuses_the_cache(tmp_path):
    src = rm.model_path("hippocampus_student", "onnx")
    served = tmp_path / "server" / src.name
    served.parent.mkdir()
    shutil.copy(src, served)
    folder, cache = _catalogue_without_files(tmp_path), tmp_path / "cache"
    got = rm.model_path("hippocampus_student", "onnx", folder=folder, cache=cache, url=served.as_uri())
    assert got == cache / src.name and got.read_bytes() == src.read_bytes()
    served.unlink()  # a second call uses the cached copy, no download
    assert rm.model_path("hippocampus_student", "onnx", folder=folder, cache=cache, url=served.as_uri()) == got
    from napari_medkd.inference.ort_infer import OrtSegmenter

    assert OrtSegmenter(got).card.class_names[2] == "Posterior"


def test_a_changed_download_is_refused_and_not_kept(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not the model")
    folder, cache = _catalogue_without_files(tmp_path), tmp_path / "cache"
    with pytest.raises(rm.ReadyMadeError, match="SHA-256"):
        rm.model_path("hippocampus_student", "onnx", folder=folder, cache=cache, url=bad.as_uri())
    assert not any(cache.rglob("*.onnx")) and not any(cache.rglob("*.part"))


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hippocampus_student.onnx",    # nothing listens
                                 "http://10.255.255.1/hippocampus_student.onnx"])  # unroutable: would hang
def test_no_network_gives_a_clear_message_quickly(tmp_path, url):
    folder = _catalogue_without_files(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(rm.ReadyMadeError) as exc:
        rm.model_path("hippocampus_student", "onnx", folder=folder, cache=tmp_path / "c", url=url, timeout=2)
    assert time.perf_counter() - t0 < 10
    msg = str(exc.value)
    assert url in msg and "network" in msg and str(tmp_path / "c") in msg  # what failed, why, where to put it


def test_not_shipped_and_no_address_says_so(tmp_path):
    with pytest.raises(rm.ReadyMadeError, match="not in this installation"):
        rm.model_path("hippocampus_student", "onnx", folder=_catalogue_without_files(tmp_path))
    with pytest.raises(rm.ReadyMadeError, match="no ready-made model 'liver'"):
        rm.model_path("liver")
