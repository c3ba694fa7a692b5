"""Shared fixtures: tiny data sets made on the fly, paths to the real data, fast torch."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "napari_medkd" / "sample_data"

os.environ.setdefault("OMP_NUM_THREADS", "2")


def needs_shared(name: str = ""):
    path = SHARED_DATA / name
    return pytest.mark.skipif(not path.exists(), reason=f"real data {path} is not present on this machine")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass


@pytest.fixture
def xdg_dirs(tmp_path_factory, monkeypatch):
    """Private XDG folders for napari/Qt settings and caches (never the user's)."""
    base = tmp_path_factory.getbasetemp() / "xdg"
    for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR"):
        d = base / var.lower()
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        monkeypatch.setenv(var, str(d))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One thread: on 2 shared cores, spinning OpenMP threads make tiny models 10-50x slower."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def write_png(path: Path, arr: np.ndarray) -> None:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=arr.ndim == 3), str(path))


@pytest.fixture(scope="session")
def tiny_vessels(tmp_path_factory) -> Path:
    """Paired-folder 2D set: 4 train + 2 test fundus phantoms at 64x64 with FOV masks."""
    from napari_medkd.data.phantoms import vessel_phantom

    root = tmp_path_factory.mktemp("vessels")
    for split, seeds in (("train", range(4)), ("test", range(50, 52))):
        for s in seeds:
            img, ves, fov = vessel_phantom(64, s)
            write_png(root / split / "images" / f"c{s:02d}.png", img)
            write_png(root / split / "masks" / f"c{s:02d}.png", (ves * 255).astype(np.uint8))
            write_png(root / split / "fov" / f"c{s:02d}.png", (fov * 255).astype(np.uint8))
    return root


def make_blob_volume(seed: int, shape=(12, 32, 32)):
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    c = np.array(shape) / 2 + rng.normal(0, 1.5, 3)
    r = np.sqrt(((z - c[0]) / 4) ** 2 + ((y - c[1]) / 8) ** 2 + ((x - c[2]) / 8) ** 2)
    lab = np.zeros(shape, np.uint8)
    lab[r < 1.0] = 1
    lab[(r < 1.0) & (x > c[2])] = 2
    img = (100 + 80 * (lab > 0) + 30 * (lab == 2) + rng.normal(0, 10, shape)).astype(np.float32)
    return img, lab


@pytest.fixture(scope="session")
def tiny_msd(tmp_path_factory) -> Path:
    """Decathlon-layout 3D set: 4 training + 2 test volumes (12x32x32), 3 classes, 1x1x2 mm."""
    import SimpleITK as sitk

    root = tmp_path_factory.mktemp("msd")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    training, test = [], []
    for i in range(6):
        img, lab = make_blob_volume(i)
        for arr, sub in ((img, "imagesTr"), (lab, "labelsTr")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing((1.0, 1.0, 2.0))
            im.SetOrigin((10.0, -5.0, 3.0))
            sitk.WriteImage(im, str(root / sub / f"blob_{i:03d}.nii.gz"))
        entry = {"image": f"./imagesTr/blob_{i:03d}.nii.gz", "label": f"./labelsTr/blob_{i:03d}.nii.gz"}
        (training if i < 4 else test).append(entry)
    (root / "dataset.json").write_text(json.dumps({
        "name": "Blobs", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "front", "2": "back"},
        "numTraining": 4, "numTest": 2, "training": training, "test": test}), encoding="utf-8")
    return root
