"""The Qt-free analysis behind the region-graph and alignment widgets, on tiny untrained models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _lm(seed: int, num_classes: int = 2, scale_last: float = 1.0):
    """A LoadedModel of an untrained ``unet_tiny`` (grey images, 2D), without a run folder."""
    from napari_medkd.card import ModelCard
    from napari_medkd.data.prepare import PreprocessConfig
    from napari_medkd.models.factory import build_model
    from napari_medkd.train.run_model import LoadedModel

    torch.manual_seed(seed)
    model = build_model("unet_tiny", in_channels=1, num_classes=num_classes).eval()
    card = ModelCard("unet_tiny", 1, num_classes, {k: f"c{k}" for k in range(num_classes)},
                     PreprocessConfig(modality="grey").to_dict(), model_dims=2)
    return LoadedModel(model, card, Path("none.pt"))


def _image(shape=(40, 48), seed=0):
    from napari_medkd.io.image import MedicalImage

    arr = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    arr[tuple(slice(s // 4, s // 2) for s in shape)] += 3.0
    n = len(shape)
    return MedicalImage(arr, (1.0,) * n, (0.0,) * n, tuple(np.eye(n).ravel()))


@pytest.fixture(scope="module")
def models():
    return {"t": _lm(0), "s": _lm(1), "t3": _lm(0, 3), "s3": _lm(1, 3)}


def test_top_edges_are_the_strongest_pairs_of_valid_nodes():
    from napari_medkd.analysis.graphs import top_edges

    a = np.array([[1.0, 0.2, -0.9, 0.5],
                  [0.2, 1.0, 0.1, 0.8],
                  [-0.9, 0.1, 1.0, np.nan],
                  [0.5, 0.8, np.nan, 1.0]])
    assert top_edges(a, 2, np.ones(4, bool)) == [(0, 2, -0.9), (1, 3, 0.8)]
    edges = top_edges(a, 10, np.array([True, True, False, True]))
    assert [(i, j) for i, j, _ in edges] == [(1, 3), (0, 3), (0, 1)]


def test_patch_graph_nodes_edges_and_affinities(models):
    from napari_medkd.analysis.graphs import GRAPH_TYPES, SIDES, region_graphs

    img = _image((36, 48))
    res = region_graphs(models["t"], models["s"], img, [0, 0], GRAPH_TYPES[0], "enc_high", max_nodes=64, top_k=12)
    n = len(res["positions"])
    assert 4 < n <= 64 and res["valid"].shape == (n,) and res["valid"].sum() > 4
    assert res["axis"] == -1 and res["coords"].shape == (n, 2)
    # nodes in the padding (36 rows padded centred to 48) are not valid; the valid ones lie on the image
    inside = np.all((res["positions"] >= -0.5) & (res["positions"] <= np.array(img.array.shape) - 0.5), axis=1)
    np.testing.assert_array_equal(res["valid"], inside)
    assert not inside.all()
    a = res["affinity"]
    for side in SIDES:
        assert a[side].shape == (n, n) and np.allclose(a[side], a[side].T, atol=1e-5)
        edges = res["edges"][side]
        assert 1 <= len(edges) <= 12
        assert all(0 <= i < j < n and res["valid"][i] and res["valid"][j] for i, j, _ in edges)
        np.testing.assert_allclose([v for _, _, v in edges], [a[side][i, j] for i, j, _ in edges], atol=1e-6)
        assert res["degree"][side].shape == (n,) and res["norm"][side].shape == (n,)
    assert np.allclose(np.diag(a["teacher"]), 1, atol=1e-4)
    np.testing.assert_allclose(a["difference"], a["student"] - a["teacher"], atol=1e-6)
    assert np.abs(a["difference"]).max() > 1e-3, "different students give different graphs"
    same = region_graphs(models["t"], models["t"], img, [0, 0], GRAPH_TYPES[0], "enc_high", max_nodes=64)
    np.testing.assert_allclose(same["affinity"]["difference"], 0, atol=1e-5)


def test_class_graph_has_one_node_per_class(models):
    from napari_medkd.analysis.graphs import GRAPH_TYPES, region_graphs

    res = region_graphs(models["t3"], models["s3"], _image(), [0, 0], GRAPH_TYPES[1], "dec_low")
    assert res["labels"] == ["c0", "c1", "c2"] and res["positions"].shape == (3, 2)
    assert res["valid"].any() and res["affinity"]["teacher"].shape == (3, 3)
    assert all(res["valid"][i] and res["valid"][j] for i, j, _ in res["edges"]["teacher"])


def test_graph_on_a_volume_lies_on_the_slice_in_view(models):
    from napari_medkd.analysis.graphs import GRAPH_TYPES, region_graphs

    vol = _image((6, 32, 32))
    a = region_graphs(models["t"], models["s"], vol, [4, 0, 0], GRAPH_TYPES[0], "bottleneck", max_nodes=16)
    b = region_graphs(models["t"], models["s"], vol, [1, 0, 0], GRAPH_TYPES[0], "bottleneck", max_nodes=16)
    assert a["axis"] == 0 and a["index"] == 4 and a["coords"].shape[1] == 3
    assert np.all(a["coords"][:, 0] == 4) and np.all(b["coords"][:, 0] == 1)
    assert not np.allclose(a["affinity"]["teacher"], b["affinity"]["teacher"]), "another slice, another graph"


def test_alignment_maps_are_local_correlations_on_the_image_grid(models):
    from napari_medkd.analysis.alignment import alignment_maps

    img = _image()
    res = alignment_maps(models["t"], models["s"], img, ["bottleneck", "enc_low"])
    assert not res["gkd"] and res["fsd"] is None and res["fsd_note"].startswith("n/a: not a GKD run")
    for tap, m in res["maps"].items():
        assert m.shape == img.array.shape and np.isfinite(m).all()
        assert m.min() >= -1 - 1e-5 and m.max() <= 1 + 1e-5 and m.std() > 0
    same = alignment_maps(models["t"], models["t"], img, ["enc_low"])["maps"]["enc_low"]
    assert same.mean() > res["maps"]["enc_low"].mean() + 0.05, "a model agrees with itself more than with another"


def test_alignment_on_one_slice_and_the_fsd_of_an_msan_pair(models):
    from napari_medkd.analysis.alignment import alignment_maps, tap_alignment
    from napari_medkd.analysis.features import model_input, input_batches, taps_on
    from napari_medkd.distill.terms.gkd_msan import MSANHeader

    vol = _image((5, 32, 32))
    one = alignment_maps(models["t"], models["s"], vol, ["enc_high"], position=[3, 0, 0])["maps"]["enc_high"]
    assert np.isfinite(one[3]).all() and np.isnan(np.delete(one, 3, axis=0)).all()
    _, x = next(input_batches(model_input(models["t"], vol), [0]))
    ch = taps_on(models["t"].model, x, ["bottleneck"])["bottleneck"].shape[1]
    torch.manual_seed(0)
    msan = (MSANHeader(ch, 16, 2, 8).eval(), MSANHeader(ch, 16, 2, 8).eval())
    ft = taps_on(models["t"].model, x, ["bottleneck"])["bottleneck"]
    cos = tap_alignment(ft, ft * 2.0 + 1.0, msan)
    assert cos.shape == (1, 1) + tuple(ft.shape[2:]) and (cos.abs() <= 1 + 1e-5).all()
    with torch.no_grad():
        res = alignment_maps(models["t"], models["s"], vol, ["bottleneck"], msan=msan)
    assert res["gkd"] and res["fsd"] is not None and res["fsd"] >= 0 and "5 slices" in res["fsd_note"]
    with torch.no_grad():
        alone = alignment_maps(models["t"], models["s"], vol, ["enc_low"], msan=msan)
    assert alone["fsd"] is None and "bottleneck" in alone["fsd_note"]
