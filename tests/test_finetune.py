"""core.finetune: checking annotated pairs, rectangles, output naming, the CLI equivalent, the loss
history, and a real (tiny) fine-tuning run with a time budget, without napari."""

from __future__ import annotations

import shlex

import numpy as np
import pytest
from toy_worms import tiny_model_config, toy_worms

from napari_semiconv.core.finetune import (
    AnnotatedPair,
    FineTuneSpec,
    LossHistory,
    build_train_config,
    check_folder,
    check_pair,
    check_spec,
    checkpoint_cadence,
    history_path,
    output_path,
    roi_from_points,
    safe_name,
    train_with_budget,
)
from napari_semiconv.core.measurements import labels_from_instances


def _pair(seed: int = 0, shape=(96, 96), name: str = "img") -> AnnotatedPair:
    image, masks = toy_worms(shape, n=3, seed=seed)
    return AnnotatedPair(image, labels_from_instances(masks), name, f"{name} labels")


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("SEMICONV_MODEL_DIR", str(folder))
    return folder


@pytest.fixture
def base_model(tmp_path):
    import torch

    from napari_semiconv.core.checkpoint import save_checkpoint
    from napari_semiconv.core.model.builder import build_model

    torch.manual_seed(0)
    model = build_model(tiny_model_config(input_mode="binary"))
    return save_checkpoint(tmp_path / "base.pt", model, {"name": "tiny base"})


# ---------------------------------------------------------------------------- bad input
def test_good_pair_gives_one_whole_image_crop():
    pair = _pair()
    crops = check_pair(pair)
    assert len(crops) == 1
    image, labels, roi = crops[0]
    assert roi is None and image.shape == labels.shape == (96, 96)
    assert labels.max() == 3


def test_shape_mismatch_is_refused():
    pair = _pair()
    pair.labels = pair.labels[:64]
    with pytest.raises(ValueError, match=r"is 96x96 but labels 'img labels' are 64x96"):
        check_pair(pair)


def test_empty_labels_are_refused():
    pair = _pair()
    pair.labels = np.zeros_like(pair.labels)
    with pytest.raises(ValueError, match="no labelled worm"):
        check_pair(pair)


def test_single_giant_object_is_refused_as_a_foreground_mask():
    pair = _pair()
    pair.labels = np.ones((96, 96), np.uint8)
    pair.labels[:20] = 0  # 79% covered by label 1
    with pytest.raises(ValueError, match=r"label 1 .* covers 79% .* foreground mask"):
        check_pair(pair)


def test_float_labels_stacks_tiny_images_and_negative_ids_are_refused():
    pair = _pair()
    pair.labels = pair.labels.astype(np.float32)
    with pytest.raises(TypeError, match="float32"):
        check_pair(pair)
    stack = _pair()
    stack.image = np.stack([stack.image] * 5)
    with pytest.raises(ValueError, match="2-D images"):
        check_pair(stack)
    tiny = AnnotatedPair(np.zeros((20, 20)), np.ones((20, 20), np.uint8), "a", "b")
    with pytest.raises(ValueError, match="under 32 px"):
        check_pair(tiny)
    scattered = AnnotatedPair(np.zeros((96, 96)), np.zeros((96, 96), np.uint16), "s", "dots")
    for k in range(5):  # five 5x5 blobs painted with one label, 3 % of the image
        scattered.labels[4 + 18 * k : 9 + 18 * k, 10:15] = 300
    with pytest.raises(ValueError, match="label 300 of 'dots' is in 5 separate pieces"):
        check_pair(scattered)
    scattered.labels[4 + 18 * 4 : 9 + 18 * 4, 10:15] = 7  # four pieces: a worm cut by crossings
    assert len(check_pair(scattered)) == 1
    mask = _pair()
    mask.labels = mask.labels > 0  # a foreground mask of 3 worms, 10 % of the image
    with pytest.raises(ValueError, match="yes/no mask, not one label per worm"):
        check_pair(mask)
    negative = _pair()
    negative.labels = negative.labels.astype(np.int32)
    negative.labels[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        check_pair(negative)


def test_rectangles_crop_and_are_checked():
    pair = _pair()
    assert roi_from_points([[-5.2, 10.4], [40.0, 70.6]], (96, 96)) == (0, 10, 40, 71)
    with pytest.raises(ValueError, match="outside"):
        roi_from_points([[200, 200], [300, 300]], (96, 96))
    with pytest.raises(ValueError, match="at least 32 px"):
        roi_from_points([[0, 0], [10, 50]], (96, 96))
    outside = [(-5, 0, 40, 40), (0, 0, 40, 120), (40, 40, 0, 90)]
    for bad, words in [((0, 0, 10, 10), "is 10x10 px")] + [(r, "lies outside") for r in outside]:
        pair.rois = [bad]
        with pytest.raises(ValueError, match=words):
            check_pair(pair)
    pair.rois = [(0, 0, 48, 64), (40, 40, 96, 96)]
    crops = check_pair(pair)
    assert [c[0].shape for c in crops] == [(48, 64), (56, 56)]
    assert np.array_equal(crops[1][1], pair.labels[40:, 40:])
    pair.labels = pair.labels.copy()
    pair.labels[40:, 40:] = 0
    with pytest.raises(
        ValueError, match=r"no labelled worm inside the rectangle \[40, 40, 96, 96\]"
    ):
        check_pair(pair)


def test_spec_without_pairs_or_with_bad_settings_is_refused(tmp_path, model_dir):
    with pytest.raises(ValueError, match="no training pairs"):
        check_spec(FineTuneSpec(base="m"))
    with pytest.raises(ValueError, match="not both"):
        check_spec(FineTuneSpec(base="m", pairs=[_pair()], folder=str(tmp_path)))
    with pytest.raises(ValueError, match="learning rate"):
        check_spec(FineTuneSpec(base="m", pairs=[_pair()], lr=0.0))
    with pytest.raises(ValueError, match="nothing to resume"):
        check_spec(FineTuneSpec(base="m", pairs=[_pair()], name="new", resume=True))
    bad_val = _pair()
    bad_val.labels = np.zeros_like(bad_val.labels)
    with pytest.raises(ValueError, match="no labelled worm"):
        check_spec(FineTuneSpec(base="m", pairs=[_pair()], val_pair=bad_val))
    with pytest.raises(ValueError, match="no images/ sub-folder"):
        check_folder(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "a.tif").write_bytes(b"x")
    (tmp_path / "labels" / "b.tif").write_bytes(b"x")
    with pytest.raises(ValueError, match="same name"):
        check_folder(tmp_path)


# ---------------------------------------------------------------------------- naming, records
def test_output_path_is_unique_in_the_user_model_folder(model_dir):
    spec = FineTuneSpec(base="/x/base-model.pt", pairs=[_pair()])
    first = output_path(spec)
    assert first == model_dir / "base-model-finetuned.pt"
    model_dir.mkdir()
    first.write_bytes(b"taken")
    assert output_path(spec) == model_dir / "base-model-finetuned-2.pt"
    # the widget shows the name taken; a run from it goes on to -3, not -2-2
    (model_dir / "base-model-finetuned-2.pt").write_bytes(b"taken")
    spec.name = "base-model-finetuned-2"
    assert output_path(spec) == model_dir / "base-model-finetuned-3.pt"
    for date in ("exp-20241105", "worms-2024-05-01", "worms-2024-05-12", "run-007"):
        spec.name = date  # a date or a number is part of the name
        (model_dir / f"{date}.pt").write_bytes(b"taken")
        assert output_path(spec) == model_dir / f"{date}-2.pt"
    spec.resume, spec.name = True, "base-model-finetuned"
    assert output_path(spec) == first
    assert safe_name("my worms / v2!") == "my-worms-v2"
    # a typed .pt is dropped (it gave v1.pt.pt, a name read as a path); a bundled model's name
    # is taken (that name loads the bundled model, never the user's)
    assert [safe_name(n) for n in ("v1.pt", "model.PTH", "v1.2")] == ["v1", "model", "v1.2"]
    spec.resume = False
    for name in ("worms-binary", "worms brightfield"):
        spec.name = name
        assert output_path(spec) == model_dir / f"{safe_name(name)}-2.pt"
    assert history_path(first).name == "base-model-finetuned.history.json"
    assert checkpoint_cadence(4) == 1 and checkpoint_cadence(1000) == 25
    assert checkpoint_cadence(1000, preview_every=10) == 10


def test_loss_history_round_trip_and_truncate(tmp_path):
    from napari_semiconv.core.training import TrainProgress

    history = LossHistory()
    assert not history.add(TrainProgress(0, 4, "train", message="start"))
    for step in (1, 2, 3):
        loss = {"loss": 1.0 / step, "loss_mask": 0.5 / step}
        assert history.add(TrainProgress(step, 4, "train", losses=loss))
    history.add(TrainProgress(3, 4, "val", metrics={"AP": np.float64(0.25), "APs": None}))
    path = history.save(tmp_path / "h.json")
    back = LossHistory.load(path)
    assert back == history and back.metrics == [{"step": 3, "AP": 0.25, "APs": None}]
    back.truncate(2)
    assert back.steps == [1, 2] and back.components["loss_mask"] == [0.5, 0.25]
    assert back.metrics == []
    assert LossHistory.load(tmp_path / "absent.json") == LossHistory()
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a loss history"):
        LossHistory.load(tmp_path / "bad.json")


# ---------------------------------------------------------------------------- a real run
def test_fine_tune_writes_model_card_data_and_stops_on_budget(model_dir, base_model):
    from napari_semiconv.cli.main import build_parser
    from napari_semiconv.core.checkpoint import load_checkpoint
    from napari_semiconv.core.model_store import list_models

    pair = _pair(0)
    pair.rois = [(0, 0, 80, 80)]
    spec = FineTuneSpec(
        base=str(base_model),
        pairs=[pair, _pair(1, name="second")],
        val_pair=_pair(2, name="val"),
        name="my worms",
        iterations=3,
        minutes=0.5,
        crop=64,
        device="cpu",
        preview_every=1,
    )
    config = build_train_config(spec)
    out = model_dir / "my-worms.pt"
    assert config.out == str(out) and config.checkpoint_every == 1 and config.eval_every == 1
    assert config.train_heads_only and len(config.samples) == 2 and len(config.val_samples) == 1
    assert config.samples[0].image.shape == (80, 80)
    data = model_dir / "my-worms.data"
    assert sorted(p.name for p in (data / "labels").iterdir()) == [
        "pair01-1_img.tif",
        "pair02-1_second.tif",
    ]
    # the card's command is a valid `napari-semiconv train` invocation of the same recipe
    argv = shlex.split(config.card["command"])
    args = build_parser().parse_args(argv[1:])
    # into a file beside the model: its own name is the model's (the command failed on it)
    repeat = model_dir / "my-worms-repeat.pt"
    assert (args.layout, args.data, args.out) == ("folders", str(data), str(repeat))
    assert (args.iterations, args.crop, args.heads_only) == (3, 64, True)
    assert args.base == str(base_model)

    now = [0.0]  # a fake clock: the 30 s deadline passes during the first step
    events = []
    for event in train_with_budget(config, minutes=0.5, clock=lambda: now[0]):
        events.append(event)
        if event.phase == "train" and event.losses:
            now[0] = 100.0
    done = events[-1]
    assert done.phase == "done" and "time budget" in done.message
    assert done.iteration == 1 < config.iterations
    card = load_checkpoint(out).card
    assert card["base_model"] == str(base_model)
    assert card["training_pairs"][0] == {
        "image": "img",
        "labels": "img labels",
        "shape": [96, 96],
        "rectangles": [[0, 0, 80, 80]],
        "n_worms": int(np.unique(pair.labels[:80, :80][pair.labels[:80, :80] > 0]).size),
    }
    assert card["validation_pair"]["image"] == "val" and "AP" in card["metrics"]
    assert card["step"] == 1 and card["command"] == config.card["command"]
    assert "my-worms" in [m["name"] for m in list_models()]
    # the command runs as written, beside the model it repeats
    from napari_semiconv.cli.main import main

    assert main(argv[1:]) == 0 and load_checkpoint(repeat).card["step"] == 3

    # resume continues the same file to the end of the schedule
    spec.resume, spec.minutes = True, 0.0
    resumed = build_train_config(spec)
    assert resumed.out == str(out) and resumed.resume
    last = list(train_with_budget(resumed))
    assert last[0].iteration == 1 and last[-1].phase == "done"
    assert load_checkpoint(out).card["step"] == 3


def test_a_rectangle_is_normalised_with_its_whole_image(tmp_path, model_dir):
    # bright-field percentiles of a worm-filled rectangle differ from the image's: the crop is
    # cut from the image normalised as a whole, as segment() sees it, and saved that way
    import torch

    from napari_semiconv.core.checkpoint import save_checkpoint
    from napari_semiconv.core.data.folders import read_folders
    from napari_semiconv.core.model.builder import build_model
    from napari_semiconv.core.preprocess import normalise
    from napari_semiconv.core.synthetic.worms import synthetic_worms

    torch.manual_seed(0)
    base = save_checkpoint(
        tmp_path / "bf.pt", build_model(tiny_model_config(input_mode="brightfield")), {}
    )
    image, masks = synthetic_worms(seed=2, shape=(160, 200), render="brightfield")
    labels = labels_from_instances(masks)
    rows, cols = np.nonzero(labels)
    r0, c0 = max(0, int(rows.mean()) - 24), max(0, int(cols.mean()) - 24)
    roi = (r0, c0, r0 + 48, c0 + 48)
    pair = AnnotatedPair(image, labels, "well", "well labels", rois=[roi])
    spec = FineTuneSpec(base=str(base), pairs=[pair], name="bf", iterations=2, device="cpu")
    config = build_train_config(spec)
    (sample,) = config.samples
    whole = normalise(image, "brightfield")[r0 : r0 + 48, c0 : c0 + 48]
    np.testing.assert_array_equal(sample.image, whole)
    alone = normalise(image[r0 : r0 + 48, c0 : c0 + 48], "brightfield")
    assert np.abs(alone - whole).max() > 0.05  # what the crop alone would have given
    # the saved crop (the card's CLI command trains on it) reads back as the same sample
    (again,) = read_folders(config.data_root, "brightfield")
    np.testing.assert_array_equal(again.image, sample.image)
    np.testing.assert_array_equal(again.masks, sample.masks)
    with pytest.raises(ValueError, match="saved normalised for 'brightfield'"):
        read_folders(config.data_root, "binary")


def test_folder_training_data_is_read_and_checked(tmp_path, model_dir, base_model):
    from napari_semiconv.core.export import write_label_image

    folder = tmp_path / "data"
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
    for seed in (0, 1):
        pair = _pair(seed)
        write_label_image(folder / "images" / f"w{seed}.tif", (pair.image * 255).astype(np.uint8))
        write_label_image(folder / "labels" / f"w{seed}_labels.tif", pair.labels)
    assert check_folder(folder) == ["w0", "w1"]
    spec = FineTuneSpec(base=str(base_model), folder=str(folder), iterations=5, crop=64)
    config = build_train_config(spec)
    assert [s.name for s in config.samples] == ["w0", "w1"] and config.data_root == str(folder)
    assert config.card["training_folder"] == str(folder)
    assert f"--data {folder}" in config.card["command"]
    assert not (model_dir / "tiny-base-finetuned.data").exists()  # a folder is used in place

    giant = np.zeros((96, 96), np.uint8)
    giant[:80] = 1
    write_label_image(folder / "labels" / "w1_labels.tif", giant, overwrite=True)
    with pytest.raises(ValueError, match="w1.*covers 83%.*foreground mask"):
        build_train_config(spec)
