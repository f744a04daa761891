"""core.data: the Sample record, the readers (BBBC010, folders, arrays), augmentation, dataset."""

import re
import warnings

import numpy as np
import pytest
import tifffile
import torch

from napari_semiconv.core.data.arrays import labels_to_masks, sample_from_arrays
from napari_semiconv.core.data.augment import augment
from napari_semiconv.core.data.bbbc010 import (
    list_wells,
    read_bbbc010,
    read_foreground,
    read_w2,
)
from napari_semiconv.core.data.dataset import (
    WormDataset,
    collate,
    kfold_wells,
    masks_to_boxes,
    to_target,
)
from napari_semiconv.core.data.folders import read_folders
from napari_semiconv.core.data.sample import Sample


def _toy(h=48, w=64, binary=True):
    """Three worms as bars (two of them crossing), image = their union (or a dark-worm image)."""
    masks = np.zeros((3, h, w), bool)
    masks[0, 10:14, 5:40] = True
    masks[1, 5:40, 20:24] = True  # crosses worm 0
    masks[2, 30:34, 40:60] = True
    union = masks.any(axis=0)
    image = union.astype(np.float32) if binary else (0.8 - 0.6 * union).astype(np.float32)
    return Sample(image, masks, "toy")


# --- Sample -------------------------------------------------------------------------------------


def test_sample_converts_and_validates():
    s = Sample(np.ones((4, 5), np.uint8), np.zeros((2, 4, 5), np.uint8), "a")
    assert s.image.dtype == np.float32 and s.masks.dtype == bool and s.n_worms == 2
    assert Sample(np.ones((4, 5)), np.zeros((0, 4, 5), bool), "empty").n_worms == 0
    with pytest.raises(ValueError, match="masks must be"):
        Sample(np.ones((4, 5)), np.zeros((2, 5, 4), bool), "b")
    with pytest.raises(ValueError, match="boolean"):
        Sample(np.ones((4, 5)), np.full((1, 4, 5), 2), "c")
    with pytest.raises(ValueError, match="2-D"):
        Sample(np.ones((3, 4, 5)), np.zeros((1, 4, 5), bool), "d")
    bad = np.ones((4, 5))
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="1 NaN"):
        Sample(bad, np.zeros((1, 4, 5), bool), "e")


# --- arrays -------------------------------------------------------------------------------------


def test_label_image_becomes_one_mask_per_id():
    labels = np.zeros((6, 6), np.int32)
    labels[0, :2], labels[3, 3:], labels[5, 0] = 7, 2, 30
    masks = labels_to_masks(labels)
    assert masks.shape == (3, 6, 6)
    np.testing.assert_array_equal(masks.sum(axis=(1, 2)), [3, 2, 1])  # ids 2, 7, 30 in order
    assert masks[0, 3, 3] and masks[1, 0, 0] and masks[2, 5, 0]


def test_labels_saved_with_a_leading_axis_colour_or_as_a_stack_of_label_images():
    # a 1×H×W label TIFF was read as a one-slice stack: its 15 ids became one "worm" (and the
    # message spoke of a label in 11 pieces); an RGB label PNG "did not match the image"
    labels = np.zeros((6, 6), np.int32)
    labels[0, :2], labels[3, 3:], labels[5, 0] = 7, 2, 30
    np.testing.assert_array_equal(labels_to_masks(labels[None], (6, 6)), labels_to_masks(labels))
    colour = np.repeat(labels[..., None], 3, axis=2).astype(np.uint8)
    with pytest.raises(ValueError, match="colour .RGB/RGBA. image, not a label image"):
        labels_to_masks(colour, (6, 6))
    with pytest.raises(ValueError, match="slice 1 of the N×H×W labels holds 3 different ids"):
        labels_to_masks(np.stack([labels > 0, labels]).astype(np.int32), (6, 6))


def test_instance_stack_keeps_overlaps_and_drops_empty_slices():
    toy = _toy()
    stack = np.concatenate([toy.masks, np.zeros((1, 48, 64), bool)]).astype(np.uint8) * 255
    sample = sample_from_arrays(toy.image * 255, stack, "binary", "stack")
    assert sample.masks.shape == (3, 48, 64)
    assert (sample.masks.sum(axis=0) == 2).any()  # the crossing survives
    np.testing.assert_array_equal(sample.image, toy.image)


def test_sample_from_arrays_accepts_rgb_and_normalises_brightfield():
    rgb = np.zeros((10, 12, 3), np.uint16)
    rgb[...] = np.arange(12)[None, :, None] * 100
    labels = np.zeros((10, 12), np.uint8)
    labels[2:5, 2:5] = 1
    sample = sample_from_arrays(rgb, labels, "brightfield", name="rgb")
    assert sample.image.shape == (10, 12) and sample.name == "rgb"
    assert sample.image.min() == 0.0 and sample.image.max() == 1.0


@pytest.mark.parametrize(
    "labels, words",
    [
        (np.zeros((8, 9), np.uint8), "do not match"),
        (np.zeros((8, 8), np.uint8), "empty"),
        (np.zeros((2, 8, 8), np.uint8), "empty"),
        (np.ones((8, 8), bool), "boolean mask"),
        (np.full((8, 8), 1.5), "integer ids"),
        (-np.ones((8, 8), np.int16), "negative"),
        (np.ones((1, 1, 8, 8), np.uint8), "2-D label image or an N×H×W"),
    ],
)
def test_bad_labels_are_rejected(labels, words):
    with pytest.raises(ValueError, match=words):
        sample_from_arrays(np.ones((8, 8)), labels, "binary", "bad")


# --- folders ------------------------------------------------------------------------------------


def _write_folders(root, toy):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    label_image = np.zeros(toy.image.shape, np.uint16)
    for i, m in enumerate(toy.masks, start=1):
        label_image[m] = i
    tifffile.imwrite(root / "images" / "a.tif", (toy.image * 3000).astype(np.uint16))
    tifffile.imwrite(root / "labels" / "a.tif", label_image)
    import imageio.v3 as iio

    iio.imwrite(root / "images" / "b.png", (toy.image * 255).astype(np.uint8))
    tifffile.imwrite(root / "labels" / "b_labels.tif", label_image)  # loses the crossing
    tifffile.imwrite(root / "labels" / "b_instances.tif", toy.masks.astype(np.uint8))  # keeps it
    tifffile.imwrite(root / "images" / "c.tif", np.zeros((8, 8), np.uint8))  # no labels


def test_read_folders_matches_by_stem_and_prefers_instance_stacks(tmp_path):
    toy = _toy()
    _write_folders(tmp_path, toy)
    with pytest.warns(UserWarning, match="no label file of the same name in labels/: c.tif"):
        samples = read_folders(tmp_path, "binary")
    assert [s.name for s in samples] == ["a", "b"]
    for s in samples:
        np.testing.assert_array_equal(s.image, toy.image)
        assert s.masks.shape == (3, 48, 64)
    assert not (samples[0].masks.sum(axis=0) >= 2).any()  # a label image cannot overlap
    np.testing.assert_array_equal(samples[1].masks, toy.masks)  # the stack keeps the crossing


def test_read_folders_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="images"):
        read_folders(tmp_path, "binary")
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "images" / "x.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "labels" / "x.tif", np.ones((9, 9), np.uint8))
    with pytest.raises(ValueError, match=r"x.tif / x.tif: .*do not match"):
        read_folders(tmp_path, "binary")
    with pytest.raises(ValueError, match="input_mode"):
        read_folders(tmp_path, "phase")


# --- BBBC010 ------------------------------------------------------------------------------------


def test_read_bbbc010_binary_is_the_union_of_the_worm_masks(bbbc010_root):
    samples = read_bbbc010(bbbc010_root, "binary", wells=["B02", "a01"])
    assert [s.name for s in samples] == ["B02", "A01"]
    for s in samples:
        assert s.image.shape == (520, 696) and s.masks.shape[1:] == (520, 696)
        assert 11 <= len(s.masks) <= 15
        np.testing.assert_array_equal(s.image, s.masks.any(axis=0))
    assert len(list_wells(bbbc010_root)) == 50


def test_read_bbbc010_brightfield_is_normalised_w2(bbbc010_root):
    (s,) = read_bbbc010(bbbc010_root, "brightfield", wells=["A01"])
    raw = read_w2(bbbc010_root, "A01")
    assert raw.dtype == np.uint16 and raw.shape == s.image.shape
    assert s.image.dtype == np.float32 and s.image.min() == 0.0 and s.image.max() == 1.0
    lo, hi = np.percentile(raw, (1, 99.8))
    np.testing.assert_allclose(s.image[260, 350], np.clip((raw[260, 350] - lo) / (hi - lo), 0, 1))


def test_bbbc010_masks_align_with_w2_and_foreground_is_one_row_low(bbbc010_root):
    (s,) = read_bbbc010(bbbc010_root, "binary", wells=["A05"])
    union = s.masks.any(axis=0)
    raw = read_w2(bbbc010_root, "A05").astype(np.float64)
    # the worms are the dark pixels of w2: the mean w2 under the mask is lowest at zero shift
    under = {dy: raw[np.roll(union, dy, axis=0)].mean() for dy in (-2, -1, 0, 1, 2)}
    assert min(under, key=under.get) == 0
    fixed = read_foreground(bbbc010_root, "A05")  # the PNG moved up one row
    iou = (fixed & union).sum() / (fixed | union).sum()
    raw_png = np.roll(fixed, 1, axis=0)  # as stored
    iou_raw = (raw_png & union).sum() / (raw_png | union).sum()
    assert iou > 0.98 and iou_raw < 0.93


def test_read_bbbc010_skips_wells_without_an_image(bbbc010_root, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "eachworm").mkdir()
    for f in (bbbc010_root / "images").glob("*_A01_w2_*"):
        (tmp_path / "images" / f.name).symlink_to(f)
    for well in ("A01", "A02"):
        for f in (bbbc010_root / "eachworm").glob(f"{well}_*"):
            (tmp_path / "eachworm" / f.name).symlink_to(f)
    with pytest.warns(UserWarning, match="A02.*skipped"):
        samples = read_bbbc010(tmp_path, "brightfield")
    assert [s.name for s in samples] == ["A01"]
    with pytest.raises(ValueError, match="no worm masks"):
        read_bbbc010(tmp_path, "binary", wells=["C01"])
    with pytest.raises(ValueError, match="well ids"):
        read_bbbc010(tmp_path, "binary", wells=["A1"])
    with pytest.raises(FileNotFoundError, match="eachworm"):
        read_bbbc010(tmp_path / "images", "binary")
    # binary input is the union of the worm masks: it needs no image, not even images/
    assert [s.name for s in read_bbbc010(tmp_path, "binary")] == ["A01", "A02"]
    for f in (tmp_path / "images").iterdir():
        f.unlink()
    (tmp_path / "images").rmdir()
    (a01, a02) = read_bbbc010(tmp_path, "binary")
    np.testing.assert_array_equal(a01.image, a01.masks.any(axis=0))
    assert a02.masks.shape[0] > 0
    with pytest.raises(FileNotFoundError, match="images/ folder"):
        read_bbbc010(tmp_path, "brightfield")


# --- augment ------------------------------------------------------------------------------------


def test_augment_moves_image_and_masks_together():
    toy = _toy()
    for seed in range(12):
        out = augment(toy, np.random.default_rng(seed), crop=(32, 32))
        assert out.image.shape == (32, 32) and out.masks.shape[1:] == (32, 32)
        assert out.masks.reshape(len(out.masks), -1).any(axis=1).all()  # no empty instance
        # binary input = union of masks before, so after every flip/turn/zoom/crop as well
        np.testing.assert_array_equal(out.image, out.masks.any(axis=0))
    np.testing.assert_array_equal(toy.image, toy.masks.any(axis=0))  # input unchanged


def test_augment_is_reproducible_and_varies_with_the_generator():
    toy = _toy(binary=False)
    a = augment(toy, np.random.default_rng(3), crop=40)
    b = augment(toy, np.random.default_rng(3), crop=40)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.masks, b.masks)
    outs = [augment(toy, np.random.default_rng(s)).image for s in range(6)]
    assert len({o.tobytes() for o in outs}) == 6


def test_augment_brightfield_keeps_worms_dark_and_values_in_range():
    toy = _toy(binary=False)
    for seed in range(8):
        out = augment(toy, np.random.default_rng(seed))
        assert out.image.dtype == np.float32 and 0 <= out.image.min() and out.image.max() <= 1
        union = out.masks.any(axis=0)
        assert out.image[union].mean() < out.image[~union].mean() - 0.2
        assert 0.8 < out.image.shape[0] / 48 < 1.25 or 0.8 < out.image.shape[0] / 64 < 1.25


def test_augment_jitter_strength_scales_the_intensity_changes():
    toy = _toy(binary=False)
    for seed in range(6):
        full = augment(toy, np.random.default_rng(seed), scale=(1, 1))
        # strength 1 is the default, draw for draw
        np.testing.assert_array_equal(
            augment(toy, np.random.default_rng(seed), scale=(1, 1), jitter=1.0).image, full.image
        )
        # strength 0: the same flips and turns, the grey levels untouched
        none = augment(toy, np.random.default_rng(seed), scale=(1, 1), jitter=0.0)
        np.testing.assert_array_equal(none.masks, full.masks)
        assert sorted(np.unique(none.image)) == sorted(np.unique(toy.image))
        half = augment(toy, np.random.default_rng(seed), scale=(1, 1), jitter=0.5)
        assert np.abs(half.image - none.image).mean() < np.abs(full.image - none.image).mean()
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="jitter"):
            augment(toy, np.random.default_rng(0), jitter=bad)


def test_augment_drops_worms_outside_the_crop():
    toy = _toy()
    toy.masks[2] = False
    toy.masks[2, 46:48, 62:64] = True  # a worm in the corner only
    counts = {len(augment(toy, np.random.default_rng(s), crop=16).masks) for s in range(20)}
    assert min(counts) < 3


# --- dataset ------------------------------------------------------------------------------------


def test_to_target_boxes_and_formats():
    toy = _toy()
    image, target = to_target(toy)
    assert image.shape == (1, 48, 64) and image.dtype == torch.float32
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (3, 48, 64)
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1, 1, 1]
    np.testing.assert_array_equal(target["boxes"][0].numpy(), [5, 10, 40, 14])  # x1, y1 exclusive
    assert target["boxes"].dtype == torch.float32
    one_px = np.zeros((1, 5, 5), bool)
    one_px[0, 2, 3] = True
    np.testing.assert_array_equal(masks_to_boxes(one_px), [[3, 2, 4, 3]])  # positive size
    _, empty = to_target(Sample(np.zeros((5, 5)), np.zeros((2, 5, 5), bool), "e"))
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 5, 5)


def test_worm_dataset_items_epochs_and_loader():
    samples = [_toy(), _toy()]
    ds = WormDataset(samples, augment=True, crop=32, seed=1, synthetic=1)
    assert len(ds) == 3 and ds.input_mode == "binary"
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape[0] == 1 and tuple(image.shape[1:]) == (32, 32)
        masks = target["masks"].bool()
        assert masks.flatten(1).any(dim=1).all()
        np.testing.assert_array_equal(masks_to_boxes(masks.numpy()), target["boxes"].numpy())
    first = ds[0][0].clone()
    assert torch.equal(first, ds[0][0])  # an item is a function of (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(first, ds[0][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and len(images) == 2 and len(targets) == 2


def test_worm_dataset_without_augmentation_and_validation():
    toy = _toy()
    plain = WormDataset([toy], augment=False)
    np.testing.assert_array_equal(plain[0][0][0].numpy(), toy.image)
    cropped = WormDataset([toy], augment=False, crop=(16, 24))
    assert tuple(cropped[0][0].shape) == (1, 16, 24)
    synthetic_only = WormDataset([], synthetic=2, crop=64, input_mode="brightfield")
    image, target = synthetic_only[1]
    assert tuple(image.shape) == (1, 64, 64) and 0 <= image.min() and image.max() <= 1
    with pytest.raises(ValueError, match="input_mode"):
        WormDataset([], synthetic=2)
    with pytest.raises(ValueError, match="samples or synthetic"):
        WormDataset([])
    with pytest.raises(ValueError, match="crop"):
        WormDataset([toy], crop=3)
    with pytest.raises(IndexError):
        plain[5]


def test_kfold_wells_keeps_wells_together():
    names = [f"W{i:02d}" for i in range(11)] + ["W00", "W03"]  # two wells appear twice
    folds = kfold_wells(names, k=5, seed=0)
    assert len(folds) == 5
    val = np.concatenate([v for _, v in folds])
    assert sorted(val.tolist()) == list(range(len(names)))  # each index validated once
    for train, v in folds:
        assert not set(train) & set(v)
        assert len(train) + len(v) == len(names)
        assert not {names[i] for i in train} & {names[i] for i in v}
    sizes = sorted(len({names[i] for i in v}) for _, v in folds)
    assert sizes[-1] - sizes[0] <= 1
    assert [v.tolist() for _, v in kfold_wells(names, 5, 0)] == [v.tolist() for _, v in folds]
    with pytest.raises(ValueError, match="cannot make"):
        kfold_wells(["a", "b"], k=3)
    with pytest.raises(ValueError, match="k must be"):
        kfold_wells(names, k=1)


def test_no_warnings_from_clean_folder_reads(tmp_path):
    toy = _toy()
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "images" / "z.tif", toy.image)
    tifffile.imwrite(tmp_path / "labels" / "z_instances.tif", toy.masks.astype(np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (s,) = read_folders(tmp_path, "brightfield")
    assert s.masks.shape == (3, 48, 64)


# --- damaged and odd training files -------------------------------------------------------------


def _bbbc_tmp(root, worm_masks):
    """A tiny BBBC010-layout folder: well A01 with ``worm_masks`` (N, H, W) and a w2 image."""
    import imageio.v3 as iio

    (root / "images").mkdir(parents=True)
    (root / "eachworm").mkdir()
    for k, mask in enumerate(worm_masks, start=1):
        iio.imwrite(
            root / "eachworm" / f"A01_{k:02d}_ground_truth.png", mask.astype(np.uint8) * 255
        )
    w2 = np.full(worm_masks.shape[1:], 3000, np.uint16)
    w2[worm_masks.any(axis=0)] = 500
    w2[0, 0] = 4000
    tifffile.imwrite(root / "images" / "plate_A01_w2_0000-aaaa.tif", w2)
    return root


def _truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize(
    "damaged, keep",
    [
        ("images/a.png", 200),  # PIL: "image file is truncated"
        ("images/a.png", 30),  # PIL: "broken PNG file" (a SyntaxError)
        ("labels/a.tif", 24),  # tifffile: "corrupted IFD structure"
        ("labels/a.tif", 8),  # tifffile: a header only, read as a 0-size array (no error)
        ("labels/a.tif", 0),  # tifffile: "not a TIFF file"
    ],
)
def test_read_folders_names_a_damaged_file(tmp_path, damaged, keep):
    import imageio.v3 as iio

    toy = _toy()
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    noise = np.random.default_rng(0).integers(0, 255, toy.image.shape, dtype=np.uint8)
    iio.imwrite(tmp_path / "images" / "a.png", noise)
    tifffile.imwrite(tmp_path / "labels" / "a.tif", toy.masks.astype(np.uint8))
    _truncate(tmp_path / damaged, keep)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / damaged}: cannot read")):
        read_folders(tmp_path, "brightfield")


def test_read_bbbc010_names_a_damaged_file(tmp_path):
    toy = _toy()
    root = _bbbc_tmp(tmp_path, toy.masks)
    (w2,) = (root / "images").iterdir()
    _truncate(w2, 200)
    with pytest.raises(ValueError, match=re.escape(f"{w2}: cannot read")):
        read_bbbc010(root, "brightfield")
    worm = root / "eachworm" / "A01_02_ground_truth.png"
    _truncate(worm, worm.stat().st_size // 2)
    with pytest.raises(ValueError, match=re.escape(f"{worm}: cannot read")):
        read_bbbc010(root, "binary")


def test_read_bbbc010_keeps_a_well_whose_masks_are_all_empty(tmp_path):
    root = _bbbc_tmp(tmp_path, np.zeros((2, 48, 64), bool))
    for mode in ("binary", "brightfield"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (s,) = read_bbbc010(root, mode)
        assert any("A01: every worm mask is empty" in str(w.message) for w in caught)
        assert s.name == "A01" and s.masks.shape == (0, 48, 64) and s.image.shape == (48, 64)
    image, target = to_target(s)  # what the trainer builds from it: an image without worms
    assert image.shape == (1, 48, 64) and target["boxes"].shape == (0, 4)


def test_read_folders_refuses_a_foreground_mask_of_several_worms(tmp_path):
    import imageio.v3 as iio

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    foreground = np.zeros((200, 200), np.uint8)
    for i in range(8):
        foreground[10 + 24 * i : 18 + 24 * i, 20:150] = 255  # 8 separate worms, one value
    tifffile.imwrite(tmp_path / "images" / "plate.tif", np.where(foreground, 500, 3000))
    iio.imwrite(tmp_path / "labels" / "plate.png", foreground)
    with pytest.raises(ValueError, match=r"plate.tif / plate.png: label 255 .* 8 separate pieces"):
        read_folders(tmp_path, "brightfield")
    # the same foreground as one slice of an instance stack is refused too, naming the slice
    (tmp_path / "labels" / "plate.png").unlink()
    tifffile.imwrite(tmp_path / "labels" / "plate_instances.tif", foreground[None] // 255)
    with pytest.raises(ValueError, match="plate_instances.tif slice 0' is in 8 separate"):
        read_folders(tmp_path, "brightfield")
    # one label per worm is fine
    labels = (foreground > 0) * (np.arange(200)[:, None] // 24 + 1)
    tifffile.imwrite(tmp_path / "labels" / "plate_instances.tif", labels.astype(np.uint16))
    (s,) = read_folders(tmp_path, "brightfield")
    assert s.n_worms == 8
