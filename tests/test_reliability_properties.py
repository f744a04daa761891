"""Property-based tests (hypothesis) of preprocessing, tiling/merging and label conversion.

- ``to_grey`` / ``normalise``: any finite array of any real dtype, grey or RGB(A), gives a finite
  float32 (H, W) in [0, 1] (``normalise``), never changes the caller's array, and bright-field
  normalisation keeps the order of grey values.
- ``tile_grid``: the cores partition the image exactly, windows stay inside it and overlap their
  neighbours by at least ``overlap`` pixels.
- ``merge_candidates``: with a perfect per-tile detector (each separated bar = one instance),
  the merged instances of a tiled image equal the untiled ones, for bars of any length crossing
  any number of tile borders.
- ``labels_from_instances`` / ``instances_from_labels``: a round trip for non-overlapping
  instances; on overlaps the higher score wins each pixel.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage

from napari_semiconv.core.measurements import instances_from_labels, labels_from_instances
from napari_semiconv.core.preprocess import normalise, remove_hot_pixels, to_grey
from napari_semiconv.core.tiling import Candidate, merge_candidates, tile_grid

FAST = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

DTYPES = [
    np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
    np.float16, np.float32, np.float64,
]  # fmt: skip


def _elements(dtype: np.dtype):
    if dtype.kind == "f":
        # finite values within float32's range (beyond it see the explicit tests below)
        bound = float(np.finfo(np.float16).max) if dtype.itemsize == 2 else float(np.float32(1e37))
        return st.floats(
            -bound, bound, allow_nan=False, allow_infinity=False, width=dtype.itemsize * 8
        )
    return None  # hypothesis's default: the dtype's whole range


@st.composite
def images(draw, colour: bool | None = None):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    channels = draw(st.sampled_from([None, 3, 4])) if colour is None else (3 if colour else None)
    # a colour image one pixel high or wide is ambiguous once singleton axes are squeezed
    # ((1, 5, 3) reads as a 5 x 3 grey plane); segment refuses anything under 16 px anyway
    low = 1 if channels is None else 2
    height, width = draw(st.integers(low, 24)), draw(st.integers(low, 24))
    shape = (height, width) if channels is None else (height, width, channels)
    return draw(hnp.arrays(dtype, shape, elements=_elements(dtype)))


@FAST
@given(images())
def test_to_grey_gives_finite_float32_planes(image):
    before = image.copy()
    grey = to_grey(image)
    assert grey.dtype == np.float32 and grey.shape == image.shape[:2]
    assert np.isfinite(grey).all()
    np.testing.assert_array_equal(image, before)  # the caller's array is untouched
    if image.ndim == 2:  # grey: the values themselves, as float32
        np.testing.assert_array_equal(grey, image.astype(np.float32))
    else:  # luminance is a convex combination of R, G and B
        rgb = image[..., :3].astype(np.float64)
        lo, hi = rgb.min(axis=-1), rgb.max(axis=-1)
        tol = 1e-5 * np.maximum(np.abs(hi), 1.0)
        assert np.all(grey >= lo - tol) and np.all(grey <= hi + tol)


@FAST
@given(images(), st.sampled_from(["binary", "brightfield"]))
def test_normalise_gives_finite_float32_in_unit_range(image, mode):
    before = image.copy()
    out = normalise(image, mode)
    assert out.dtype == np.float32 and out.ndim == 2
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(image, before)
    if mode == "binary":
        assert set(np.unique(out)) <= {0.0, 1.0}


@FAST
@given(images(colour=False))
def test_brightfield_normalisation_keeps_the_order_of_grey_values(image):
    # ... once hot pixels have their neighbourhood's median (core.preprocess.remove_hot_pixels)
    out = normalise(image, "brightfield")
    grey = to_grey(image).astype(np.float64)
    lo, hi = np.percentile(grey, (1.0, 99.8))
    remove_hot_pixels(grey, float(lo), float(hi))
    order = np.argsort(grey.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= 0)


def test_a_one_pixel_high_colour_strip_is_read_as_colour():
    strip = np.zeros((1, 20, 3), np.uint8)
    strip[0, :, 0] = 255
    assert to_grey(strip).shape == (1, 20)


def test_brightfield_normalisation_of_the_full_float32_range_is_finite():
    image = np.array([[-3e38, 3e38], [0.0, 1.0]], np.float32)
    with np.errstate(all="ignore"):
        out = normalise(image, "brightfield")
    assert np.isfinite(out).all()


# --------------------------------------------------------------------- tiling


@FAST
@given(
    height=st.integers(1, 700),
    width=st.integers(1, 700),
    tile=st.integers(32, 300),
    overlap_fraction=st.floats(0.0, 0.49),
)
def test_tile_cores_partition_the_image(height, width, tile, overlap_fraction):
    overlap = int(overlap_fraction * tile)
    tiles = tile_grid(height, width, tile, overlap)
    cover = np.zeros((height, width), np.int32)
    seen = np.zeros((height, width), bool)
    for t in tiles:
        assert 0 <= t.y0 < t.y1 <= height and 0 <= t.x0 < t.x1 <= width
        assert t.y1 - t.y0 <= tile and t.x1 - t.x0 <= tile
        assert t.y0 <= t.cy0 < t.cy1 <= t.y1 and t.x0 <= t.cx0 < t.cx1 <= t.x1
        cover[t.cy0 : t.cy1, t.cx0 : t.cx1] += 1
        seen[t.y0 : t.y1, t.x0 : t.x1] = True
    assert (cover == 1).all(), "the cores must partition the image"
    assert seen.all()
    if len(tiles) > 1:  # neighbours along each axis overlap by at least `overlap`
        for axis in ("y", "x"):
            starts = sorted({getattr(t, f"{axis}0") for t in tiles})
            ends = sorted({getattr(t, f"{axis}1") for t in tiles})
            for end, nxt in zip(ends[:-1], starts[1:], strict=True):
                assert end - nxt >= overlap


@st.composite
def bar_scenes(draw):
    """An image with separated horizontal/vertical bars (any length) and a tile grid."""
    height, width = draw(st.integers(40, 220)), draw(st.integers(40, 220))
    tile = draw(st.integers(32, 96))
    overlap = draw(st.integers(1, tile // 2 - 1))
    bars: list[tuple[int, int, int, int]] = []
    occupied = np.zeros((height, width), bool)
    for _ in range(draw(st.integers(0, 8))):
        thick = draw(st.integers(1, 6))
        length = draw(st.integers(1, max(height, width)))
        if draw(st.booleans()):
            y0, x0 = draw(st.integers(0, height - thick)), draw(st.integers(0, width - 1))
            y1, x1 = y0 + thick, min(width, x0 + length)
        else:
            y0, x0 = draw(st.integers(0, height - 1)), draw(st.integers(0, width - thick))
            y1, x1 = min(height, y0 + length), x0 + thick
        # keep bars apart by a pixel, so each is one 8-connected component
        if occupied[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1].any():
            continue
        occupied[y0:y1, x0:x1] = True
        bars.append((y0, y1, x0, x1))
    scores = draw(st.lists(st.floats(0.05, 1.0), min_size=len(bars), max_size=len(bars)))
    return height, width, tile, overlap, bars, scores


def _detect(tiles, bars, scores, height, width):
    """Candidates of a perfect detector: each bar's part in a window, split into its 8-connected
    pieces as a detector would see them, with the bar's score."""
    ids = np.zeros((height, width), np.int32)
    for k, (y0, y1, x0, x1) in enumerate(bars):
        ids[y0:y1, x0:x1] = k + 1
    candidates = []
    for index, t in enumerate(tiles):
        window = ids[t.y0 : t.y1, t.x0 : t.x1]
        labels, _ = ndimage.label(window > 0, structure=np.ones((3, 3)))
        for piece, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            bar = int(window[sl][labels[sl] == piece][0]) - 1
            mask = labels[sl] == piece
            candidates.append(
                Candidate(index, t.y0 + sl[0].start, t.x0 + sl[1].start, mask, scores[bar])
            )
    return candidates


@settings(max_examples=50, deadline=None, derandomize=True)
@given(bar_scenes())
def test_merging_tiles_gives_the_untiled_instances(scene):
    height, width, tile, overlap, bars, scores = scene
    tiles = tile_grid(height, width, tile, overlap)
    whole = tile_grid(height, width, max(height, width, 32), 0)
    assert len(whole) == 1
    tiled_masks, tiled_scores = merge_candidates(
        _detect(tiles, bars, scores, height, width), tiles, height, width
    )
    untiled_masks, untiled_scores = merge_candidates(
        _detect(whole, bars, scores, height, width), whole, height, width
    )
    pieces = _detect(tiles, bars, scores, height, width)
    event(f"tiles: {'one' if len(tiles) == 1 else 'several'}")
    event(f"a bar seen by several tiles: {len(pieces) > len(bars)}")
    assert len(tiled_masks) == len(untiled_masks) == len(bars)
    as_set = lambda masks, s: {(m.tobytes(), float(v)) for m, v in zip(masks, s, strict=True)}  # noqa: E731
    assert as_set(tiled_masks, tiled_scores) == as_set(untiled_masks, untiled_scores)
    assert np.all(np.diff(tiled_scores) <= 0)  # ordered by decreasing score


# --------------------------------------------------------------------- labels <-> instances


@st.composite
def instance_stacks(draw, overlapping: bool):
    height, width = draw(st.integers(1, 30)), draw(st.integers(1, 30))
    n = draw(st.integers(0, 6))
    if overlapping:
        masks = draw(hnp.arrays(np.bool_, (n, height, width)))
    else:  # a random partition: each pixel belongs to at most one instance
        owner = draw(hnp.arrays(np.int8, (height, width), elements=st.integers(-1, n - 1)))
        masks = (
            np.stack([owner == k for k in range(n)]) if n else np.zeros((0, height, width), bool)
        )
    scores = np.array(
        draw(st.lists(st.floats(0.0, 1.0, width=32), min_size=n, max_size=n)), np.float32
    )
    return masks, scores


@FAST
@given(instance_stacks(overlapping=False))
def test_labels_round_trip_without_overlaps(stack):
    masks, scores = stack
    labels = labels_from_instances(masks, scores)
    assert labels.shape == masks.shape[1:] and labels.dtype == np.uint16
    back, ids = instances_from_labels(labels, return_ids=True)
    present = [k for k in range(len(masks)) if masks[k].any()]  # empty instances leave no label
    np.testing.assert_array_equal(ids, np.array(present) + 1)
    np.testing.assert_array_equal(back, masks[present])


@FAST
@given(instance_stacks(overlapping=True))
def test_overlaps_go_to_the_higher_score(stack):
    masks, scores = stack
    labels = labels_from_instances(masks, scores)
    covered = masks.any(axis=0) if len(masks) else np.zeros(labels.shape, bool)
    assert np.array_equal(labels > 0, covered)
    for y, x in zip(*np.nonzero(covered), strict=True):
        k = int(labels[y, x]) - 1
        assert masks[k, y, x]
        rivals = scores[masks[:, y, x]]
        assert scores[k] == rivals.max()
        # among equal scores the lower index wins
        assert k == int(np.flatnonzero(masks[:, y, x] & (scores == rivals.max()))[0])
