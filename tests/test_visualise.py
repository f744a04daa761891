"""core/visualise.py: arrows, votes, feature tables and plane helpers behind the Segment widget."""

from __future__ import annotations

import numpy as np
import pytest

from napari_semiconv.core import visualise as vis


def _field(height: int = 12, width: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 3, size=(2, height, width)).astype(np.float32)


def test_vectors_point_from_u_to_u_plus_phi():
    disp = _field()
    fg = np.zeros((12, 10), bool)
    fg[2:9, 1:7] = True
    vec = vis.displacement_vectors(disp, fg, stride=1)
    assert vec.shape == (fg.sum(), 2, 2) and vec.dtype == np.float32
    rows, cols = vec[:, 0, 0].astype(int), vec[:, 0, 1].astype(int)
    assert fg[rows, cols].all()
    # the tip start + projection is the vote u + Φ_u
    tips = vec[:, 0] + vec[:, 1]
    np.testing.assert_allclose(tips[:, 0], rows + disp[0, rows, cols])
    np.testing.assert_allclose(tips[:, 1], cols + disp[1, rows, cols])


@pytest.mark.parametrize("stride", [1, 2, 3, 5])
def test_stride_subsamples_to_the_grid(stride):
    disp = _field(20, 17)
    fg = np.ones((20, 17), bool)
    fg[:, 8:] = False
    vec = vis.displacement_vectors(disp, fg, stride=stride)
    n_rows = len(range(0, 20, stride))
    n_cols = len(range(0, 8, stride))
    assert len(vec) == n_rows * n_cols
    assert (vec[:, 0, 0] % stride == 0).all() and (vec[:, 0, 1] % stride == 0).all()


def test_bad_stride_and_nan_field_are_refused():
    disp = _field()
    fg = np.ones((12, 10), bool)
    with pytest.raises(ValueError, match="stride"):
        vis.displacement_vectors(disp, fg, stride=0)
    disp[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="1 non-finite"):
        vis.vote_image(disp, fg)
    with pytest.raises(ValueError, match="shape"):
        vis.vote_image(disp[:, :5], fg)


def test_votes_sum_to_foreground_pixels_and_peak_at_the_centre():
    height, width = 30, 40
    rows, cols = np.mgrid[:height, :width].astype(np.float32)
    # an ideal field: every pixel of the blob points at (15, 20) (eq. 4)
    disp = np.stack([15 - rows, 20 - cols])
    fg = np.zeros((height, width), bool)
    fg[10:20, 12:30] = True
    votes = vis.vote_image(disp, fg)
    assert votes.sum() == fg.sum()
    assert votes[15, 20] == fg.sum()
    # votes leaving the image are clipped onto its border, never lost
    far = np.full((2, height, width), 1000.0, np.float32)
    assert vis.vote_image(far, fg)[-1, -1] == fg.sum()
    blurred = vis.vote_image(disp, fg, sigma=1.5)
    assert blurred.argmax() == 15 * width + 20
    np.testing.assert_allclose(blurred.sum(), fg.sum(), rtol=1e-4)


def test_channel_axis_rule():
    assert vis.channel_axis_candidate((64, 80)) is None
    assert vis.channel_axis_candidate((64, 80, 3), rgb=True) is None
    assert vis.channel_axis_candidate((64, 80, 2)) == 2
    assert vis.channel_axis_candidate((3, 64, 80)) == 0
    assert vis.channel_axis_candidate((7, 64, 80)) is None
    data = np.arange(2 * 5 * 6).reshape(2, 5, 6)
    np.testing.assert_array_equal(vis.select_channel(data, 0, 1), data[1])
    with pytest.raises(ValueError, match="out of range"):
        vis.select_channel(data, 0, 2)


def test_leading_shape_and_planes():
    assert vis.leading_shape((4, 3, 16, 20)) == (4, 3)
    assert vis.leading_shape((5, 16, 20, 3), rgb=True) == (5,)
    with pytest.raises(ValueError, match="at least 2 axes"):
        vis.leading_shape((16,))
    with pytest.raises(ValueError, match="3 or 4"):
        vis.leading_shape((16, 20, 5), rgb=True)
    data = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    planes = list(vis.iter_planes(data))
    assert [i for i, _ in planes] == [(a, b) for a in range(2) for b in range(3)]
    np.testing.assert_array_equal(planes[4][1], data[1, 1])


def test_build_views_stacks_planes_with_unique_ids():
    from napari_semiconv.core.inference import Instances

    height, width = 24, 32
    masks = np.zeros((2, height, width), bool)
    masks[0, 4:8, 2:28] = True  # a horizontal worm
    masks[1, 2:22, 14:17] = True  # a vertical one crossing it
    rows, cols = np.mgrid[:height, :width].astype(np.float32)
    disp = np.stack([12 - rows, 16 - cols]).astype(np.float32)
    plane0 = Instances(masks=masks, scores=np.array([0.9, 0.6], np.float32), displacement=disp)
    plane1 = Instances(
        masks=masks[:1], scores=np.array([0.8], np.float32), displacement=np.zeros_like(disp)
    )
    views = vis.build_views(
        [((0,), plane0), ((1,), plane1)], leading=(2,), stride=2, vote_sigma=0.0
    )
    assert views.labels.shape == (2, height, width)
    assert views.votes.shape == (2, height, width)
    # ids are unique over the stack; the crossing pixels belong to the higher-scored worm
    assert set(np.unique(views.labels[0])) == {0, 1, 2}
    assert set(np.unique(views.labels[1])) == {0, 3}
    assert views.labels[0, 5, 15] == 1
    np.testing.assert_array_equal(views.features["index"], [1, 2, 3])
    np.testing.assert_array_equal(views.features["plane_0"], [0, 0, 1])
    np.testing.assert_allclose(views.features["score"], [0.9, 0.6, 0.8], rtol=1e-6)
    assert views.features["area"][0] == masks[0].sum()
    assert views.vectors.shape[1:] == (2, 3)
    # arrows of plane 1 start on plane 1 and never move along the stack axis
    on_plane1 = views.vectors[:, 0, 0] == 1
    assert on_plane1.sum() == len(vis.displacement_vectors(disp, masks[0], stride=2))
    assert (views.vectors[:, 1, 0] == 0).all()
    np.testing.assert_array_equal(
        views.votes.sum(axis=(1, 2)), [masks.any(0).sum(), masks[0].sum()]
    )
