"""The teacher's outputs on disk (teachers/cache.py): fp16 memory-mapped shards keyed by the scan's content and
the teacher; reused across students, rebuilt when the teacher file changes, resumable after a kill."""
import os
import shutil

import numpy as np
import pytest

from napari_medkd.data.datasets import Case
from napari_medkd.data.prepare import PreprocessConfig, prepare_case
from napari_medkd.models.predict import predict_logits
from napari_medkd.teachers import open_teacher
from napari_medkd.teachers.cache import TeacherCache, cached_logits
from napari_medkd.train.events import read_events
from napari_medkd.train.engine import run_training

from test_teachers import HIPPO, exports, hippo_run, tiny_hippo_cfg  # noqa: F401 - fixtures

VIEW = {"preprocess": "MR", "axis": 0}


@pytest.fixture
def cases(tmp_path):
    """Three prepared sample volumes, read from copies under new names (the key is the content, not the name)."""
    out = []
    for i, src in enumerate(sorted((HIPPO / "imagesTr").glob("*.nii.gz"))[:3]):
        dst = tmp_path / "scans" / f"scan_{i}.nii.gz"
        dst.parent.mkdir(exist_ok=True)
        shutil.copy(src, dst)
        out.append(prepare_case(Case(f"scan_{i}", dst, None, None, "train"), PreprocessConfig("MR")))
    return out


def counting(teacher):
    calls = []

    def compute(case):
        calls.append(case.id)
        return predict_logits(teacher.module, case.image, device="cpu")

    return compute, calls


def test_outputs_are_computed_once_and_reused_memory_mapped(exports, cases, tmp_path):  # noqa: F811
    t = open_teacher(exports / "model.onnx")
    compute, calls = counting(t)
    first, info = cached_logits(t, cases, tmp_path / "cache", view=VIEW, compute=compute)
    assert info["computed"] == 3 and info["reused"] == 0 and len(calls) == 3
    again, info2 = cached_logits(t, cases, tmp_path / "cache", view=VIEW, compute=compute)
    assert info2["computed"] == 0 and info2["reused"] == 3 and len(calls) == 3
    for a, b, c in zip(first, again, cases):
        assert isinstance(b, np.memmap) and b.dtype == np.float16 and b.shape[1:] == c.image.shape[1:]
        exact = predict_logits(t.module, c.image, device="cpu").astype(np.float16)
        assert np.array_equal(np.asarray(b), exact) and np.array_equal(np.asarray(a), exact)
    # another view of the same scans (other preprocessing) is another shard
    _, info3 = cached_logits(t, cases[:1], tmp_path / "cache", view={**VIEW, "preprocess": "CT"}, compute=compute)
    assert info3["computed"] == 1


def test_a_changed_teacher_file_rebuilds_the_cache_and_drops_the_old_one(exports, cases, tmp_path):  # noqa: F811
    import onnx

    path = tmp_path / "teacher.onnx"
    shutil.copy(exports / "model.onnx", path)
    t = open_teacher(path)
    compute, calls = counting(t)
    _, info = cached_logits(t, cases, tmp_path / "cache", view=VIEW, compute=compute)
    old = info["folder"]
    proto = onnx.load(str(path))  # the vendor ships new weights under the same name
    init = proto.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init) * 1.5
    init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
    onnx.save(proto, str(path))
    t2 = open_teacher(path)
    assert t2.fingerprint() != t.fingerprint()
    compute2, calls2 = counting(t2)
    fresh, info2 = cached_logits(t2, cases, tmp_path / "cache", view=VIEW, compute=compute2)
    assert info2["computed"] == 3 and info2["removed_versions"] == 1 and not os.path.exists(old)
    assert not np.array_equal(np.asarray(fresh[0]), predict_logits(t.module, cases[0].image, device="cpu")
                              .astype(np.float16))


def test_a_killed_build_resumes_with_the_shards_it_finished(exports, cases, tmp_path):  # noqa: F811
    t = open_teacher(exports / "model.onnx")
    compute, calls = counting(t)

    def dies_on_the_third(case):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while computing the third scan
        return compute(case)

    with pytest.raises(KeyboardInterrupt):
        cached_logits(t, cases, tmp_path / "cache", view=VIEW, compute=dies_on_the_third)
    folder = TeacherCache(tmp_path / "cache", t).dir
    assert len(list(folder.glob("*.npy"))) == 2
    (folder / ".deadbeef.999999.part").write_bytes(b"half a shard of a process that is gone")
    _, info = cached_logits(t, cases, tmp_path / "cache", view=VIEW, compute=compute)
    assert info["computed"] == 1 and info["reused"] == 2 and calls[-1] == cases[2].id
    assert not list(folder.glob(".*.part"))
    shard = sorted(folder.glob("*.npy"))[0]  # a damaged shard is recomputed, not trusted
    shard.write_bytes(shard.read_bytes()[:100])
    _, info = cached_logits(t, cases, tmp_path / "cache", view=VIEW, compute=compute)
    assert info["computed"] == 1


def test_two_students_share_the_cache_of_a_teacher_file(exports, tmp_path):  # noqa: F811
    scans = tmp_path / "scans"
    scans.mkdir()
    for src in sorted((HIPPO / "imagesTr").glob("*.nii.gz"))[:4]:
        shutil.copy(src, scans / src.name)
    done = []
    for student in ("unet_tiny", "enet"):
        cfg = tiny_hippo_cfg(scans, iterations=2)
        cfg.data.class_names = {0: "background", 1: "Anterior", 2: "Posterior"}
        cfg.data.modality = "MR"
        cfg.model.name = student
        cfg.distill.teacher, cfg.distill.method, cfg.distill.cache_teacher = str(exports / "model.onnx"), "logit_kd", True
        cfg.distill.teacher_cache_dir = str(tmp_path / "cache")
        assert run_training(cfg, tmp_path / student)["status"] == "finished"
        done += [e for e in read_events(tmp_path / student / "events.jsonl")
                 if e["event"] == "stage" and e.get("name") == "teacher_cache" and e["status"] == "done"]
    assert [(e["computed"], e["reused"]) for e in done] == [(3, 0), (0, 3)]  # 4 scans, 1 held back for validation


CHILD = """
import sys, time, numpy as np
from napari_medkd.data.datasets import Case
from napari_medkd.data.prepare import PreprocessConfig, prepare_case
from napari_medkd.teachers import open_teacher
from napari_medkd.teachers.cache import cached_logits
t = open_teacher(sys.argv[1])
cases = [prepare_case(Case(f"s{i}", p, None, None, "train"), PreprocessConfig("MR")) for i, p in enumerate(sys.argv[3:])]
done = []
def compute(case):
    done.append(case.id)
    if len(done) == 3:
        print("third", flush=True)
        time.sleep(60)  # SIGKILLed here
    return np.zeros((3,) + case.image.shape[1:], np.float32)
cached_logits(t, cases, sys.argv[2], view={"preprocess": "MR", "axis": 0}, compute=compute)
"""


def test_a_sigkilled_build_leaves_whole_shards_only(exports, tmp_path):  # noqa: F811
    import signal
    import subprocess
    import sys

    images = [str(p) for p in sorted((HIPPO / "imagesTr").glob("*.nii.gz"))[:4]]
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(exports / "model.onnx"), str(tmp_path / "cache")] + images,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert child.stdout.readline().strip() == "third"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    t = open_teacher(exports / "model.onnx")
    folder = TeacherCache(tmp_path / "cache", t).dir
    assert len(list(folder.glob("*.npy"))) == 2
    cases = [prepare_case(Case(f"s{i}", p, None, None, "train"), PreprocessConfig("MR")) for i, p in enumerate(images)]
    compute, calls = counting(t)
    arrays, info = cached_logits(t, cases, tmp_path / "cache", view=VIEW, compute=compute)
    assert (info["computed"], info["reused"]) == (2, 2) and calls == ["s2", "s3"]
    assert not np.asarray(arrays[0]).any() and np.asarray(arrays[3]).any()  # the child's shards kept, the rest new
