"""Bad images through ``napari_semiconv.segment`` and ``napari-semiconv predict``.

Every input gives either a result or a ValueError/TypeError whose message says what to do; the
CLI turns those into one line on stderr and exit code 2, writing nothing for that image. The
model is a tiny random-initialised resnet18 saved with ``save_checkpoint`` and loaded with
``load_model``; the napari widget's share is in ``test_reliability_gui.py``.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import tifffile
import torch
from reliability_kit import ComponentDetector, save_tiny_model
from toy_worms import run_steps, toy_worms

import napari_semiconv
from napari_semiconv.cli.main import main
from napari_semiconv.core.export import read_instances_tif, read_measurements_csv
from napari_semiconv.core.inference import segment_steps
from napari_semiconv.core.tiling import tile_grid

SETTINGS = {"score_threshold": 0.0, "mask_threshold": 0.4}  # the random model's 4 boxes count


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        mode: napari_semiconv.load_model(save_tiny_model(root / f"{mode}.pt", mode), device="cpu")
        for mode in ("binary", "brightfield")
    }


@pytest.fixture(scope="module")
def worms():
    """A 48 x 56 binary foreground of three worms and the reference result on it."""
    image, _ = toy_worms((48, 56), n=3, seed=4)
    return image.astype(np.float32)


@pytest.fixture(scope="module")
def reference(models, worms):
    inst = napari_semiconv.segment(models["binary"], worms, **SETTINGS)
    assert len(inst) > 0
    return inst


# --------------------------------------------------------------------- refused, with a reason


def _nan_image():
    image = np.ones((64, 64), np.float32)
    image[5, 7] = np.nan
    return image


def _inf_image(sign: float):
    image = np.zeros((64, 64), np.float64)
    image[:, 3] = sign * np.inf
    return image


BAD = [
    ("nan", _nan_image, ValueError, r"1 NaN or infinite pixel.*replace them"),
    ("inf", lambda: _inf_image(1.0), ValueError, r"64 NaN or infinite pixel.*replace them"),
    ("minus-inf", lambda: _inf_image(-1.0), ValueError, r"NaN or infinite pixel.*replace them"),
    ("all-nan-rgb", lambda: np.full((40, 40, 3), np.nan), ValueError, r"NaN.*replace them"),
    ("empty-0x0", lambda: np.zeros((0, 0)), ValueError, r"empty.*give an image with pixels"),
    ("empty-0x64", lambda: np.zeros((0, 64), np.uint8), ValueError, r"empty.*with pixels"),
    ("empty-rgb", lambda: np.zeros((64, 0, 3), np.uint8), ValueError, r"empty.*with pixels"),
    ("one-pixel", lambda: np.ones((1, 1), np.uint8), ValueError, r"1x1 .*at least 16 pixels"),
    # (1, 1, 3) is squeezed to (3,) before the colour axis is recognised: refused as not 2-D
    ("one-pixel-rgb", lambda: np.ones((1, 1, 3)), ValueError, r"at least 16|2-D plane"),
    ("4x2000", lambda: np.ones((4, 2000), np.uint8), ValueError, r"4x2000.*at least 16"),
    ("2000x4", lambda: np.ones((2000, 4), bool), ValueError, r"2000x4.*at least 16"),
    ("15x64", lambda: np.eye(15, 64), ValueError, r"15x64.*at least 16"),
    ("1-d", lambda: np.ones(500), ValueError, r"not 2-D.*single 2-D plane"),
    ("4-d", lambda: np.zeros((2, 3, 64, 64)), ValueError, r"single 2-D plane"),
    ("5-d", lambda: np.zeros((1, 2, 3, 64, 64), np.uint8), ValueError, r"single 2-D plane"),
    ("channel-first", lambda: np.zeros((3, 64, 64)), ValueError, r"colour axis last"),
    ("two-channels", lambda: np.zeros((64, 64, 2)), ValueError, r"single 2-D plane"),
    ("five-channels", lambda: np.zeros((64, 64, 5)), ValueError, r"single 2-D plane"),
    ("complex", lambda: np.ones((64, 64), np.complex64), TypeError, r"real numeric.*complex"),
    ("object", lambda: np.full((64, 64), None), TypeError, r"numbers.*object"),
    ("strings", lambda: np.full((64, 64), "w"), TypeError, r"numbers"),
    ("datetime", lambda: np.zeros((64, 64), "datetime64[s]"), TypeError, r"numbers"),
    ("list", lambda: [[0, 1], [1, 0]], TypeError, r"numpy array"),
    ("none", lambda: None, TypeError, r"numpy array"),
]


@pytest.mark.parametrize(("make", "error", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_images_are_refused_with_what_to_do(models, make, error, words):
    with pytest.raises(error, match=words):
        napari_semiconv.segment(models["binary"], make(), **SETTINGS)


def test_float64_beyond_float32_range_is_refused_not_silently_inf(models):
    image = np.zeros((64, 64), np.float64)
    image[10:20, 10:40] = 1e300  # finite in float64, infinite once cast to the model's float32
    with pytest.raises(ValueError, match="beyond float32's range.*rescale"):
        napari_semiconv.segment(models["brightfield"], image, **SETTINGS)


# --------------------------------------------------------------------- odd but valid: results


def _as(dtype, scale):
    return lambda im: (im * scale).astype(dtype)


def _rgba(alpha: int):
    def make(im):
        rgb = np.repeat((im * 255).astype(np.uint8)[..., None], 3, axis=2)
        return np.concatenate([rgb, np.full((*im.shape, 1), alpha, np.uint8)], axis=2)

    return make


SAME = [
    ("float64", _as(np.float64, 1)),
    ("float16", _as(np.float16, 1)),
    ("bool", lambda im: im > 0),
    ("uint8-255", _as(np.uint8, 255)),
    ("int8", _as(np.int8, 100)),
    ("int32", _as(np.int32, 100_000)),
    ("uint16-65535", _as(np.uint16, 65535)),
    ("uint64", _as(np.uint64, 2**60)),
    ("int64-negative-background", lambda im: (im * 7 - 3).astype(np.int64)),
    ("rgb", lambda im: np.repeat((im * 255).astype(np.uint8)[..., None], 3, axis=2)),
    ("rgba-opaque", _rgba(255)),
    ("rgba-transparent", _rgba(0)),  # alpha is ignored, not multiplied in
    ("singleton-first", lambda im: im[None]),
    ("singleton-last", lambda im: im[..., None]),
    ("torch-tensor", lambda im: torch.from_numpy(im)),
    ("fortran-order", lambda im: np.asfortranarray(im)),
    ("strided-view", lambda im: np.kron(im, np.ones((2, 2), np.float32))[::2, ::2]),
]


@pytest.mark.parametrize("make", [s[1] for s in SAME], ids=[s[0] for s in SAME])
def test_odd_dtypes_and_layouts_give_the_reference_result(models, worms, reference, make):
    """The same foreground in any dtype or layout: the same worms, and the input is untouched."""
    image = make(worms)
    before = np.array(image, copy=True)
    inst = napari_semiconv.segment(models["binary"], image, **SETTINGS)
    np.testing.assert_array_equal(inst.masks, reference.masks)
    np.testing.assert_array_equal(inst.scores, reference.scores)
    np.testing.assert_array_equal(np.asarray(image), before)


BRIGHTFIELD = [
    ("uint16-camera", lambda r: (1500 - 900 * r).astype(np.uint16)),
    ("int8-signed", lambda r: (60 - 120 * r).astype(np.int8)),
    ("float16", lambda r: (0.8 - 0.5 * r).astype(np.float16)),
    ("float64-tiny-range", lambda r: 1.0 + 1e-9 * r),
    ("float32-huge-values", lambda r: (1e30 * (1 + r)).astype(np.float32)),
    ("rgb-uint8", lambda r: np.repeat((255 * (1 - r)).astype(np.uint8)[..., None], 3, axis=2)),
]


@pytest.mark.parametrize("make", [b[1] for b in BRIGHTFIELD], ids=[b[0] for b in BRIGHTFIELD])
def test_brightfield_any_range_gives_a_valid_result(models, worms, make):
    rng = np.random.default_rng(0)
    image = make(np.clip(worms + 0.1 * rng.standard_normal(worms.shape), 0, 1))
    inst = napari_semiconv.segment(models["brightfield"], image, **SETTINGS)
    n = len(inst)
    assert inst.masks.shape == (n, 48, 56) and inst.masks.dtype == bool
    assert np.isfinite(inst.scores).all() and np.isfinite(inst.displacement).all()
    assert inst.labels().max() <= n


BLANK = [
    ("zeros-uint8", np.zeros((64, 80), np.uint8)),
    ("ones-float32", np.ones((64, 80), np.float32)),
    ("all-true", np.ones((64, 80), bool)),
    ("grey-rgb", np.full((64, 80, 3), 200, np.uint8)),
    ("constant-uint16", np.full((64, 80), 1234, np.uint16)),
    ("constant-negative", np.full((64, 80), -5.0)),
]


@pytest.mark.parametrize("mode", ["binary", "brightfield"])
@pytest.mark.parametrize("image", [b[1] for b in BLANK], ids=[b[0] for b in BLANK])
def test_blank_images_give_zero_worms(models, image, mode):
    inst = napari_semiconv.segment(models[mode], image, score_threshold=0.0, mask_threshold=0.0)
    assert len(inst) == 0
    assert inst.masks.shape == (0, 64, 80) and inst.scores.shape == (0,)
    assert not inst.labels().any() and not inst.displacement.any()


@pytest.mark.parametrize("shape", [(16, 1100), (1100, 16), (16, 64)])
def test_extreme_aspect_ratios_are_segmented(models, shape):
    """Long thin strips, auto-tiled beyond 1024 px, through the real network."""
    image = np.zeros(shape, np.uint8)
    image[shape[0] // 4 : shape[0] // 4 + 6, shape[1] // 4 : shape[1] // 4 + 6] = 1
    image[-8:-2, -40:-2] = 1
    inst = napari_semiconv.segment(models["binary"], image, **SETTINGS)
    assert inst.masks.shape[1:] == shape and inst.displacement.shape == (2, *shape)
    assert np.isfinite(inst.displacement).all()


@pytest.mark.parametrize("shape", [(16, 16), (16, 31), (31, 31)])
def test_smallest_allowed_images_are_segmented(models, shape):
    image = np.zeros(shape, np.uint8)
    image[4:10, 3:12] = 1
    inst = napari_semiconv.segment(models["binary"], image, **SETTINGS)
    assert inst.masks.shape[1:] == shape


# --------------------------------------------------------------------- a huge image


#: (y0, y1, x0, x1) of separated bars on a 3000 x 3000 image: several cross two or three tile
#: borders (tiles of 1024 start at 0, 960, 1920, 1976), some sit inside one tile
BARS = [
    (200, 209, 100, 2900),  # across all four tile columns
    (700, 708, 300, 1500),
    (2700, 2712, 1000, 2950),
    (2850, 2858, 40, 300),  # inside one tile
    (800, 2600, 500, 509),  # down three tile rows
    (800, 2600, 1500, 1507),
    (1000, 1800, 2500, 2510),
    (2200, 2300, 2200, 2206),
]


def _bars(shape):
    image = np.zeros(shape, np.uint8)
    truth = []
    for y0, y1, x0, x1 in BARS:
        assert not image[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1].any()  # separated, not touching
        image[y0:y1, x0:x1] = 1
        mask = np.zeros(shape, bool)
        mask[y0:y1, x0:x1] = True
        truth.append(mask)
    return image, truth


def test_huge_image_is_tiled_within_the_stated_memory(models):
    """3000 x 3000, tiles of 1024: every bar comes back whole, and the NumPy memory peak stays
    within what ``segment_steps`` documents (input copies + masks N·H·W + Φ 8·H·W + one batch).

    The network here is ``ComponentDetector`` (a connected-components stand-in): resnet18 on
    9 Mpx would take minutes on two CPU cores; the tiling, merging and stitching are the real
    ones.
    """
    shape = (3000, 3000)
    image, truth = _bars(shape)
    detector = ComponentDetector("binary")
    tiles = tile_grid(*shape, 1024, 64)
    assert len(tiles) == 16
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        steps = segment_steps(detector, image, score_threshold=0.0, tile_size=1024, overlap=64)
        events, inst = run_steps(steps)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert detector.calls == len(tiles) and events[-1].done == len(tiles)
    # every bar, cut by up to three tile borders, is one instance equal to the truth
    assert len(inst) == len(truth)
    found = {m.tobytes() for m in inst.masks}
    assert found == {m.tobytes() for m in truth}
    n, (h, w) = len(inst), shape
    tile_px = 1024 * 1024
    bound = (
        n * h * w  # the masks (bool)
        + 8 * h * w  # Φ (2 x float32)
        + 3 * 4 * h * w  # float32 grey, normalised image and one float32 temporary
        + 12 * tile_px * (1 + n)  # one tile's input and per-detection float32 masks, 3 copies
    )
    print(f"huge image: {n} worms, NumPy peak {peak / 1e6:.0f} MB, bound {bound / 1e6:.0f} MB")
    assert peak <= bound, f"peak {peak / 1e6:.0f} MB > bound {bound / 1e6:.0f} MB"
    # and well below what holding every tile's full-size masks would take
    assert peak < len(tiles) * n * tile_px * 4


# --------------------------------------------------------------------- predict on real files


def _tiff_bytes(array, **kwargs) -> bytes:
    import io

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny.pt", "binary")


def _good_tiff() -> bytes:
    image, _ = toy_worms((64, 64), seed=5)
    return _tiff_bytes((image * 255).astype(np.uint8))


BAD_FILES = {
    "truncated.tif": (lambda: _good_tiff()[: len(_good_tiff()) // 2], r"read|truncat|corrupt"),
    "header-only.tif": (lambda: _good_tiff()[:8], r"empty|offset|corrupt"),
    "empty.tif": (lambda: b"", r"not a TIFF|empty"),
    "notes.tif": (lambda: b"hello, this is text\n", r"not a TIFF"),
    "garbage.tif": (lambda: np.random.default_rng(1).bytes(3000), r"not a TIFF"),
    "nan.tif": (lambda: _tiff_bytes(np.full((64, 64), np.nan, np.float32)), r"NaN.*replace"),
    "stack-4d.tif": (lambda: _tiff_bytes(np.zeros((2, 3, 64, 64), np.uint8)), r"2-D plane"),
    "one-pixel.tif": (lambda: _tiff_bytes(np.ones((1, 1), np.uint8)), r"at least 16"),
    "complex.tif": (lambda: _tiff_bytes(np.ones((64, 64), np.complex64)), r"real numeric"),
}


def _predict(tmp_path, model_file, *files):
    out = tmp_path / "out"
    code = main(["predict", *map(str, files), "--model", str(model_file), "--out", str(out)])
    return code, out


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_predict_refuses_bad_files_cleanly(tmp_path, model_file, capsys, name):
    make, words = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(make())
    code, out = _predict(tmp_path, model_file, path)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith("napari-semiconv predict: error:")
    assert __import__("re").search(words, err), err
    assert not out.exists() or list(out.iterdir()) == []


def test_predict_errors_name_the_file(tmp_path, model_file, capsys):
    unnamed = []
    for name, (make, _) in sorted(BAD_FILES.items()):
        path = tmp_path / name
        path.write_bytes(make())
        code, _ = _predict(tmp_path, model_file, path)
        if code != 2 or name not in capsys.readouterr().err:
            unnamed.append(name)
            break  # one is enough to show the bug; the rest would only cost time
    assert unnamed == []


def test_predict_refuses_a_corrupt_png(tmp_path, model_file, capsys):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    code, out = _predict(tmp_path, model_file, path)
    assert code == 2 and "broken.png" in capsys.readouterr().err


def test_predict_keeps_earlier_results_when_a_later_file_is_bad(tmp_path, model_file, capsys):
    good = tmp_path / "good.tif"
    good.write_bytes(_good_tiff())
    bad = tmp_path / "bad.tif"
    bad.write_bytes(_good_tiff()[:100])
    code, out = _predict(tmp_path, model_file, good, bad)
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "good_instances.tif",
        "good_labels.tif",
        "good_measurements.csv",
        "good_run.json",
    ]
    assert "good.tif" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "array", "kwargs"),
    [
        ("uint16", lambda im: (im * 3000 + 100).astype(np.uint16), {}),
        ("float16", lambda im: im.astype(np.float16), {}),
        ("int32", lambda im: (im * 70000).astype(np.int32), {}),
        ("rgb", lambda im: np.repeat((im * 255).astype(np.uint8)[..., None], 3, 2), {}),
        ("singleton-page", lambda im: (im * 255).astype(np.uint8)[None], {}),
        ("blank", lambda im: np.zeros_like(im, np.uint8), {}),
    ],
)
def test_predict_odd_tiffs_give_four_files(tmp_path, model_file, name, array, kwargs):
    image, _ = toy_worms((64, 64), seed=6)
    path = tmp_path / f"{name}.tif"
    tifffile.imwrite(path, array(image), **kwargs)
    code, out = _predict(tmp_path, model_file, path)
    assert code == 0
    instances = read_instances_tif(out / f"{name}_instances.tif")
    rows = read_measurements_csv(out / f"{name}_measurements.csv")
    assert instances.shape[1:] == (64, 64) and len(rows) == instances.shape[0]
    labels = tifffile.imread(out / f"{name}_labels.tif")
    assert labels.shape == (64, 64) and labels.max() <= instances.shape[0]
    if name == "blank":
        assert instances.shape[0] == 0 and not labels.any()
