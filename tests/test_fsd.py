"""Fréchet Semantic Distance and the semantic-vector helper."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_medkd.distill.terms.gkd_msan import MSANHeader
from napari_medkd.metrics.fsd import frechet_semantic_distance
from napari_medkd.analysis.fsd_probe import semantic_vectors


def test_same_distribution_is_near_zero():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5000, 4)), rng.normal(size=(5000, 4))
    assert 0.0 <= frechet_semantic_distance(a, b) < 0.02
    assert frechet_semantic_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_mean_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5000, 16))
    b = rng.normal(size=(5000, 16)) + 1.0
    assert frechet_semantic_distance(a, b) == pytest.approx(16.0, rel=0.02)
    # exact for the same sample shifted: the covariance part cancels
    assert frechet_semantic_distance(a, a + 1.0) == pytest.approx(16.0, rel=1e-6)


def test_isotropic_covariances():
    rng = np.random.default_rng(2)
    d, s1, s2 = 8, 1.0, 3.0
    a, b = s1 * rng.normal(size=(20000, d)), s2 * rng.normal(size=(20000, d))
    assert frechet_semantic_distance(a, b) == pytest.approx(d * (s1 - s2) ** 2, rel=0.03)


def test_ill_conditioned_covariance_is_stable():
    rng = np.random.default_rng(3)
    low_rank = rng.normal(size=(300, 2)) @ rng.normal(size=(2, 32))  # rank 2 in 32-D
    value = frechet_semantic_distance(low_rank, low_rank + 0.5)
    assert np.isfinite(value) and value == pytest.approx(32 * 0.25, rel=1e-3)
    assert frechet_semantic_distance(np.ones((10, 3)), np.ones((10, 3))) == pytest.approx(0.0, abs=1e-9)


def test_bad_inputs():
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_semantic_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        frechet_semantic_distance(np.zeros(5), np.zeros((5, 1)))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_semantic_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_semantic_distance(np.full((5, 3), np.nan), np.zeros((5, 3)))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, 4, 1)

    def encode(self, x):
        return torch.relu(self.conv(x)), []


def test_semantic_vectors_batches_and_modes():
    torch.manual_seed(0)
    model, header = Encoder().train(), MSANHeader(6, dim=12, grid=4)
    images = np.random.default_rng(0).normal(size=(7, 1, 16, 16)).astype(np.float32)
    vec = semantic_vectors(model, header, images, batch_size=3)
    assert vec.shape == (7, 12) and vec.dtype == np.float64
    with torch.no_grad():
        ref = header.encode(model.encode(torch.as_tensor(images))[0]).numpy()
    np.testing.assert_allclose(vec, ref, rtol=1e-5, atol=1e-6)
    assert model.training and header.training  # modes restored
    batches = [torch.as_tensor(images[:4]), torch.as_tensor(images[4:])]
    np.testing.assert_allclose(semantic_vectors(model, header, batches), vec, rtol=1e-5, atol=1e-6)
    unit = semantic_vectors(model, header, images, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="no images"):
        semantic_vectors(model, header, [])
