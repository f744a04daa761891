"""Instance clean-up: foreground clipping for binary input, mask-overlap suppression."""

from __future__ import annotations

import numpy as np
import pytest

from napari_semiconv.core.inference import load_model, segment
from napari_semiconv.core.refine import (
    clip_to_foreground,
    fill_lone_worms,
    mask_boxes,
    postprocess_defaults,
    refine_instances,
    suppress_overlaps,
)
from napari_semiconv.core.synthetic.worms import synthetic_worms


def _bar(shape, rows, cols) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[rows[0] : rows[1], cols[0] : cols[1]] = True
    return m


def test_clip_to_foreground_removes_pixels_outside_only():
    fg = _bar((20, 30), (5, 15), (0, 30))
    masks = np.stack([_bar((20, 30), (0, 10), (2, 8)), _bar((20, 30), (16, 20), (0, 5))])
    out = clip_to_foreground(masks, fg)
    np.testing.assert_array_equal(out[0], _bar((20, 30), (5, 10), (2, 8)))
    assert not out[1].any()
    with pytest.raises(ValueError, match="foreground"):
        clip_to_foreground(masks, fg[:10])


def test_suppress_overlaps_drops_duplicates_and_keeps_crossing_worms():
    shape = (60, 60)
    horizontal = _bar(shape, (28, 32), (0, 60))
    vertical = _bar(shape, (0, 60), (28, 32))  # crosses the first: IoU 16/464
    duplicate = _bar(shape, (28, 32), (2, 60))  # the first worm found again, a bit shorter
    empty = np.zeros(shape, dtype=bool)
    masks = np.stack([duplicate, horizontal, empty, vertical])
    scores = np.array([0.6, 0.9, 0.95, 0.8])
    keep = suppress_overlaps(masks, scores, 0.5)
    # the better-scoring copy wins, the crossing worm stays, the empty mask goes; score order
    assert keep.tolist() == [1, 3]
    assert suppress_overlaps(masks, scores, 1.0).tolist() == [1, 3, 0]
    # at IoU 0.03 even the crossing pair counts as one worm
    assert suppress_overlaps(masks, scores, 0.03).tolist() == [1]
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="max_iou"):
            suppress_overlaps(masks, scores, bad)
    with pytest.raises(ValueError, match="scores"):
        suppress_overlaps(masks, scores[:2], 0.5)


def test_fill_lone_worms_fills_only_a_blob_with_one_worm_that_covers_enough_of_it():
    shape = (40, 60)
    lone = _bar(shape, (2, 6), (0, 40))  # a blob alone
    pair = _bar(shape, (20, 24), (0, 60)) | _bar(shape, (10, 40), (28, 32))  # a crossing pair
    foreground = lone | pair
    masks = np.stack(
        [
            _bar(shape, (2, 6), (4, 34)),  # 30 of the lone blob's 40 columns
            _bar(shape, (20, 24), (3, 57)),  # the horizontal worm of the pair
            _bar(shape, (10, 40), (28, 32)) & ~_bar(shape, (20, 24), (0, 60)),  # the other
        ]
    )
    out = fill_lone_worms(masks, foreground, 0.5)
    np.testing.assert_array_equal(out[0], lone)  # alone and covering 75 %: the whole blob
    np.testing.assert_array_equal(out[1:], masks[1:])  # two residents: left as they were
    assert out is not masks
    # covering 75 % is not enough at 0.8; above 1 nothing is ever filled
    np.testing.assert_array_equal(fill_lone_worms(masks, foreground, 0.8), masks)
    np.testing.assert_array_equal(fill_lone_worms(masks, foreground, 2.0), masks)
    # one worm detected in a blob of two touching worms, covering under half: not handed the blob
    half = np.stack([_bar(shape, (20, 24), (3, 40))])  # 148 of the 344 pixels
    np.testing.assert_array_equal(fill_lone_worms(half, pair, 0.5), half)
    with pytest.raises(ValueError, match="min_cover"):
        fill_lone_worms(masks, foreground, 0.0)
    with pytest.raises(ValueError, match="foreground"):
        fill_lone_worms(masks, foreground[:5], 0.5)
    assert fill_lone_worms(masks[:0], foreground, 0.5).shape == (0, *shape)


def test_refine_instances_removes_the_duplicate_before_filling():
    shape = (20, 50)
    foreground = _bar(shape, (8, 12), (0, 50))
    worm = _bar(shape, (8, 12), (5, 45))
    masks = np.stack([worm, worm & _bar(shape, (0, 20), (5, 40))])  # the worm twice
    out, scores = refine_instances(masks, np.array([0.9, 0.8]), foreground, 0.3)
    # the duplicate goes, so the worm is alone in its blob and gets all of it
    assert scores.tolist() == pytest.approx([0.9])
    np.testing.assert_array_equal(out[0], foreground)
    # without a foreground nothing is clipped or filled
    out, _ = refine_instances(masks, np.array([0.9, 0.8]), None, 0.3)
    np.testing.assert_array_equal(out[0], worm)


def test_mask_boxes_are_tight():
    masks = np.stack([_bar((10, 12), (2, 5), (3, 11)), np.zeros((10, 12), bool)])
    assert mask_boxes(masks).tolist() == [[2, 5, 3, 11], [0, 0, 0, 0]]


def test_segment_clips_binary_worms_to_the_input_and_removes_duplicates():
    model = load_model("worms-binary")
    image, _ = synthetic_worms(seed=3, render="binary")
    foreground = image > 0.5 * image.max()
    loose = segment(model, image, max_overlap=1.0, use_foreground=False)
    tight = segment(model, image)
    # without clipping the pasted 28×28 masks spill over the outline; with it they cannot
    assert (loose.masks & ~foreground).any()
    assert not (tight.masks & ~foreground).any()
    # the kept worms' masks overlap at most max_overlap pairwise
    flat = tight.masks.reshape(len(tight), -1).astype(np.int64)
    inter = flat @ flat.T
    area = np.diag(inter)
    iou = inter / (area[:, None] + area[None] - inter)
    np.fill_diagonal(iou, 0)
    assert iou.max(initial=0) <= postprocess_defaults("binary")["max_overlap"] + 1e-9
    assert 0 < len(tight) <= len(loose)


def test_refine_in_place_gives_the_same_worms_without_a_second_buffer():
    shape = (30, 60)
    foreground = _bar(shape, (5, 10), (0, 60)) | _bar(shape, (20, 25), (0, 40))
    masks = np.stack(
        [
            _bar(shape, (4, 11), (2, 50)),  # spills over the blob: clipped, then filled
            _bar(shape, (4, 11), (5, 50)),  # its duplicate
            _bar(shape, (19, 26), (3, 35)),  # the second blob's worm
        ]
    )
    scores = np.array([0.9, 0.8, 0.7])
    copy_masks, copy_scores = refine_instances(masks.copy(), scores, foreground, 0.3)
    buffer = masks.copy()
    same_masks, same_scores = refine_instances(buffer, scores, foreground, 0.3, inplace=True)
    np.testing.assert_array_equal(same_masks, copy_masks)
    np.testing.assert_array_equal(same_scores, copy_scores)
    assert np.shares_memory(same_masks, buffer)
    assert same_scores.tolist() == pytest.approx([0.9, 0.7])
    np.testing.assert_array_equal(same_masks[0], _bar(shape, (5, 10), (0, 60)))


def test_no_worms_at_all_passes_through_every_step():
    # what an untrained model gives: validating it at the end of a short run failed here once
    empty = np.zeros((0, 20, 30), dtype=bool)
    foreground = _bar((20, 30), (5, 9), (2, 25))
    assert suppress_overlaps(empty, np.zeros(0), 0.3).tolist() == []
    assert mask_boxes(empty).shape == (0, 4)
    for fg in (foreground, None):
        for max_overlap in (0.3, 1.0):
            masks, scores = refine_instances(empty.copy(), np.zeros(0), fg, max_overlap)
            assert masks.shape == (0, 20, 30) and scores.shape == (0,)
    model = load_model("worms-binary")
    seg = segment(model, np.zeros((64, 80), np.float32))  # nothing to find
    assert len(seg) == 0 and seg.masks.shape == (0, 64, 80)
    assert seg.labels().shape == (64, 80) and not seg.labels().any()
