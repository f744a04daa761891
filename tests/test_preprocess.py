"""core.preprocess: grey conversion and the two input modes."""

import numpy as np
import pytest

from napari_semiconv.core.preprocess import (
    INPUT_MODES,
    check_input_mode,
    normalise,
    remove_hot_pixels,
    to_grey,
)


def test_to_grey_keeps_grey_values_and_returns_a_float32_copy():
    image = np.arange(12, dtype=np.uint16).reshape(3, 4) * 300
    grey = to_grey(image)
    assert grey.dtype == np.float32 and grey.shape == (3, 4)
    np.testing.assert_array_equal(grey, image.astype(np.float32))
    f32 = np.ones((4, 5), np.float32)
    out = to_grey(f32)
    out[0, 0] = 7
    assert f32[0, 0] == 1  # the caller's array is untouched


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int16, np.int64, np.float16, np.float64])
def test_to_grey_accepts_common_dtypes(dtype):
    image = (np.eye(5) * 1).astype(dtype)
    grey = to_grey(image)
    assert grey.dtype == np.float32
    np.testing.assert_array_equal(grey, np.eye(5, dtype=np.float32))


def test_rgb_and_rgba_become_luminance_with_alpha_dropped():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (0, 0, 255)
    rgb[1] = 100  # grey pixels keep their value
    grey = to_grey(rgb)
    assert grey.shape == (2, 3)
    np.testing.assert_allclose(grey[0], 255 * np.array([0.2126, 0.7152, 0.0722]), rtol=1e-5)
    np.testing.assert_allclose(grey[1], 100, rtol=1e-5)
    rgba = np.concatenate([rgb, np.full((2, 3, 1), 17, np.uint8)], axis=-1)
    np.testing.assert_allclose(to_grey(rgba), grey)


def test_singleton_axes_are_dropped():
    assert to_grey(np.ones((1, 6, 7))).shape == (6, 7)
    assert to_grey(np.ones((6, 7, 1))).shape == (6, 7)


@pytest.mark.parametrize(
    "image, words",
    [
        (np.zeros((0, 5)), "empty"),
        (np.zeros((2, 8, 8)), "2-D plane"),  # a stack: which plane?
        (np.zeros((3, 8, 8)), "colour axis last"),  # channel-first
        (np.zeros((2, 2, 8, 8)), "2-D plane"),
    ],
)
def test_to_grey_rejects_ambiguous_or_empty_images(image, words):
    with pytest.raises(ValueError, match=words):
        to_grey(image)


def test_nan_and_inf_are_rejected_with_their_count():
    image = np.ones((4, 4))
    image[0, 0] = np.nan
    image[1, 1] = np.inf
    image[2, 2] = -np.inf
    with pytest.raises(ValueError, match="3 NaN or infinite"):
        to_grey(image)
    with pytest.raises(ValueError, match=r"1 pixel\(s\) beyond float32's range"):
        normalise(np.array([[1e300, 0.0]]), "brightfield")  # finite, but overflows float32
    with pytest.raises(ValueError, match="NaN"):
        normalise(image, "binary")


def test_non_numeric_images_raise_type_error():
    with pytest.raises(TypeError, match="numeric"):
        to_grey(np.array([["a", "b"]]))
    with pytest.raises(TypeError, match="numeric"):
        to_grey(np.ones((3, 3), dtype=complex))


def test_input_modes_are_checked():
    assert INPUT_MODES == ("binary", "brightfield")
    assert check_input_mode(" Brightfield ") == "brightfield"
    with pytest.raises(ValueError, match="'binary', 'brightfield'"):
        normalise(np.ones((3, 3)), "fluorescence")


@pytest.mark.parametrize(
    "fg, dtype", [(1, np.uint8), (255, np.uint8), (65535, np.uint16), (True, bool), (0.7, float)]
)
def test_binary_accepts_any_two_level_mask(fg, dtype):
    mask = np.zeros((6, 6), dtype=dtype)
    mask[2:4, 1:5] = fg
    out = normalise(mask, "binary")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, (mask != 0).astype(np.float32))


def test_binary_thresholds_soft_masks_at_half_the_maximum():
    soft = np.array([[0.0, 0.1, 0.49, 0.51, 0.9, 1.0]]) * 200
    np.testing.assert_array_equal(normalise(soft, "binary"), [[0, 0, 0, 1, 1, 1]])
    rgba = np.zeros((3, 3, 4), np.uint8)
    rgba[1, 1] = (255, 255, 255, 255)  # like BBBC010's foreground PNGs
    np.testing.assert_array_equal(normalise(rgba, "binary"), np.eye(3)[[1]].T @ np.eye(3)[[1]])


def test_binary_label_images_keep_every_label():
    labels = np.zeros((5, 5), np.uint16)
    labels[0, 0], labels[2, 2], labels[4, 4] = 1, 2, 40  # 1 < 40 / 2 must stay foreground
    np.testing.assert_array_equal(normalise(labels, "binary"), np.diag([1, 0, 1, 0, 1]))


def _two_worms() -> np.ndarray:
    labels = np.zeros((40, 60), np.uint16)
    labels[5:12, 4:50] = 1
    labels[12:30, 30:36] = 2  # touches worm 1
    labels[20:26, 40:58] = 9
    return labels


def test_binary_touching_label_ids_are_labels_however_small():
    labels = _two_worms()
    np.testing.assert_array_equal(normalise(labels, "binary"), (labels > 0).astype(np.float32))


def test_binary_integer_grey_maps_are_not_labels():
    # an 8-bit mask with a little noise and an 8-bit probability map have many non-zero values
    # too; read as labels, every non-zero pixel would be foreground
    rng = np.random.default_rng(0)
    worms = _two_worms() > 0
    noisy = (worms * 255 + rng.integers(-3, 4, worms.shape)).clip(0, 255).astype(np.uint8)
    np.testing.assert_array_equal(normalise(noisy, "binary"), worms.astype(np.float32))
    shifted = worms.astype(np.int64) * 7 - 3  # a two-level map with a negative background
    np.testing.assert_array_equal(normalise(shifted, "binary"), worms.astype(np.float32))
    ramp = np.linspace(0, 255, 60).astype(np.uint8)[None, :].repeat(40, axis=0)
    np.testing.assert_array_equal(normalise(ramp, "binary"), (ramp > 127.5).astype(np.float32))


def test_binary_empty_foreground_is_all_zero():
    out = normalise(np.zeros((4, 4), np.uint8), "binary")
    assert out.dtype == np.float32 and not out.any()


def test_brightfield_maps_robust_percentiles_to_unit_range():
    rng = np.random.default_rng(0)
    image = rng.normal(2000, 300, (100, 100)).astype(np.uint16)
    image[0, :5] = 65535  # hot pixels must not set the top
    out = normalise(image, "brightfield")
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out.min() == 0.0 and out.max() == 1.0
    lo, hi = np.percentile(image.astype(np.float32), (1, 99.8))
    np.testing.assert_allclose(np.median(out), (np.median(image) - lo) / (hi - lo), atol=1e-3)
    assert (out == 1.0).mean() < 0.01  # only the top 0.2 % (and hot pixels) saturate
    # dark worms stay dark (no inversion)
    image[40:60, 40:60] = 500
    assert normalise(image, "brightfield")[50, 50] == 0.0


def test_brightfield_constant_and_nearly_constant_images_do_not_divide_by_zero():
    const = np.full((8, 8), 1234, np.uint16)
    out = normalise(const, "brightfield")
    assert np.isfinite(out).all() and not out.any()
    spot = np.zeros((40, 40), np.float32)
    spot[0, 0] = 5.0  # 99.8th percentile == 1st percentile: fall back on min/max
    out = normalise(spot, "brightfield")
    assert out[0, 0] == 1.0 and out.sum() == 1.0


def _well(seed: int = 0) -> np.ndarray:
    """A BBBC010-like bright-field well: dark outside (~100), a bright disc (~2000) with a dark
    worm 6 px wide in it, edges blurred as by a lens (σ 1 px), camera noise σ 5."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:120, :160]
    image = np.where((yy - 60) ** 2 + (xx - 80) ** 2 < 50**2, 2000.0, 100.0)
    image[57:63, 50:110] = 600.0  # the worm
    image = ndimage.gaussian_filter(image, 1.0)
    return (image + rng.normal(0, 5, image.shape)).astype(np.uint16)


def test_hot_and_dead_pixels_take_their_neighbourhoods_value():
    clean = _well()
    hot = clean.copy()
    spots = {(5, 5): 65535, (10, 150): 3000, (100, 10): 2000, (101, 10): 2000}  # outside
    spots |= {(60, 60): 65535, (40, 80): 0, (41, 81): 0}  # on the worm, in the well
    for (y, x), value in spots.items():
        hot[y, x] = value
    out, expected = normalise(hot, "brightfield"), normalise(clean, "brightfield")
    for y, x in spots:
        assert abs(out[y, x] - expected[y, x]) < 0.01, (y, x)
    np.testing.assert_allclose(out, expected, atol=0.01)


def test_a_noisy_or_clean_image_without_spikes_is_not_changed():
    rng = np.random.default_rng(1)
    noisy = rng.normal(2000, 300, (200, 200))  # 1 % of pixels are 0.5 of the range off
    for image in (noisy, _well().astype(np.float64)):
        lo, hi = np.percentile(image, (1.0, 99.8))
        copy = image.copy()
        assert remove_hot_pixels(copy, float(lo), float(hi)) == 0
        np.testing.assert_array_equal(copy, image)
    # two-pixel-wide lines are kept; a one-pixel line is taken for a row of hot pixels
    image = _well().astype(np.float64)
    image[2:4, 60:100] = 3000.0  # outside the well, as the hot pixels of the test above
    image[115, 60:100] = 3000.0
    lo, hi = np.percentile(image, (1.0, 99.8))
    copy = image.copy()
    # 40 line pixels, and the four corners of the unblurred 2-px line (as any median filter)
    assert remove_hot_pixels(copy, float(lo), float(hi)) == 44
    np.testing.assert_array_equal(copy[2:4, 61:99], image[2:4, 61:99])
    assert copy[115, 60:100].max() < 200


def test_hot_pixels_outside_a_real_well_add_no_worms(bbbc010_root):
    import tifffile

    from napari_semiconv.core.inference import segment
    from napari_semiconv.core.model_store import load_model

    image = tifffile.imread(next((bbbc010_root / "images").glob("*_A02_w2_*.tif")))
    for path in sorted((bbbc010_root / "images").glob("*_w2_*.tif")):
        grey = tifffile.imread(path).astype(np.float64)
        lo, hi = np.percentile(grey, (1.0, 99.8))
        assert remove_hot_pixels(grey, float(lo), float(hi)) == 0, path.name  # none to change
    rng = np.random.default_rng(0)
    outside = np.flatnonzero(image.ravel() < 1000)
    hot = image.copy()
    hot.ravel()[rng.choice(outside, 108, replace=False)] = 65535  # 0.03 % of the pixels
    model = load_model("worms-brightfield", device="cpu")
    # before hot pixels were removed: 17 worms became 77
    assert len(segment(model, hot)) == len(segment(model, image))


def test_brightfield_normalisation_in_torch_equals_the_host_one():
    # segment() runs this branch on a CUDA device; torch runs the same code on the CPU here
    from napari_semiconv.core import preprocess

    rng = np.random.default_rng(0)
    images = [
        rng.integers(90, 3000, size=(52, 69)).astype(np.uint16),  # BBBC010-like
        rng.normal(0.0, 1e30, size=(40, 30)).astype(np.float32),  # huge range
        np.full((20, 20), 7.0, np.float32),  # constant: zeros
    ]
    near_constant = np.full((50, 50), 3.0, np.float32)
    near_constant[0, :3] = (1.0, 9.0, 11.0)  # flat up to the top 0.2 %: full range
    images.append(near_constant)
    hot = _well()
    hot[[5, 60, 100, 101], [5, 60, 10, 10]] = 65535  # hot pixels: the medians agree too
    images.append(hot)
    hosts = [normalise(image, "brightfield") for image in images]
    real_on_gpu = preprocess._on_gpu
    preprocess._on_gpu = lambda device: True  # the device branch, on the CPU
    try:
        torch_sides = [normalise(image, "brightfield", "cpu") for image in images]
    finally:
        preprocess._on_gpu = real_on_gpu
    for host, torch_side in zip(hosts, torch_sides, strict=True):
        assert torch_side.dtype == np.float32 and torch_side.shape == host.shape
        np.testing.assert_allclose(torch_side, host, atol=1e-6)
    # not a CUDA device: the host branch, whatever the device's name
    np.testing.assert_array_equal(
        normalise(images[0], "brightfield", "cpu"), normalise(images[0], "brightfield")
    )
