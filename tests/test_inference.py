"""Inference: load_model, segment (2-D, RGB, tiled, blank, bad input), Instances, tiling merge."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from toy_worms import run_steps, tiny_model_config, toy_worms

from napari_semiconv.core import model_store
from napari_semiconv.core.checkpoint import CheckpointError, save_checkpoint
from napari_semiconv.core.inference import (
    Instances,
    list_models,
    load_model,
    native_scale,
    run_info,
    segment,
    segment_batch,
    segment_steps,
)
from napari_semiconv.core.model.builder import build_model
from napari_semiconv.core.tiling import Candidate, merge_candidates, tile_grid


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    save_checkpoint(path, model, {"name": "tiny", "input_mode": "binary"})
    return path


@pytest.fixture(scope="module")
def model(model_path):
    return load_model(model_path, device="cpu")


def _check_instances(inst: Instances, shape: tuple[int, int]) -> None:
    n = len(inst)
    assert inst.masks.shape == (n, *shape) and inst.masks.dtype == bool
    assert inst.scores.shape == (n,) and inst.scores.dtype == np.float32
    assert inst.displacement.shape == (2, *shape) and inst.displacement.dtype == np.float32
    assert np.isfinite(inst.displacement).all()
    assert np.all(np.diff(inst.scores) <= 0), "scores must be decreasing"
    assert all(m.any() for m in inst.masks), "no empty masks"
    labels = inst.labels()
    assert labels.shape == shape and labels.dtype == np.uint16
    assert labels.max() <= n
    if n:
        # the best-scoring worm wins every pixel it covers
        assert np.all(labels[inst.masks[0]] == 1)


def test_load_model_from_path(model, model_path):
    assert not model.training
    assert model.config.input_mode == "binary"
    assert model.card["name"] == "tiny"
    assert model.source["path"] == str(model_path.resolve())
    assert len(model.source["sha256"]) == 64


def test_native_scale_keeps_the_pixel_size(model):
    image = torch.zeros(1, 70, 90)
    with native_scale(model):
        with native_scale(model):  # nested use is harmless
            pass
        batch, _ = model.transform([image])
        assert batch.image_sizes == [(70, 90)]
    assert "resize" not in vars(model.transform)
    batch, _ = model.transform([image])
    assert batch.image_sizes != [(70, 90)]  # torchvision would rescale to min_size=128


def test_segment_grey_and_rgb_agree(model):
    image, _ = toy_worms((112, 112), seed=1)
    grey = segment(model, image, score_threshold=0.0, mask_threshold=0.1)
    _check_instances(grey, (112, 112))
    assert len(grey) > 0  # an untrained detector still proposes boxes at threshold 0
    rgb = np.repeat((image * 255).astype(np.uint8)[..., None], 3, axis=2)
    colour = segment(model, rgb, score_threshold=0.0, mask_threshold=0.1)
    np.testing.assert_array_equal(colour.masks, grey.masks)
    np.testing.assert_array_equal(colour.scores, grey.scores)


def test_a_label_image_is_read_as_labels_like_the_training_data(model):
    # worms with ids 1..n: every id is foreground for a binary-input model, as in training
    # (core.data.arrays), not only the ids above half the largest
    from napari_semiconv.core.measurements import labels_from_instances

    _, masks = toy_worms((112, 112), n=4, seed=1)
    labels = labels_from_instances(masks).astype(np.uint16)
    assert labels.max() >= 3
    from_labels = segment(model, labels, score_threshold=0.0, mask_threshold=0.1)
    from_mask = segment(model, labels > 0, score_threshold=0.0, mask_threshold=0.1)
    assert len(from_mask) > 0
    np.testing.assert_array_equal(from_labels.masks, from_mask.masks)
    (batched,) = segment_batch(model, [labels], score_threshold=0.0, mask_threshold=0.1)
    np.testing.assert_array_equal(batched.masks, from_mask.masks)


def test_segment_tiles_a_large_image(model):
    image, _ = toy_worms((200, 230), n=6, seed=2)
    steps = segment_steps(
        model, image, score_threshold=0.0, mask_threshold=0.1, tile_size=96, overlap=24
    )
    events, inst = run_steps(steps)
    n_tiles = len(tile_grid(200, 230, 96, 24))
    assert n_tiles == 9
    assert events[0].done == 0 and events[-1].done == events[-1].total == n_tiles
    assert [e.message for e in events[1 : n_tiles + 1]] == [
        f"tile {k}/{n_tiles}" for k in range(1, n_tiles + 1)
    ]
    _check_instances(inst, (200, 230))
    assert len(inst) > 0


def test_a_tile_at_the_models_worm_limit_is_reported(model):
    # the detector keeps at most detections_per_img worms per tile (20 for this tiny model, 100
    # for the bundled ones): a dense plate lost the rest without a word
    image, _ = toy_worms((200, 230), n=6, seed=2)
    with pytest.warns(RuntimeWarning, match="limit per tile.*smaller tiles"):
        steps = segment_steps(model, image, score_threshold=0.0, tile_size=96, overlap=24)
        events, _ = run_steps(steps)
    assert any("limit per tile" in e.message and e.warning for e in events)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # under the limit: no warning
        segment(model, image, score_threshold=0.999, tile_size=96, overlap=24)


def test_segment_can_be_cancelled(model):
    image, _ = toy_worms((200, 200), seed=3)
    steps = segment_steps(model, image, tile_size=96, overlap=24)
    first = next(steps)
    assert first.done == 0
    steps.close()  # the caller stops iterating: nothing more runs
    assert model.training is False


def test_blank_image_gives_no_worms(model):
    for blank in (np.zeros((100, 120), np.uint8), np.full((100, 120, 3), 200, np.uint8)):
        inst = segment(model, blank, score_threshold=0.0, mask_threshold=0.1)
        assert len(inst) == 0
        assert inst.masks.shape == (0, 100, 120)
        assert not inst.labels().any()


@pytest.mark.parametrize(
    ("image", "error", "words"),
    [
        ("not an image", TypeError, "numpy array"),
        (np.zeros(50), ValueError, "2-D"),
        (np.zeros((4, 40, 40, 3)), ValueError, "2-D"),
        (np.zeros((5, 40, 40)), ValueError, "plane"),
        (np.zeros((8, 8)), ValueError, "too small"),
        (np.array([["a", "b"], ["c", "d"]]), TypeError, "numbers"),
    ],
)
def test_bad_images_raise_clearly(model, image, error, words):
    with pytest.raises(error, match=words):
        segment(model, image)


def test_nan_image_is_refused(model):
    image = np.ones((64, 64), np.float32)
    image[3, 4] = np.nan
    with pytest.raises(ValueError):
        segment(model, image)


def test_bad_thresholds_raise(model):
    image, _ = toy_worms((64, 64))
    with pytest.raises(ValueError, match="score_threshold"):
        segment(model, image, score_threshold=1.5)


def test_non_checkpoint_files_are_refused_without_running_code(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt"):
        load_model(text, device="cpu")
    bare = tmp_path / "bare.pt"
    torch.save({"weight": torch.zeros(3)}, bare)
    with pytest.raises(CheckpointError, match="not a napari-semiconv checkpoint"):
        load_model(bare, device="cpu")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(CheckpointError):
        load_model(hostile, device="cpu")
    assert not marker.exists(), "loading must never run code from the file"


def test_unknown_and_uninstalled_models(tmp_path, monkeypatch, model_path):
    monkeypatch.setenv("SEMICONV_MODEL_DIR", str(tmp_path / "user"))
    with pytest.raises(FileNotFoundError, match="no model 'nope'"):
        load_model("nope")
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    (bundled / "registry.json").write_text(
        json.dumps({"worms-r18": {"file": "worms-r18.pt", "sha256": "0" * 64}})
    )
    monkeypatch.setattr(model_store, "BUNDLED_DIR", bundled)
    with pytest.raises(FileNotFoundError, match="bundled model 'worms-r18' is not installed"):
        load_model("worms-r18")
    # installed but not the file the registry describes: the sha256 check refuses it
    (bundled / "worms-r18.pt").write_bytes(model_path.read_bytes())
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_model("worms-r18")


def test_list_models_and_user_models(tmp_path, monkeypatch, model_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "mine.pt").write_bytes(model_path.read_bytes())
    (user / "broken.pt").write_text("not a model")
    monkeypatch.setenv("SEMICONV_MODEL_DIR", str(user))
    rows = {row["name"]: row for row in list_models()}
    assert rows["mine"]["kind"] == "user" and rows["mine"]["card"]["name"] == "tiny"
    assert "error" in rows["broken"]
    model = load_model("mine", device="cpu")
    assert model.source["kind"] == "user"


def test_run_info_records_what_replays_a_run(model):
    info = run_info(model, {"score_threshold": 0.4}, "cpu")
    assert info["model"]["sha256"] == model.source["sha256"]
    assert info["settings"] == {"score_threshold": 0.4}
    assert info["device"] == "cpu"
    assert {"napari_semiconv", "torch", "torchvision"} <= set(info["versions"])
    json.dumps(info)  # JSON-serialisable as is


# --- tiling, without a network -------------------------------------------------------------


def test_tile_cores_partition_the_image():
    for shape, tile, overlap in [((200, 230), 96, 24), ((1000, 300), 256, 64), ((50, 60), 96, 0)]:
        cover = np.zeros(shape, int)
        for t in tile_grid(*shape, tile, overlap):
            assert t.y1 - t.y0 <= tile and t.x1 - t.x0 <= tile
            assert t.y0 <= t.cy0 < t.cy1 <= t.y1 and t.x0 <= t.cx0 < t.cx1 <= t.x1
            cover[t.cy0 : t.cy1, t.cx0 : t.cx1] += 1
        assert (cover == 1).all()
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(500, 500, 96, 60)


def _piece(tile: int, full: np.ndarray, window: tuple[int, int, int, int], score: float):
    """The part of ``full`` a tile sees, as a Candidate cropped to its box."""
    y0, y1, x0, x1 = window
    part = np.zeros_like(full)
    part[y0:y1, x0:x1] = full[y0:y1, x0:x1]
    rows, cols = np.nonzero(part.any(1))[0], np.nonzero(part.any(0))[0]
    crop = part[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return Candidate(tile, int(rows[0]), int(cols[0]), crop, score)


def test_merge_reassembles_a_worm_cut_by_tiles_and_keeps_crossing_worms():
    h, w = 100, 180
    tiles = tile_grid(h, w, 100, 20)
    assert len(tiles) == 2
    long_worm = np.zeros((h, w), bool)
    long_worm[40:46, 10:170] = True  # longer than a tile: both tiles see a piece
    crossing = np.zeros((h, w), bool)
    crossing[10:90, 30:36] = True  # crosses the long worm inside tile 0 only
    windows = [(t.y0, t.y1, t.x0, t.x1) for t in tiles]
    candidates = [
        _piece(0, long_worm, windows[0], 0.9),
        _piece(0, crossing, windows[0], 0.8),
        _piece(1, long_worm, windows[1], 0.7),
    ]
    masks, scores = merge_candidates(candidates, tiles, h, w)
    assert masks.shape == (2, h, w)
    np.testing.assert_array_equal(masks[0], long_worm)
    np.testing.assert_array_equal(masks[1], crossing)
    np.testing.assert_allclose(scores, [0.9, 0.8])


def _seen_by_each(tiles, *seen: tuple[np.ndarray, float]) -> list[Candidate]:
    """Tile k's candidate: the k-th (mask, score) cut to tile k's window."""
    return [
        _piece(k, mask, (t.y0, t.y1, t.x0, t.x1), score)
        for k, (t, (mask, score)) in enumerate(zip(tiles, seen, strict=True))
    ]


def test_a_sliver_at_a_tile_edge_does_not_become_a_worm():
    # tile 0 holds a short worm whole, inside the overlap; tile 1 sees only its end at its left
    # edge, spilling a little past it: the sliver lies outside tile 1's core and is dropped
    h, w = 100, 180
    tiles = tile_grid(h, w, 100, 20)
    left, right = tiles
    assert right.x0 < right.cx0 <= left.x1
    worm = np.zeros((h, w), bool)
    worm[40:46, right.x0 - 30 : right.cx0 - 2] = True  # ends short of tile 1's core
    sliver = np.zeros((h, w), bool)
    sliver[39:47, right.x0 : right.x0 + 4] = True  # wider than the worm there: IoU is low
    candidates = _seen_by_each(tiles, (worm, 0.95), (sliver, 0.997))
    masks, scores = merge_candidates(candidates, tiles, h, w)
    assert masks.shape == (1, h, w)
    np.testing.assert_array_equal(masks[0], worm)
    # a piece that reaches its own core is kept (a worm entering tile 1)
    entering = np.zeros((h, w), bool)
    entering[70:76, right.x0 : right.cx0 + 10] = True
    candidates.append(_piece(1, entering, (right.y0, right.y1, right.x0, right.x1), 0.6))
    masks, _ = merge_candidates(candidates, tiles, h, w)
    assert len(masks) == 2


def test_each_tiles_core_decides_the_pixels_of_a_merged_worm():
    # tile 1 sees the worm near its left edge and spills past it there (little context); in
    # tile 0's core tile 0's piece decides, so the spill goes; in tile 1's core tile 1's does
    h, w = 100, 180
    tiles = tile_grid(h, w, 100, 20)
    left, right = tiles
    worm = np.zeros((h, w), bool)
    worm[40:46, 10:170] = True
    spilled = worm.copy()
    spilled[36:50, right.x0 : right.x0 + 6] = True  # a blob at tile 1's edge, in tile 0's core
    candidates = _seen_by_each(tiles, (worm, 0.9), (spilled, 0.8))
    masks, scores = merge_candidates(candidates, tiles, h, w)
    assert masks.shape == (1, h, w)
    np.testing.assert_array_equal(masks[0], worm)
    assert scores[0] == pytest.approx(0.9)


def test_a_tiles_duplicate_never_chains_two_worms_into_one():
    # Tile 0 finds worm 1, and also, at a lower score, a candidate spanning worm 1 and part of
    # worm 2 beside it (as a detector's duplicates do); tile 1 sees worm 1's other end. Both of
    # tile 0's candidates agree with tile 1's piece in the overlap, and the chain made one "worm"
    # of worm 1 and the duplicate's share of worm 2.
    h, w = 100, 180
    tiles = tile_grid(h, w, 100, 20)
    windows = [(t.y0, t.y1, t.x0, t.x1) for t in tiles]
    worm = np.zeros((h, w), bool)
    worm[40:46, 10:170] = True
    beside = np.zeros((h, w), bool)
    beside[47:53, 30:95] = True  # worm 2, inside tile 0, ending in the overlap
    spanning = worm.copy()
    spanning[46:53, 30:95] = True  # worm 1 and most of worm 2, bridged
    candidates = [
        _piece(0, worm, windows[0], 0.9),
        _piece(0, beside, windows[0], 0.85),
        _piece(0, spanning, windows[0], 0.5),
        _piece(1, worm, windows[1], 0.8),
    ]
    masks, scores = merge_candidates(candidates, tiles, h, w)
    np.testing.assert_array_equal(masks[0], worm)  # worm 1 whole, nothing of worm 2
    np.testing.assert_allclose(scores, [0.9, 0.85, 0.5])  # the duplicate is left to the NMS
    np.testing.assert_array_equal(masks[1], beside)


def test_merging_recovers_every_worm_from_perfect_tiles():
    """With a perfect detector (each tile sees the true worms cut to its window), merging the
    tiles gives back exactly the true worms: one instance per worm, nothing split or fused."""
    from napari_semiconv.core.evaluation import iou_matrix
    from napari_semiconv.core.synthetic.worms import synthetic_worms

    truths = []
    for r in range(2):
        for c in range(2):
            _, masks = synthetic_worms(seed=50 + 2 * r + c, shape=(260, 348), render="binary")
            for mask in masks:
                full = np.zeros((520, 696), bool)
                full[r * 260 : (r + 1) * 260, c * 348 : (c + 1) * 348] = mask
                truths.append(full)
    truths = np.stack(truths)
    tiles = tile_grid(520, 696, 160, 40)
    assert len(tiles) > 12
    candidates = [
        _piece(i, truth, (t.y0, t.y1, t.x0, t.x1), 1.0 - 0.01 * k)
        for i, t in enumerate(tiles)
        for k, truth in enumerate(truths)
        if truth[t.y0 : t.y1, t.x0 : t.x1].any()
    ]
    assert len(candidates) > len(truths)  # worms really are cut by the tiles
    masks, _ = merge_candidates(candidates, tiles, 520, 696)
    assert len(masks) == len(truths)
    assert (iou_matrix(masks, truths).max(axis=1) > 0.999).all()


def test_rescale_segments_a_resized_image_and_returns_worms_at_the_images_size(model):
    from napari_semiconv.core.rescale import instances_at_size, rescaled_input

    image, _ = toy_worms((120, 140), n=4, seed=3)
    found = segment(model, image, score_threshold=0.0, mask_threshold=0.1, rescale=0.5)
    _check_instances(found, (120, 140))  # masks, Φ and foreground at the image's own size
    assert found.displacement.shape == (2, 120, 140)
    # the pieces: the input is resized (and stays 0/1 for a binary model) ...
    small = rescaled_input(np.asarray(image, np.float32), 0.5, "binary")
    assert small.shape == (60, 70) and set(np.unique(small)) <= {0.0, 1.0}
    # ... and worms, Φ (pixels of the resized image) and the foreground come back
    mask = np.zeros((1, 60, 70), bool)
    mask[0, 10:20, 20:50] = True
    phi = np.full((2, 60, 70), 3.0, np.float32)
    small_found = Instances(mask, np.array([0.9]), phi, np.ones((60, 70)))
    back = instances_at_size(small_found, (120, 140), 0.5)
    expected = np.zeros((120, 140), bool)
    expected[20:40, 40:100] = True
    np.testing.assert_array_equal(back.masks[0], expected)
    np.testing.assert_allclose(back.displacement, 6.0)
    assert back.foreground.shape == (120, 140)


@pytest.mark.parametrize("bad", [0.0, -1.0, 20.0, float("nan"), "2", True])
def test_a_bad_rescale_is_refused_before_any_work(model, bad):
    image, _ = toy_worms((64, 64), n=2, seed=1)
    steps = segment_steps(model, image, rescale=bad)
    with pytest.raises(ValueError, match="rescale must be"):
        next(steps)


def test_one_model_serves_threads_with_different_settings_alike(model):
    # the score threshold was an attribute set and restored around each call: two threads at
    # 0.9 and 0.2 lost worms, and the model stayed at 0.9 for every later call
    import threading

    images = [toy_worms((112, 112), n=4, seed=s)[0] for s in (1, 2)]
    own = model.roi_heads.score_thresh
    scores = segment(model, images[0], score_threshold=0.0, mask_threshold=0.1).scores
    high = float(np.median(scores))  # a threshold that keeps about half of them
    settings = [dict(score_threshold=high), dict(score_threshold=0.0)]
    expected = [
        [len(segment(model, im, mask_threshold=0.1, **kw)) for im in images] for kw in settings
    ]
    assert expected[0] != expected[1]
    got: list[list[list[int]]] = [[], []]
    start = threading.Barrier(2)

    def work(k: int) -> None:
        start.wait()
        for _ in range(4):
            got[k].append(
                [len(segment(model, im, mask_threshold=0.1, **settings[k])) for im in images]
            )

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [[expected[0]] * 4, [expected[1]] * 4]
    assert model.roi_heads.score_thresh == own  # left as loaded
    assert "resize" not in vars(model.transform)  # the native scale restored by the last run


def test_a_foreground_cut_holds_for_its_own_thread_only():
    import threading

    from napari_semiconv.core.model.run_modes import active_foreground_threshold, foreground_cut

    cascade = build_model(tiny_model_config(input_mode="brightfield", foreground_width=4))
    own = cascade.config.foreground_threshold
    seen: list[float] = []
    inside, done = threading.Event(), threading.Event()

    def other() -> None:
        inside.wait()
        seen.append(active_foreground_threshold(cascade.config))
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with foreground_cut(cascade, 0.8):
        assert active_foreground_threshold(cascade.config) == 0.8
        inside.set()
        done.wait()
    thread.join()
    assert seen == [own] and cascade.config.foreground_threshold == own
    assert active_foreground_threshold(cascade.config) == own


def test_segment_warns_once_at_the_callers_line_and_views_keep_the_warning(model):
    # the warnings pointed into the library (core/detections.py), and with views > 1 the tile
    # limit's progress step lost its warning flag, so the widget never showed it
    image, _ = toy_worms((200, 230), n=6, seed=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        segment(model, image, score_threshold=0.0, tile_size=96, overlap=24, views=2)
    limit = [w for w in caught if "limit per tile" in str(w.message)]
    assert len(limit) == 1 and limit[0].filename == __file__
    steps = segment_steps(model, image, score_threshold=0.0, tile_size=96, overlap=24, views=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        events, _ = run_steps(steps)
    flagged = [e for e in events if e.warning]
    assert any(e.message.startswith("a tile held") for e in flagged)
    assert not any(e.message.startswith("view") for e in flagged)


def test_a_bad_overlap_is_refused_on_an_image_too_small_to_tile(model):
    image, _ = toy_worms((112, 112), seed=1)
    for overlap in (-5, 600):
        with pytest.raises(ValueError, match="overlap must be"):
            segment(model, image, tile_size=512, overlap=overlap)
    with pytest.raises(ValueError, match="overlap must be 0 or more"):
        segment(model, image, overlap=-1)


def test_the_package_lists_its_lazy_names():
    import napari_semiconv as ns

    assert {"segment", "load_model", "Instances", "__version__"} <= set(dir(ns))
