"""Test-time augmentation (core.tta): views and their inverses, fusion, and segment(views=...)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_worms import run_steps, tiny_model_config, toy_worms

from napari_semiconv.core.detections import Instances
from napari_semiconv.core.inference import segment, segment_steps
from napari_semiconv.core.model.builder import build_model
from napari_semiconv.core.tiling import SoftMask
from napari_semiconv.core.tta import (
    VIEW_SETS,
    ViewFusion,
    detect_views_steps,
    fuse_views,
    views_of,
)

ALL_VIEWS = VIEW_SETS[8]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model(tiny_model_config())
    net.config.input_mode = "binary"
    return net.eval()


@pytest.mark.parametrize("view", ALL_VIEWS, ids=str)
def test_every_view_is_undone_exactly(view):
    image = np.random.default_rng(0).random((5, 7))
    shown = view.apply(image)
    assert shown.shape == ((7, 5) if view.transpose else (5, 7))
    np.testing.assert_array_equal(view.undo(shown), image)
    np.testing.assert_array_equal(view.undo(np.stack([shown, 2 * shown]))[1], 2 * image)
    # a crop of the view lands on the same pixels of the image
    back = view.undo_crop(1, 2, shown[1:3, 2:5], image.shape)
    h, w = back.prob.shape
    np.testing.assert_array_equal(image[back.y0 : back.y0 + h, back.x0 : back.x0 + w], back.prob)


@pytest.mark.parametrize("view", ALL_VIEWS, ids=str)
def test_undone_displacement_still_points_to_the_centre(view):
    # every pixel of the view points to one centre; mapped back, every pixel of the image
    # must point to where that centre is in the image
    height, width = 6, 9
    marker = np.zeros((height, width))
    marker[4, 7] = 1
    shown = view.apply(marker)
    cy, cx = np.argwhere(shown == 1)[0]
    rows, cols = np.mgrid[0 : shown.shape[0], 0 : shown.shape[1]]
    phi_view = np.stack([cy - rows, cx - cols]).astype(np.float32)
    phi = view.undo_displacement(phi_view)
    rows, cols = np.mgrid[0:height, 0:width]
    np.testing.assert_array_equal(rows + phi[0], np.full((height, width), 4))
    np.testing.assert_array_equal(cols + phi[1], np.full((height, width), 7))


def test_view_counts_are_checked():
    assert [len(views_of(n)) for n in (1, 2, 4, 8)] == [1, 2, 4, 8]
    assert len(set(ALL_VIEWS)) == 8
    for bad in (0, 3, 16, True):
        with pytest.raises(ValueError, match="views must be one of"):
            views_of(bad)


def _found(shape, worms):
    """Instances and probabilities from [(score, y0, y1, x0, x1, prob 0-255)] boxes."""
    masks = np.zeros((len(worms), *shape), bool)
    soft = []
    for k, (_, y0, y1, x0, x1, p) in enumerate(worms):
        masks[k, y0:y1, x0:x1] = p > 0.5 * 255
        soft.append(SoftMask(y0, x0, np.full((y1 - y0, x1 - x0), p, np.uint8)))
    scores = np.array([w[0] for w in worms], np.float32)
    return Instances(masks, scores, np.zeros((2, *shape), np.float32)), soft


def test_fusion_votes_scores_and_averages_probabilities():
    shape = (20, 30)
    views = VIEW_SETS[2]  # identity and left-right flip
    # worm A at rows 2-6, cols 3-13 in both views (the flip shows it at cols 30-13..30-3);
    # worm B, rows 12-16, only in the identity view
    first = _found(shape, [(0.9, 2, 6, 3, 13, 255), (0.8, 12, 16, 5, 20, 255)])
    second = _found(shape, [(0.7, 2, 6, 17, 27, 255)])
    fused, soft = fuse_views([first, second], views, shape, 0.5, 0.5)
    assert len(fused) == 1, "B, found in one view of two, scores 0.4 < 0.5 and is dropped"
    assert fused.scores[0] == pytest.approx(0.8)
    expected = np.zeros(shape, bool)
    expected[2:6, 3:13] = True
    np.testing.assert_array_equal(fused.masks[0], expected)
    assert (soft[0].y0, soft[0].x0) == (2, 3) and soft[0].prob.min() == 255
    # with a lower score threshold B stays, at half its probability (one view of two)
    fused, soft = fuse_views([first, second], views, shape, 0.3, 0.4)
    assert len(fused) == 2 and fused.scores[1] == pytest.approx(0.4)
    assert soft[1].prob.max() == 128 and fused.masks[1].sum() == 4 * 15
    fused, _ = fuse_views([first, second], views, shape, 0.3, 0.6)
    assert len(fused) == 1, "B's averaged probability 0.5 is under a 0.6 mask threshold"
    fusion = ViewFusion(2, shape)
    fusion.add(0, views[0], *first)
    with pytest.raises(ValueError, match="1 of 2 views"):
        fusion.result(0.5, 0.5)


def test_fusion_never_merges_two_worms_of_one_view():
    shape = (20, 20)
    views = VIEW_SETS[2]
    # two nearly identical worms in the identity view (IoU 0.8), one worm in the flipped view
    first = _found(shape, [(0.9, 2, 10, 2, 12, 255), (0.85, 2, 10, 4, 14, 255)])
    second = _found(shape, [(0.9, 2, 10, 8, 18, 255)])
    fused, _ = fuse_views([first, second], views, shape, 0.0, 0.5)
    assert len(fused) == 2
    assert fused.scores.tolist() == pytest.approx([0.9, 0.425])


def test_fused_worms_are_equivariant_under_a_transpose(model):
    # the 8 views of the transposed image are the 8 views of the image, in another order: the
    # fused worms of one must be the transposed worms of the other (Φ's components swapped)
    image, _ = toy_worms((96, 80), n=4, seed=5)
    grey = (image > 0).astype(np.float32)

    def fused(picture):
        events, (found, _) = run_steps(detect_views_steps(model, picture, 8, 128, 0, 1, 0.0, 0.2))
        return events, found

    events, plain = fused(grey)
    _, turned = fused(np.ascontiguousarray(grey.T))
    assert len(plain) > 0 and len(plain) == len(turned)
    assert events[-1].done == events[-1].total == 8
    progress = [e for e in events if not e.warning]  # a warning keeps its own words
    assert "view 8/8" in progress[-1].message
    np.testing.assert_allclose(turned.scores, plain.scores, rtol=1e-6)
    np.testing.assert_array_equal(turned.masks, plain.masks.transpose(0, 2, 1))
    np.testing.assert_allclose(
        turned.displacement, plain.displacement.transpose(0, 2, 1)[::-1], atol=1e-4
    )


def test_segment_with_views_counts_every_view_and_can_be_cancelled(model):
    image, _ = toy_worms((200, 230), n=6, seed=2)
    events, inst = run_steps(
        segment_steps(model, image, 0.0, 0.1, tile_size=96, overlap=24, views=4)
    )
    assert events[-1].done == events[-1].total == 4 * 9
    assert len(inst) > 0 and inst.masks.shape[1:] == (200, 230)
    assert np.all(np.diff(inst.scores) <= 0)
    assert all(m.any() for m in inst.masks)
    steps = segment_steps(model, image, tile_size=96, overlap=24, views=4)
    for _ in range(12):  # into the second view
        next(steps)
    steps.close()
    assert model.training is False
    with pytest.raises(ValueError, match="views must be one of"):
        segment(model, image, views=3)
