"""core.synthetic.worms: deterministic, BBBC010-like synthetic worms."""

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_semiconv.core.synthetic.worms import (
    FRAME_SHAPE,
    _width_profile,
    render_worms,
    synthetic_worms,
)


@pytest.fixture(scope="module")
def full_wells():
    """Three full-size bright-field wells (the expensive part, shared)."""
    return [synthetic_worms(seed=s) for s in range(3)]


def test_same_seed_same_worms_other_seed_other_worms():
    a_img, a_masks = synthetic_worms(seed=5, shape=(128, 160))
    b_img, b_masks = synthetic_worms(seed=5, shape=(128, 160))
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_masks, b_masks)
    c_img, c_masks = synthetic_worms(seed=6, shape=(128, 160))
    assert not np.array_equal(a_img, c_img)


def test_full_size_wells_look_like_bbbc010(full_wells):
    for image, masks in full_wells:
        assert image.shape == FRAME_SHAPE and image.dtype == np.uint16
        assert masks.dtype == bool and masks.shape[1:] == FRAME_SHAPE
        assert 12 <= len(masks) <= 15  # as the real wells
        areas = masks.sum(axis=(1, 2))
        assert areas.min() > 300 and areas.max() < 2200  # real: 605-1497 px
        assert 700 < np.median(areas) < 1300
        # every worm is one (8-connected) piece, and none touches the image border (as in BBBC010)
        assert all(ndi.label(m, structure=np.ones((3, 3)))[1] == 1 for m in masks)
        border = masks[:, 0].any() or masks[:, -1].any() or masks[:, :, 0].any()
        assert not border
        # intensities like the real w2 channel: dark surround ~95, bright well ~2900
        p1, p998 = np.percentile(image, (1, 99.8))
        assert 80 < p1 < 110 and 2500 < p998 < 3300


def test_worms_are_darker_than_the_well_around_them(full_wells):
    for image, masks in full_wells:
        union = masks.any(axis=0)
        ring = ndi.binary_dilation(union, iterations=6) & ~ndi.binary_dilation(union, iterations=3)
        ratio = image[union].mean() / image[ring].mean()
        assert 0.4 < ratio < 0.75  # real wells: 0.54-0.66


def test_some_worms_overlap_and_overlaps_are_kept(full_wells):
    counts = [m.sum(axis=0) for _, m in full_wells]
    assert any((c >= 2).any() for c in counts)
    for c in counts:
        assert (c >= 2).sum() / (c >= 1).sum() < 0.08  # real: at most 0.044


def test_binary_rendering_is_the_union_of_the_same_masks():
    bf_img, bf_masks = synthetic_worms(seed=3, shape=(160, 160), render="brightfield")
    img, masks = synthetic_worms(seed=3, shape=(160, 160), render="binary")
    assert img.dtype == np.float32 and set(np.unique(img)) <= {0.0, 1.0}
    np.testing.assert_array_equal(img, masks.any(axis=0))
    np.testing.assert_array_equal(masks, bf_masks)


def test_worms_taper_to_a_blunt_head_and_a_thin_tail():
    radii = _width_profile(np.random.default_rng(0), 200, radius=5.0)
    assert radii.max() == pytest.approx(5.0)
    assert radii[0] < 0.5 * radii.max()  # the head end is rounded
    assert radii[-1] < radii[0]  # the tail is thinner than the head
    assert np.argmax(radii) not in (0, len(radii) - 1)


def test_n_worms_and_small_shapes():
    image, masks = synthetic_worms(seed=1, shape=(96, 120), n_worms=3)
    assert image.shape == (96, 120) and masks.shape == (3, 96, 120)
    assert masks.reshape(3, -1).any(axis=1).all()
    _, none = synthetic_worms(seed=1, shape=(64, 64), n_worms=0)
    assert none.shape == (0, 64, 64)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"render": "fluorescence"}, "render"),
        ({"shape": (8, 8)}, "at least 16"),
        ({"shape": (100,)}, "rows, columns"),
        ({"n_worms": -1}, "n_worms"),
        ({"n_worms": 2.5}, "n_worms"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, words):
    with pytest.raises(ValueError, match=words):
        synthetic_worms(**kwargs)


def test_render_worms_gives_reproducible_crop_sized_windows():
    img_a, masks_a = render_worms((96, 128), np.random.default_rng(4), "binary")
    img_b, masks_b = render_worms((96, 128), np.random.default_rng(4), "binary")
    assert img_a.shape == (96, 128) and masks_a.shape[1:] == (96, 128)
    np.testing.assert_array_equal(masks_a, masks_b)
    np.testing.assert_array_equal(img_a, masks_a.any(axis=0))
    assert masks_a.reshape(len(masks_a), -1).any(axis=1).all()  # no empty instance
    seen = [len(render_worms((128, 128), np.random.default_rng(s))[1]) for s in range(4)]
    assert sum(seen) > 0  # windows are centred inside the well, so they see worms
    # a strip as tall as the frame is still a window of a whole well (it was a well fitted to
    # the strip, with a tenth of a real well's worm density)
    strip = [render_worms((520, 120), np.random.default_rng(s), "binary") for s in range(6)]
    fitted = [render_worms((400, 800), np.random.default_rng(s), "binary") for s in range(2)]
    assert np.mean([img.mean() for img, _ in strip]) > 0.03
    assert all(img.shape == (400, 800) and len(masks) for img, masks in fitted)


def test_generation_is_fast():
    synthetic_worms(seed=0)  # warm-up
    start = time.perf_counter()
    for seed in range(3):
        synthetic_worms(seed=seed)
    per_image = (time.perf_counter() - start) / 3
    assert per_image < 1.0  # ~0.15 s on an idle core; generous for a loaded CI machine


def test_synthetic_sizes_match_the_real_wells(bbbc010_root):
    from napari_semiconv.core.data.bbbc010 import read_bbbc010

    real = read_bbbc010(bbbc010_root, "binary", wells=["A01", "A12", "B05", "B20", "C02"])
    real_area = np.median(np.concatenate([s.masks.sum(axis=(1, 2)) for s in real]))
    synthetic = [synthetic_worms(seed=s, render="binary")[1] for s in range(5)]
    syn_area = np.median(np.concatenate([m.sum(axis=(1, 2)) for m in synthetic]))
    assert abs(syn_area - real_area) / real_area < 0.15
    real_count = np.mean([len(s.masks) for s in real])
    assert abs(np.mean([len(m) for m in synthetic]) - real_count) <= 2
