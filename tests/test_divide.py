"""Sharing out the pixels of blobs of touching worms (core.divide) and the probabilities that
tiling carries for it (core.tiling.SoftMask)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_semiconv.core.divide import divide_shared_blobs, soft_on_window
from napari_semiconv.core.inference import (
    detect,
    load_model,
    segment,
    worm_foreground,
)
from napari_semiconv.core.preprocess import normalise
from napari_semiconv.core.refine import postprocess_defaults, refine_instances
from napari_semiconv.core.synthetic.worms import synthetic_worms
from napari_semiconv.core.tiling import Candidate, SoftMask, merge_candidates_soft, tile_grid


def _bar(shape, rows, cols) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[rows[0] : rows[1], cols[0] : cols[1]] = True
    return m


def _soft(shape, rows, cols, value) -> SoftMask:
    """A probability ``value`` (0-1) on the box rows × cols."""
    prob = np.full((rows[1] - rows[0], cols[1] - cols[0]), round(value * 255), np.uint8)
    return SoftMask(rows[0], cols[0], prob)


# two worms lying side by side in one blob (rows 10-20 and 20-30 of columns 0-40), and a lone
# worm in a second blob (rows 40-45)
SHAPE = (50, 60)
FOREGROUND = _bar(SHAPE, (10, 30), (0, 40)) | _bar(SHAPE, (40, 45), (0, 60))


def test_contested_pixels_go_to_the_more_probable_claimant_and_the_rest_is_kept():
    upper = _bar(SHAPE, (10, 23), (0, 40))  # spills 3 rows onto the lower worm
    lower = _bar(SHAPE, (20, 30), (0, 40))
    lone = _bar(SHAPE, (40, 45), (0, 50)) | _bar(SHAPE, (0, 2), (0, 5))  # outside: untouched
    masks = np.stack([upper, lower, lone])
    soft = [
        _soft(SHAPE, (8, 24), (0, 40), 0.6),
        _soft(SHAPE, (18, 32), (0, 40), 0.9),  # surer of rows 20-23 than the upper worm
        None,
    ]
    out = divide_shared_blobs(masks, FOREGROUND, soft)
    np.testing.assert_array_equal(out[0], _bar(SHAPE, (10, 20), (0, 40)))
    np.testing.assert_array_equal(out[1], lower)
    np.testing.assert_array_equal(out[2], lone)  # a lone worm's blob is not shared
    assert not (out[0] & out[1]).any()
    np.testing.assert_array_equal(masks[0], upper)  # not in place: the input is kept


def test_pixels_both_worms_are_sure_of_stay_with_both():
    # a horizontal and a vertical worm crossing in a plus-shaped blob
    shape = (40, 40)
    horizontal, vertical = _bar(shape, (18, 22), (0, 40)), _bar(shape, (0, 40), (18, 22))
    foreground = horizontal | vertical
    masks = np.stack([horizontal | _bar(shape, (14, 18), (18, 22)), vertical])
    soft = [
        # the horizontal worm: 0.5 on the 4 rows above it that it claims, 0.9 on itself
        SoftMask(14, 0, np.repeat(np.array([128] * 4 + [230] * 4, np.uint8)[:, None], 40, 1)),
        _soft(shape, (0, 40), (18, 22), 0.9),
    ]
    out = divide_shared_blobs(masks, foreground, soft)
    np.testing.assert_array_equal(out[0], horizontal)  # the rows above went to the vertical worm
    np.testing.assert_array_equal(out[1], vertical)  # ... and the crossing stays with both
    soft[1] = _soft(shape, (0, 40), (18, 22), 0.5)  # unsure of the crossing: it goes to one
    out = divide_shared_blobs(masks, foreground, soft)
    assert out[0][18:22, 18:22].all() and not out[1][18:22, 18:22].any()


def test_unclaimed_pixels_go_by_probability_then_to_the_nearest_worm():
    upper = _bar(SHAPE, (10, 18), (0, 40))
    lower = _bar(SHAPE, (22, 30), (0, 40))
    # rows 18-22 are foreground that no worm claims; the lower worm's RoI reaches rows 18-22 of
    # columns 0-20 (probability 0.2: under any mask threshold, yet the only one there); columns
    # 20-40 of those rows lie beyond both RoIs and go to the nearer worm
    soft = [
        _soft(SHAPE, (10, 18), (0, 40), 0.9),
        _soft(SHAPE, (18, 30), (0, 20), 0.2),
    ]
    masks = np.stack([upper, lower])
    out = divide_shared_blobs(masks, FOREGROUND, soft)
    assert out[1][18:22, 0:20].all() and not out[0][18:22, 0:20].any()
    assert out[0][18:20, 20:40].all() and out[1][20:22, 20:40].all()  # nearest worm
    assert not (out[0] & out[1]).any()
    np.testing.assert_array_equal(out[0] | out[1], _bar(SHAPE, (10, 30), (0, 40)))


def test_divide_in_place_and_its_refusals():
    masks = np.stack([_bar(SHAPE, (10, 23), (0, 40)), _bar(SHAPE, (20, 30), (0, 40))])
    soft = [_soft(SHAPE, (10, 23), (0, 40), 0.6), _soft(SHAPE, (20, 30), (0, 40), 0.9)]
    expected = divide_shared_blobs(masks, FOREGROUND, soft)
    same = divide_shared_blobs(masks, FOREGROUND, soft, inplace=True)
    assert same is masks
    np.testing.assert_array_equal(same, expected)
    with pytest.raises(ValueError, match="probabilities"):
        divide_shared_blobs(masks, FOREGROUND, soft[:1])
    with pytest.raises(ValueError, match="foreground"):
        divide_shared_blobs(masks, FOREGROUND[:10], soft)
    one = masks[:1].copy()
    np.testing.assert_array_equal(divide_shared_blobs(one, FOREGROUND, soft[:1]), one)


def test_soft_on_window_reads_zero_where_the_roi_does_not_reach():
    soft = _soft(SHAPE, (5, 10), (5, 10), 1.0)
    window = (slice(8, 12), slice(0, 7))
    out = soft_on_window(soft, window)
    assert out.shape == (4, 7)
    assert (out[:2, 5:] == 255).all() and out[2:].sum() == 0 and out[:, :5].sum() == 0
    assert soft_on_window(None, window).sum() == 0


def test_tiled_pieces_merge_their_probabilities():
    tiles = tile_grid(40, 120, 64, 16)
    # one worm seen by both tiles (columns 20-100), its probability higher in the second tile
    a = Candidate(0, 10, 20, np.ones((5, 44), bool), 0.9, np.full((5, 44), 100, np.uint8))
    b = Candidate(1, 10, 48, np.ones((5, 52), bool), 0.8, np.full((5, 52), 200, np.uint8))
    masks, scores, soft = merge_candidates_soft([a, b], tiles, 40, 120)
    assert masks.shape == (1, 40, 120) and scores.tolist() == [pytest.approx(0.9)]
    merged = soft[0]
    assert (merged.y0, merged.x0, merged.prob.shape) == (10, 20, (5, 80))
    assert (merged.prob[:, :28] == 100).all() and (merged.prob[:, 28:] == 200).all()
    no_prob = Candidate(1, 10, 48, np.ones((5, 52), bool), 0.8)
    assert merge_candidates_soft([a, no_prob], tiles, 40, 120)[2] == [None]
    with pytest.raises(ValueError, match="probability crop"):
        Candidate(0, 0, 0, np.ones((3, 3), bool), 0.5, np.ones((2, 3), np.uint8))


def test_refine_divides_only_when_given_probabilities():
    masks = np.stack([_bar(SHAPE, (10, 23), (0, 40)), _bar(SHAPE, (20, 30), (0, 40))])
    soft = [_soft(SHAPE, (10, 23), (0, 40), 0.6), _soft(SHAPE, (20, 30), (0, 40), 0.9)]
    scores = np.array([0.9, 0.8])
    kept, _ = refine_instances(masks.copy(), scores, FOREGROUND, 1.0)
    assert (kept[0] & kept[1]).any()
    divided, _ = refine_instances(masks.copy(), scores, FOREGROUND, 1.0, soft=soft)
    assert not (divided[0] & divided[1]).any()
    with pytest.raises(ValueError, match="probabilities"):
        refine_instances(masks.copy(), scores, FOREGROUND, 1.0, soft=soft[:1])


def test_segment_shares_out_touching_worms_of_a_real_model():
    # the bundled binary model on synthetic worms: with division no foreground pixel of a shared
    # blob is claimed twice, and the worms cover at least as much of the foreground
    model = load_model("worms-binary")
    image, _ = synthetic_worms(seed=3, render="binary")
    foreground = image > 0.5 * image.max()
    kept = segment(model, image, divide_touching=False)
    divided = segment(model, image)
    assert len(kept) == len(divided) > 1
    twice = lambda inst: np.count_nonzero(inst.masks.sum(0) > 1)  # noqa: E731
    assert twice(kept) > 0  # the seed has touching worms claimed twice
    assert twice(divided) < twice(kept)  # only crossings both worms are sure of stay shared
    assert not (divided.masks & ~foreground).any()
    covered = lambda inst: np.count_nonzero(inst.masks.any(0))  # noqa: E731
    assert covered(divided) >= covered(kept)


CASES = [("worms-binary", None), ("worms-brightfield", None), ("worms-binary", 256)]


@pytest.mark.parametrize(("name", "tile_size"), CASES)
def test_detect_then_refine_is_what_segment_gives(name, tile_size):
    # the threshold search applies its settings to detect()'s output: at segment's defaults it
    # must give segment's worms exactly, or the settings it picks mean nothing. One tile: any
    # lower score threshold in detect; tiled, the pieces cut by tiles merge among the worms
    # kept, so detect runs at the score threshold itself (what the search does for big images)
    model = load_model(name)
    mode = model.config.input_mode
    image, _ = synthetic_worms(seed=3, render="binary" if mode == "binary" else "brightfield")
    grey = normalise(image, mode)
    defaults = postprocess_defaults(model.config.postprocess_kind)
    expected = segment(model, grey, preprocessed=True, tile_size=tile_size)
    low = defaults["score_threshold"] if tile_size else 0.05
    found, soft = detect(model, grey, low, tile_size=tile_size)
    assert len(found) >= len(expected) > 1
    foreground = worm_foreground(found, grey, model.config)
    assert foreground is not None and foreground.any()
    keep = np.flatnonzero(found.scores >= defaults["score_threshold"])
    masks, scores = refine_instances(
        found.masks[keep],
        found.scores[keep],
        foreground,
        defaults["max_overlap"],
        soft=[soft[i] for i in keep],
    )
    np.testing.assert_array_equal(masks, expected.masks)
    np.testing.assert_array_equal(scores, expected.scores)
    # a constant image is not shown to the network, as in segment
    blank, blank_soft = detect(model, np.zeros((64, 80), np.float32))
    assert len(blank) == 0 and blank_soft == [] and blank.masks.shape == (0, 64, 80)
