"""The npe2 reader and writer, directly and through a real napari viewer (pytest-xvfb)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_semiconv.core.export import output_paths, write_run_outputs
from napari_semiconv.core.pixel_size import read_tiff_pixel_size
from napari_semiconv.plugin.reader import get_reader, read_instance_stacks
from napari_semiconv.plugin.writer import write_labels


def crossing_worms():
    masks = np.zeros((3, 40, 50), dtype=bool)
    masks[0, 10:14, 2:48] = True
    masks[1, 2:38, 20:24] = True  # crosses worm 1 at rows 10:14, cols 20:24
    masks[2, 30:34, 30:45] = True
    return masks


# ------------------------------------------------------------------ writer, direct calls
@pytest.mark.parametrize(("top", "dtype"), [(200, np.uint8), (300, np.uint16), (70_000, np.uint32)])
def test_writer_is_bit_exact_in_the_smallest_dtype(tmp_path, top, dtype):
    labels = np.zeros((20, 30), dtype=np.int32)
    labels[2:5, 3:9] = 1
    labels[10:15, 10:20] = top
    (written,) = write_labels(str(tmp_path / "l.tif"), labels, {"name": "l"})
    back = tifffile.imread(written)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, labels)


def test_writer_overwrites_atomically_and_rejects_bad_labels(tmp_path):
    target = tmp_path / "labels.tiff"
    write_labels(str(target), np.ones((4, 4), np.uint8), {})
    # napari's save dialog confirmed the overwrite before calling the writer.
    write_labels(str(target), np.full((4, 4), 2, np.uint16), {})
    assert tifffile.imread(target).tolist() == [[2] * 4] * 4
    with pytest.raises(ValueError, match=">= 0"):
        write_labels(str(target), -np.ones((4, 4), np.int16), {})
    assert tifffile.imread(target).tolist() == [[2] * 4] * 4  # untouched
    with pytest.raises(ValueError, match=".tif"):
        write_labels(str(tmp_path / "x.png"), np.ones((4, 4), np.uint8), {})
    (no_ext,) = write_labels(str(tmp_path / "plain"), np.ones((4, 4), np.uint8), {})
    assert no_ext.endswith("plain.tif")
    # napari's default name for the worms of 2024.05.01_A01.tif: its dots are not an extension
    (dotted,) = write_labels(str(tmp_path / "2024.05.01_A01 worms"), np.ones((4, 4)), {})
    assert dotted.endswith("2024.05.01_A01 worms.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "2024.05.01_A01 worms.tif",
        "labels.tiff",
        "plain.tif",
    ]


def resolution_tags(path) -> tuple[tuple[int, int], tuple[int, int], int]:
    """XResolution, YResolution (pixels per unit, as rationals) and ResolutionUnit of page 0."""
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        return tags["XResolution"].value, tags["YResolution"].value, tags["ResolutionUnit"].value


def test_writer_stores_the_layer_scale_as_tiff_resolution(tmp_path):
    labels = np.zeros((20, 30), np.uint16)
    labels[2:5, 3:9] = 1
    meta = {"name": "worms", "scale": (0.65, 0.65)}  # no units: napari's "pixel"
    (written,) = write_labels(str(tmp_path / "l.tif"), labels, meta)
    assert resolution_tags(written) == ((20, 13), (20, 13), 1)  # 1 / 0.65 pixels per unit
    np.testing.assert_array_equal(tifffile.imread(written), labels)
    # a layer in micrometres: the physical size, in pixels per centimetre (Save Layer wrote no
    # unit, so Fiji read 0.65 of nothing)
    meta = {"name": "worms", "scale": (0.65, 0.65), "units": ("um", "um")}
    (in_um,) = write_labels(str(tmp_path / "um.tif"), labels, meta)
    assert resolution_tags(in_um) == ((200000, 13), (200000, 13), 3)
    back = read_tiff_pixel_size(in_um)
    assert (back.y, back.x, back.unit) == (pytest.approx(0.65), pytest.approx(0.65), "µm")
    # another unit keeps its numbers, unnamed: read back in µm it would be 1000 times off
    meta = {"name": "worms", "scale": (0.65, 0.65), "units": ("nm", "nm")}
    (in_nm,) = write_labels(str(tmp_path / "nm.tif"), labels, meta)
    assert resolution_tags(in_nm) == ((20, 13), (20, 13), 1)
    # a stack: y and x are the last two axes of the scale
    (stack,) = write_labels(str(tmp_path / "s.tif"), labels[None], {"scale": (5.0, 0.5, 0.25)})
    assert resolution_tags(stack) == ((4, 1), (2, 1), 1)
    # a flipped axis cannot be a TIFF resolution: saved without one, not refused
    (flipped,) = write_labels(str(tmp_path / "f.tif"), labels, {"scale": (-0.65, 0.65)})
    assert resolution_tags(flipped) == ((1, 1), (1, 1), 1)


# ------------------------------------------------------------------ reader, direct calls
def test_reader_claims_only_instance_stacks_and_label_images(tmp_path):
    paths = write_run_outputs(tmp_path, "A01", masks=crossing_worms(), scores=np.ones(3))
    assert get_reader(str(paths["instances"])) is read_instance_stacks
    assert get_reader([str(paths["instances"])]) is read_instance_stacks
    assert get_reader(str(paths["labels"])) is read_instance_stacks  # as labels, not an image
    assert get_reader(str(paths["measurements"])) is None
    assert get_reader(str(tmp_path / "missing_instances.tif")) is None


def test_reader_splits_a_flat_label_image_and_refuses_colour(tmp_path):
    import tifffile

    from napari_semiconv.core.export import read_instances_tif

    labels = np.zeros((40, 50), np.uint16)
    labels[5:10, 5:10], labels[20:30, 20:30], labels[30:35, 40:45] = 1, 2, 7
    tifffile.imwrite(tmp_path / "flat_instances.tif", labels)
    masks = read_instances_tif(tmp_path / "flat_instances.tif")
    assert masks.shape == (3, 40, 50)
    np.testing.assert_array_equal(masks[2], labels == 7)
    one = np.zeros((40, 50), bool)
    one[1:4, 1:9] = True
    tifffile.imwrite(tmp_path / "one_instances.tif", one)
    np.testing.assert_array_equal(read_instances_tif(tmp_path / "one_instances.tif"), one[None])
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb_instances.tif", rgb, photometric="rgb")
    with pytest.raises(ValueError, match="colour image"):
        read_instances_tif(tmp_path / "rgb_instances.tif")
    # a 3-worm stack as earlier versions saved it (tifffile tagged it planar RGB) is a stack
    three = np.zeros((3, 40, 50), np.uint8)
    three[0, :5], three[1, 10:20], three[2, :, :7] = 1, 1, 1
    tifffile.imwrite(tmp_path / "old_instances.tif", three, metadata={"axes": "QYX"})
    np.testing.assert_array_equal(read_instances_tif(tmp_path / "old_instances.tif"), three > 0)


def test_reader_layers_keep_overlaps_and_use_scores(tmp_path):
    masks = crossing_worms()
    paths = write_run_outputs(tmp_path, "A01", masks=masks, scores=np.array([0.2, 0.9, 0.5]))
    (worms, worms_meta, kind), (stack, stack_meta, kind2) = read_instance_stacks(
        str(paths["instances"])
    )
    assert kind == kind2 == "labels"
    assert worms_meta["name"] == "A01 worms" and stack_meta["name"] == "A01 instances"
    assert stack_meta["visible"] is False
    assert worms.shape == (40, 50) and worms[12, 21] == 2  # the higher score wins
    assert stack.shape == (3, 40, 50)
    for k in range(3):  # plane k holds worm k whole, as label k + 1
        np.testing.assert_array_equal(stack[k] == k + 1, masks[k])
    assert worms_meta["features"]["score"].tolist() == pytest.approx([0.2, 0.9, 0.5])
    # Without the CSV, the lower plane wins.
    output_paths(tmp_path, "A01")["measurements"].unlink()
    worms, meta, _ = read_instance_stacks(str(paths["instances"]))[0]
    assert worms[12, 21] == 1 and "features" not in meta


def test_reader_on_a_run_without_worms(tmp_path):
    empty = np.zeros((0, 16, 24), bool)
    paths = write_run_outputs(tmp_path, "none", masks=empty, scores=np.zeros(0))
    layers = read_instance_stacks(str(paths["instances"]))
    assert len(layers) == 1 and layers[0][0].shape == (16, 24) and not layers[0][0].any()


def test_reader_sets_the_scale_from_the_resolution(tmp_path):
    masks = crossing_worms()
    paths = write_run_outputs(
        tmp_path, "A01", masks=masks, scores=np.ones(3), pixel_size=(0.65, 0.5)
    )
    (worms, worms_meta, _), (stack, stack_meta, _) = get_reader(str(paths["instances"]))(
        str(paths["instances"])
    )
    assert worms_meta["scale"] == (0.65, 0.5)
    assert stack_meta["scale"] == (1.0, 0.65, 0.5)  # the first axis counts worms
    # a stack written without a pixel size gets napari's default scale
    plain = write_run_outputs(tmp_path, "B01", masks=masks, scores=np.ones(3))
    layers = read_instance_stacks(str(plain["instances"]))
    assert all("scale" not in meta for _, meta, _ in layers)


def _layers_have_units() -> bool:
    """napari 0.6 and later: layers have ``units``."""
    import napari.layers

    return hasattr(napari.layers.Labels(np.zeros((2, 2), np.uint8)), "units")


def test_reader_gives_a_length_unit_and_the_run_records_numbers(tmp_path):
    # a length unit is stored in centimetres and read back in µm; the layers keep the image's
    # numbers (its unit's) where the run record says the same size
    if not _layers_have_units():
        pytest.skip("napari before 0.6 has no layer units")
    masks = crossing_worms()
    um = write_run_outputs(
        tmp_path, "A01", masks=masks, scores=np.ones(3), pixel_size=(0.65, 0.5), pixel_unit="µm"
    )
    (_, worms, _), (_, stack, _) = read_instance_stacks(str(um["instances"]))
    assert worms["scale"] == (0.65, 0.5) and stack["scale"] == (1.0, 0.65, 0.5)
    assert worms["units"] == ("µm", "µm") and stack["units"] == ("pixel", "µm", "µm")
    ((_, labels, _),) = read_instance_stacks(str(um["labels"]))
    assert labels["scale"] == (0.65, 0.5) and labels["units"] == ("µm", "µm")
    nm = write_run_outputs(
        tmp_path, "A02", masks=masks, scores=np.ones(3), pixel_size=(650, 500), pixel_unit="nm"
    )
    for key in ("instances", "labels"):
        _, meta, _ = read_instance_stacks(str(nm[key]))[0]
        assert meta["scale"] == (650, 500) and meta["units"] == ("nm", "nm")
    # without the record (or with one of another size) the file's own µm
    nm["run"].unlink()
    _, meta, _ = read_instance_stacks(str(nm["labels"]))[0]
    assert meta["scale"] == (0.65, 0.5) and meta["units"] == ("µm", "µm")
    # no unit: the scale as before, no units
    _, meta, _ = read_instance_stacks(
        str(write_run_outputs(tmp_path, "B", masks=masks, pixel_size=(2, 2))["labels"])
    )[0]
    assert meta["scale"] == (2.0, 2.0) and "units" not in meta


# ------------------------------------------------------------------ real napari viewer
@pytest.mark.gui
def test_viewer_saves_labels_through_the_plugin_bit_exact(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = np.zeros((32, 48), dtype=np.int32)
    labels[3:9, 4:20] = 7
    labels[15:30, 25:40] = 40_000
    layer = viewer.add_labels(labels, name="worms")
    target = tmp_path / "saved.tif"
    written = viewer.layers.save(str(target), selected=False, plugin="napari-semiconv")
    assert [str(target)] == [str(p) for p in written]
    back = tifffile.imread(target)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, layer.data)
    # The same file saved through the layer itself
    other = tmp_path / "layer.tiff"
    layer.save(str(other), plugin="napari-semiconv")
    np.testing.assert_array_equal(tifffile.imread(other), labels)


@pytest.mark.gui
def test_viewer_opens_an_instance_stack(make_napari_viewer, tmp_path):
    masks = crossing_worms()
    paths = write_run_outputs(tmp_path, "A01", masks=masks, scores=np.array([0.2, 0.9, 0.5]))
    viewer = make_napari_viewer()
    layers = viewer.open(str(paths["instances"]), plugin="napari-semiconv")
    assert [layer.name for layer in layers] == ["A01 worms", "A01 instances"]
    worms, stack = viewer.layers["A01 worms"], viewer.layers["A01 instances"]
    assert worms.data[12, 21] == 2 and not stack.visible
    assert stack.data.shape == (3, 40, 50)
    assert {int(v) for v in np.unique(stack.data)} == {0, 1, 2, 3}
    # Overlapping pixels are kept in the stack: worm 1 (plane 0) still covers the crossing.
    assert stack.data[0, 12, 21] == 1 and stack.data[1, 12, 21] == 2
    assert worms.features["score"].tolist() == pytest.approx([0.2, 0.9, 0.5])


@pytest.mark.gui
def test_viewer_opens_an_exported_label_image_as_labels(make_napari_viewer, tmp_path):
    paths = write_run_outputs(tmp_path, "A01", masks=crossing_worms(), scores=np.ones(3))
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(paths["labels"]), plugin="napari-semiconv")
    assert type(layer).__name__ == "Labels" and layer.name == "A01 worms"
    np.testing.assert_array_equal(layer.data, tifffile.imread(paths["labels"]))


@pytest.mark.gui
def test_viewer_round_trip_keeps_the_pixel_size(make_napari_viewer, tmp_path):
    paths = write_run_outputs(
        tmp_path, "A01", masks=crossing_worms(), scores=np.ones(3), pixel_size=(0.65, 0.65)
    )
    viewer = make_napari_viewer()
    viewer.open(str(paths["instances"]), plugin="napari-semiconv")
    worms = viewer.layers["A01 worms"]
    assert tuple(worms.scale) == pytest.approx((0.65, 0.65))
    assert tuple(viewer.layers["A01 instances"].scale) == pytest.approx((1.0, 0.65, 0.65))
    # Save Layer writes the scale back
    target = tmp_path / "saved.tif"
    worms.save(str(target), plugin="napari-semiconv")
    assert resolution_tags(target) == ((20, 13), (20, 13), 1)


@pytest.mark.gui
def test_viewer_opens_an_export_in_micrometres_on_its_image(make_napari_viewer, tmp_path):
    if not _layers_have_units():
        pytest.skip("napari before 0.6 has no layer units")
    paths = write_run_outputs(
        tmp_path, "A01", masks=crossing_worms(), scores=np.ones(3), pixel_size=(0.65, 0.65),
        pixel_unit="micrometer",
    )  # fmt: skip
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((40, 50)), scale=(0.65, 0.65), units=("µm", "µm"))
    viewer.open(str(paths["instances"]), plugin="napari-semiconv")
    worms = viewer.layers["A01 worms"]
    assert tuple(worms.scale) == pytest.approx(tuple(image.scale))
    assert worms.units == image.units
    assert tuple(viewer.layers["A01 instances"].units)[1:] == tuple(image.units)


def test_a_flat_label_image_named_instances_gives_one_layer_without_a_stack(tmp_path):
    # 900 labels on 240 x 240 px made a hidden (900, 240, 240) stack: 104 MB for a 0.1 MB file
    from napari_semiconv.core.export import write_label_image
    from napari_semiconv.plugin.reader import read_instance_stacks

    labels = np.zeros((240, 240), np.uint16)
    for k in range(900):
        y, x = divmod(k, 30)
        labels[y * 8 : y * 8 + 5, x * 8 : x * 8 + 5] = 3 * k + 7  # ids 7, 10, ... not 1..n
    path = tmp_path / "cells_instances.tif"
    write_label_image(path, labels, pixel_size=(0.5, 0.5))  # as the writer saves a layer
    (layer,) = read_instance_stacks(str(path))
    data, meta, kind = layer
    assert kind == "labels" and data.shape == (240, 240) and meta["name"] == "cells worms"
    np.testing.assert_array_equal(data, labels)  # the label image as it is
    np.testing.assert_allclose(meta["scale"], (0.5, 0.5))


def test_an_exported_label_image_opens_as_labels_with_its_measurements(tmp_path):
    # Export's <stem>_labels.tif opened as an Image layer: no Fine-tune pair without converting
    from napari_semiconv.core.export import write_run_outputs
    from napari_semiconv.plugin.reader import get_reader

    masks = np.zeros((3, 40, 50), bool)
    masks[0, 5:10, 5:45] = True
    masks[1, 5:10, 5:45] = True  # under worm 0 (lower score): label 2 shows nowhere
    masks[2, 20:30, 10:20] = True
    paths = write_run_outputs(
        tmp_path, "plate", masks=masks, scores=np.array([0.9, 0.5, 0.8]), pixel_size=(2.0, 2.0)
    )
    reader = get_reader(str(paths["labels"]))
    assert reader is not None
    ((data, meta, kind),) = reader(str(paths["labels"]))
    assert kind == "labels" and meta["name"] == "plate worms"
    np.testing.assert_array_equal(data, tifffile.imread(paths["labels"]))
    assert set(np.unique(data)) == {0, 1, 3}
    np.testing.assert_array_equal(meta["features"]["index"], [1, 2, 3])  # all three rows
    np.testing.assert_allclose(meta["features"]["score"], [0.9, 0.5, 0.8])
    np.testing.assert_allclose(meta["scale"], (2.0, 2.0))
    # re-saved with a label the table does not have: said in a label image's words
    relabelled = tifffile.imread(paths["labels"])
    relabelled[relabelled == 3] = 5
    tifffile.imwrite(paths["labels"], relabelled)
    with pytest.warns(
        UserWarning, match=r"labels 1\.\.3 do not cover the image's labels \(up to 5"
    ):
        ((data, meta, _),) = reader(str(paths["labels"]))
    assert "features" not in meta
