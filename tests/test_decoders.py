"""Decoders of Ψ: k-means (known K) and the K-free seed/threshold and mean-shift decoders."""

import numpy as np
import pytest
import torch

from napari_semiconv.core.decoders import (
    kernel_threshold_labels,
    kmeans,
    kmeans_labels,
    mean_shift_labels,
)
from napari_semiconv.core.experiments import adjusted_rand_index
from napari_semiconv.core.operators import pixel_coordinates, semiconv
from napari_semiconv.core.synthetic.dots import dot_grid


def _blobs(seed=0, n=30):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 5.0]])
    truth = np.repeat(np.arange(3), n)
    return centres[truth] + rng.normal(0, 0.3, (3 * n, 3)), truth


def test_kmeans_hand_computed():
    pts = np.array([[0.0], [1.0], [10.0], [11.0]])
    res = kmeans(pts, 2, seed=0)
    assert sorted(res.centres[:, 0].tolist()) == [0.5, 10.5]
    assert res.inertia == pytest.approx(4 * 0.25)
    assert res.labels[0] == res.labels[1] != res.labels[2] == res.labels[3]


def test_kmeans_recovers_blobs_and_is_deterministic():
    pts, truth = _blobs()
    a = kmeans(pts, 3, seed=3, n_init=5)
    b = kmeans(torch.from_numpy(pts).float(), 3, seed=3, n_init=5)  # torch input too
    assert adjusted_rand_index(truth, a.labels) == 1.0
    assert np.array_equal(a.labels, kmeans(pts, 3, seed=3, n_init=5).labels)
    assert adjusted_rand_index(a.labels, b.labels) == 1.0
    assert set(a.labels.tolist()) == {0, 1, 2}


def test_kmeans_duplicate_points_and_k_equals_p():
    res = kmeans(np.zeros((5, 2)), 3, seed=0)
    assert res.labels.min() >= 0 and res.labels.max() < 3 and res.inertia == 0.0
    res = kmeans(np.arange(4.0)[:, None], 4, seed=0)
    assert sorted(res.labels.tolist()) == [0, 1, 2, 3]


def test_kmeans_bad_input():
    with pytest.raises(ValueError, match="only 2 points"):
        kmeans(np.zeros((2, 3)), 3)
    with pytest.raises(ValueError, match=r"\(P,D\)"):
        kmeans(np.zeros(5), 2)
    bad = np.zeros((4, 2))
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        kmeans(bad, 2)
    with pytest.raises(ValueError, match="k must be"):
        kmeans(np.zeros((4, 2)), 0)
    with pytest.raises(TypeError):
        kmeans([[0.0, 1.0]], 1)


def _perfect_dot_embedding(embed_dim=4):
    """Ψ = Φ + û where Φ moves every dot pixel exactly onto its dot centre (eq. 4)."""
    _, masks = dot_grid(3, 4, 10, 3.0)
    h, w = masks.shape[1:]
    u = pixel_coordinates(h, w, embed_dim, dtype=torch.float64)
    phi = torch.zeros(embed_dim, h, w, dtype=torch.float64)
    for m in masks:
        mt = torch.from_numpy(m)
        centre = u[:2, mt].mean(1)
        phi[:2, mt] = centre[:, None] - u[:2, mt]
    truth = (masks * np.arange(1, len(masks) + 1)[:, None, None]).sum(0)
    return semiconv(phi), masks.any(0), truth


def test_kmeans_labels_on_dot_embedding():
    psi, fg, truth = _perfect_dot_embedding()
    labels = kmeans_labels(psi, fg, 12, seed=0)
    assert labels.dtype == np.int32 and labels.shape == fg.shape
    assert (labels[~fg] == 0).all() and (labels[fg] > 0).all()
    assert adjusted_rand_index(truth[fg], labels[fg]) == 1.0


@pytest.mark.parametrize("decoder", [kernel_threshold_labels, mean_shift_labels])
def test_k_free_decoders_find_the_dots_without_k(decoder):
    psi, fg, truth = _perfect_dot_embedding()
    psi = psi + 0.2 * torch.randn(psi.shape, generator=torch.Generator().manual_seed(0))
    # dots lie 10 apart in Ψ, pixels scatter ~0.4 around their centre: σ = 2 separates them
    labels = decoder(psi, fg, sigma=2.0)
    assert (labels[~fg] == 0).all()
    assert labels.max() == 12  # the number of dots, found without being told
    assert adjusted_rand_index(truth[fg], labels[fg]) == 1.0


def test_kernel_threshold_semantics_and_min_size():
    # 1×6 image, D=1: pixels at 0, 0.1, 0.2 (dense group), 5, 5.1, and an outlier at 20
    psi = np.array([[[0.0, 0.1, 0.2, 5.0, 5.1, 20.0]]])
    fg = np.ones((1, 6), bool)
    # K_σ > 0.5 with σ=1  <=>  distance < ln 2 ≈ 0.69
    labels = kernel_threshold_labels(psi, fg, sigma=1.0, threshold=0.5)
    assert labels.tolist() == [[1, 1, 1, 2, 2, 3]]
    labels = kernel_threshold_labels(psi, fg, sigma=1.0, threshold=0.5, min_size=2)
    assert labels.tolist() == [[1, 1, 1, 2, 2, 0]]
    # a wide kernel merges the two groups but not the outlier
    assert kernel_threshold_labels(psi, fg, sigma=10.0).tolist() == [[1, 1, 1, 1, 1, 2]]


def test_mean_shift_min_size_and_background():
    psi = np.array([[[0.0, 0.1, 0.2, 5.0, 5.1, 20.0]]])
    fg = np.array([[True, True, True, True, True, False]])
    labels = mean_shift_labels(psi, fg, sigma=0.5, min_size=3)
    assert labels.tolist() == [[1, 1, 1, 0, 0, 0]]


def test_decoders_bad_input():
    psi = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="does not match"):
        kernel_threshold_labels(psi, np.ones((4, 5), bool), sigma=1.0)
    with pytest.raises(ValueError, match="sigma"):
        mean_shift_labels(psi, np.ones((4, 4), bool), sigma=0.0)
    with pytest.raises(ValueError, match="threshold"):
        kernel_threshold_labels(psi, np.ones((4, 4), bool), sigma=1.0, threshold=1.5)
    with pytest.raises(ValueError, match=r"\(D,H,W\)"):
        kmeans_labels(np.zeros((4, 4)), np.ones((4, 4), bool), 2)
    bad = psi.copy()
    bad[0, 1, 1] = np.inf
    with pytest.raises(ValueError, match="NaN/inf"):
        mean_shift_labels(bad, np.ones((4, 4), bool), sigma=1.0)
    # empty foreground: an all-background label image, no error
    assert kernel_threshold_labels(psi, np.zeros((4, 4), bool), sigma=1.0).max() == 0
