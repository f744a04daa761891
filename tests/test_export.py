"""The four run outputs and the atomic writing beneath them."""

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_semiconv.core import atomic
from napari_semiconv.core.atomic import atomic_write_bytes, atomic_writer
from napari_semiconv.core.export import (
    PixelSize,
    output_paths,
    read_instances_tif,
    read_measurements_csv,
    read_run_json,
    read_tiff_pixel_size,
    write_label_image,
    write_run_outputs,
)
from napari_semiconv.core.measurements import MEASUREMENT_COLUMNS, labels_from_instances


class Result:
    """Any object with .masks and .scores (as core.inference.Instances) is accepted."""

    def __init__(self, masks, scores):
        self.masks, self.scores = masks, scores


def crossing_worms():
    masks = np.zeros((3, 40, 50), dtype=bool)
    masks[0, 10:14, 2:48] = True
    masks[1, 2:38, 20:24] = True  # crosses worm 1
    masks[2, 30:34, 30:45] = True
    return masks, np.array([0.6, 0.9, 0.7], dtype=np.float32)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_four_files_written_and_read_back(tmp_path):
    masks, scores = crossing_worms()
    info = {"model": "tiny", "score_threshold": np.float32(0.5), "image": Path("/x/a.tif")}
    paths = write_run_outputs(tmp_path, "A01", Result(masks, scores), info)
    assert set(paths) == {"labels", "instances", "measurements", "run"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["A01_labels.tif", "A01_instances.tif", "A01_measurements.csv", "A01_run.json"]
    )
    # Instances: overlaps kept, plane k = worm k, bit-exact.
    stack = tifffile.imread(paths["instances"])
    assert stack.dtype == np.uint8 and stack.shape == (3, 40, 50)
    np.testing.assert_array_equal(read_instances_tif(paths["instances"]), masks)
    with tifffile.TiffFile(paths["instances"]) as tif:  # grey planes, not a colour image
        assert tif.pages.first.samplesperpixel == 1 and len(tif.pages) == len(masks)
    # Labels: uint16, overlap goes to the higher score (worm 2, score 0.9).
    labels = tifffile.imread(paths["labels"])
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, labels_from_instances(masks, scores))
    assert labels[12, 21] == 2
    # Measurements: header in contract order, one row per worm, label k + 1.
    with open(paths["measurements"], newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == MEASUREMENT_COLUMNS and len(rows) == 4
    table = read_measurements_csv(paths["measurements"])
    assert [r["label"] for r in table] == [1, 2, 3]
    assert [r["area"] for r in table] == [int(m.sum()) for m in masks]
    assert table[1]["score"] == pytest.approx(0.9)
    # Run record: as given (numpy scalar and Path converted) plus versions.
    record = read_run_json(paths["run"])
    assert record["model"] == "tiny" and record["score_threshold"] == pytest.approx(0.5)
    assert record["image"] == "/x/a.tif"
    assert "numpy" in record["versions"] and "python" in record["versions"]
    assert leftovers(tmp_path) == []


def test_keyword_arrays_and_out_dir_created(tmp_path):
    masks, scores = crossing_worms()
    out = tmp_path / "new" / "folder"
    paths = write_run_outputs(out, "run", masks=masks, scores=scores, run_info={"a": 1})
    assert all(p.is_file() for p in paths.values())
    assert read_run_json(paths["run"])["a"] == 1


def test_zero_worms_round_trip(tmp_path):
    empty = np.zeros((0, 24, 31), dtype=bool)
    paths = write_run_outputs(tmp_path, "none", masks=empty, scores=np.zeros(0), run_info={})
    back = read_instances_tif(paths["instances"])
    assert back.shape == (0, 24, 31) and back.dtype == bool
    labels = tifffile.imread(paths["labels"])
    assert labels.shape == (24, 31) and not labels.any()
    assert read_measurements_csv(paths["measurements"]) == []


def test_existing_output_refused_before_anything_written(tmp_path):
    masks, scores = crossing_worms()
    target = output_paths(tmp_path, "A01")["run"]  # the last of the four to be written
    target.write_text("old")
    with pytest.raises(FileExistsError, match="A01_run.json"):
        write_run_outputs(tmp_path, "A01", masks=masks, scores=scores, run_info={})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A01_run.json"]
    assert target.read_text() == "old"
    # overwrite=True replaces it
    write_run_outputs(tmp_path, "A01", masks=masks, scores=scores, run_info={}, overwrite=True)
    assert read_run_json(target)["versions"]


def test_failed_write_leaves_no_partial_and_no_clobbered_file(tmp_path, monkeypatch):
    # Tests run as root, so chmod cannot make a folder read-only: make the final rename fail.
    masks, scores = crossing_worms()
    old = output_paths(tmp_path, "A01")
    write_run_outputs(tmp_path, "A01", masks=masks, scores=scores, run_info={"v": 1})
    before = {k: p.read_bytes() for k, p in old.items()}

    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # the third file: the disk is "full"
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="could not write .*A01_measurements.csv.*No space"):
        write_run_outputs(
            tmp_path, "A01", masks=masks[:1], scores=scores[:1], run_info={"v": 2}, overwrite=True
        )
    assert leftovers(tmp_path) == []
    # The third file was not clobbered (overwrite=True can't restore the first two, which are
    # complete new files: never partial).
    assert old["measurements"].read_bytes() == before["measurements"]
    assert old["run"].read_bytes() == before["run"]
    assert read_instances_tif(old["instances"]).shape == (1, 40, 50)


def test_failed_fresh_run_removes_the_files_it_created(tmp_path, monkeypatch):
    masks, scores = crossing_worms()
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 4:
            raise PermissionError(13, "Permission denied")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(PermissionError, match="A01_run.json"):
        write_run_outputs(tmp_path, "A01", masks=masks, scores=scores, run_info={})
    assert list(tmp_path.iterdir()) == []


def test_out_dir_that_is_a_file_gives_a_clear_error(tmp_path):
    masks, scores = crossing_worms()
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="is a file"):
        write_run_outputs(blocker, "A01", masks=masks, scores=scores, run_info={})
    assert blocker.read_text() == "not a folder"
    with pytest.raises(NotADirectoryError, match="is a file"):
        atomic_write_bytes(blocker / "x.bin", b"1")


def test_bad_arguments(tmp_path):
    masks, scores = crossing_worms()
    with pytest.raises(TypeError, match="masks=..., scores="):
        write_run_outputs(tmp_path, "A01", masks, {"a": 1})
    with pytest.raises(ValueError, match="stem"):
        write_run_outputs(tmp_path, "../A01", masks=masks, scores=scores)
    with pytest.raises(ValueError, match="NaN"):
        write_run_outputs(tmp_path, "A01", masks=masks, scores=scores, run_info={"x": np.nan})
    with pytest.raises(TypeError, match="JSON"):
        write_run_outputs(tmp_path, "A01", masks=masks, scores=scores, run_info={"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_atomic_writer_text_and_exception_cleanup(tmp_path):
    target = tmp_path / "notes.txt"
    with atomic_writer(target, "w") as handle:
        handle.write("première ligne\n")
    assert target.read_text(encoding="utf-8") == "première ligne\n"
    with pytest.raises(FileExistsError, match="notes.txt"):
        with atomic_writer(target, "w") as handle:
            raise AssertionError("never reached: refused before the body runs")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_writer(target, "w", overwrite=True) as handle:
            handle.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text(encoding="utf-8") == "première ligne\n"
    assert leftovers(tmp_path) == []
    atomic_write_bytes(target, b"new", overwrite=True)
    assert target.read_bytes() == b"new"
    # permissions follow the umask, not mkstemp's 0600
    assert target.stat().st_mode & 0o777 == 0o666 & ~atomic._UMASK
    with pytest.raises(ValueError, match="mode"):
        with atomic_writer(tmp_path / "y", "a"):
            pass


def test_write_label_image_smallest_exact_dtype(tmp_path):
    labels = np.zeros((5, 6), dtype=np.int64)
    labels[1, 1], labels[2, 2] = 3, 300
    path = write_label_image(tmp_path / "l.tif", labels)
    back = tifffile.imread(path)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)
    with pytest.raises(FileExistsError):
        write_label_image(path, labels)
    with pytest.raises(ValueError, match=">= 0"):
        write_label_image(tmp_path / "neg.tif", -labels)
    assert not (tmp_path / "neg.tif").exists()


def test_read_run_json_rejects_non_objects(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="r.json"):
        read_run_json(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_run_json(bad)


def test_a_stack_export_that_fails_part_way_leaves_no_file_and_can_be_retried(
    tmp_path, monkeypatch
):
    import errno
    from types import SimpleNamespace

    import napari_semiconv.core.export as export_module
    from napari_semiconv.plugin._export import export_result

    masks = np.zeros((2, 40, 40), bool)
    masks[0, 5:10, 5:30] = True
    masks[1, 20:25, 5:30] = True
    plane = SimpleNamespace(masks=masks, scores=np.array([0.9, 0.8]))
    result = SimpleNamespace(
        planes=[((0,), plane), ((1,), plane)],
        leading=(2,),
        run_info={},
        request=SimpleNamespace(scale=(1.0, 1.0, 1.0)),
    )
    real = export_module.atomic_write_bytes
    calls = {"n": 0}

    def full_disk_in_plane_1(path, data, overwrite=False):
        calls["n"] += 1
        if calls["n"] == 6:  # plane 1's second file
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, overwrite=overwrite)

    with monkeypatch.context() as patch:
        patch.setattr(export_module, "atomic_write_bytes", full_disk_in_plane_1)
        with pytest.raises(OSError, match="No space left"):
            export_result(result, tmp_path / "plate")
    assert calls["n"] == 6 and list(tmp_path.iterdir()) == []  # plane 0's four files removed
    paths = export_result(result, tmp_path / "plate")  # the retry is not refused
    assert sorted(paths) == sorted(
        f"plane{i}/{key}" for i in (0, 1) for key in ("labels", "instances", "measurements", "run")
    )
    assert len(list(tmp_path.iterdir())) == 8


# ------------------------------------------------------------------ pixel size (scale)
def resolution_tags(path: Path) -> tuple[tuple[int, int], tuple[int, int], int]:
    """XResolution, YResolution (pixels per unit, as rationals) and ResolutionUnit of page 0."""
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages.first.tags
        return tags["XResolution"].value, tags["YResolution"].value, tags["ResolutionUnit"].value


def test_pixel_size_goes_into_both_tiffs_and_the_run_json(tmp_path):
    masks, scores = crossing_worms()
    paths = write_run_outputs(
        tmp_path, "a", masks=masks, scores=scores, pixel_size=(0.65, 0.5), pixel_unit="µm"
    )
    for key in ("labels", "instances"):
        # a length: pixels per centimetre (ResolutionUnit 3), 1e4 / 0.5 along x, 1e4 / 0.65 along
        # y, so Fiji and tifffile get the physical size
        assert resolution_tags(paths[key]) == ((20000, 1), (200000, 13), 3)
        assert read_tiff_pixel_size(paths[key]) == PixelSize(0.65, 0.5, "µm")
    assert tifffile.imread(paths["instances"]).shape == (3, 40, 50)  # the stack is unchanged
    record = read_run_json(paths["run"])
    assert record["pixel_size"] == [0.65, 0.5] and record["pixel_unit"] == "µm"
    # no unit: 1 / 0.5 = 2 pixels per unit along x, 1 / 0.65 = 20 / 13 along y, no absolute unit
    unitless = write_run_outputs(tmp_path, "d", masks=masks, scores=scores, pixel_size=(0.65, 0.5))
    assert resolution_tags(unitless["labels"]) == ((2, 1), (20, 13), 1)
    assert read_tiff_pixel_size(unitless["labels"]) == PixelSize(0.65, 0.5, None)
    assert "pixel_unit" not in read_run_json(unitless["run"])
    # the measurements stay in pixels, same columns
    assert read_measurements_csv(paths["measurements"])[0]["area"] == masks[0].sum()
    # no pixel size given: nothing claimed (tifffile's default 1 / 1) and no key in the record
    plain = write_run_outputs(tmp_path, "b", masks=masks, scores=scores)
    assert read_tiff_pixel_size(plain["labels"]) is None
    assert "pixel_size" not in read_run_json(plain["run"])
    # a zero-worm stack keeps it too
    empty = write_run_outputs(tmp_path, "c", masks=np.zeros((0, 8, 9), bool), pixel_size=(2, 3))
    assert read_tiff_pixel_size(empty["instances"]) == PixelSize(2.0, 3.0)


@pytest.mark.parametrize("bad", [(0.0, 1.0), (-0.65, 0.65), (float("nan"), 1.0), (1.0,)])
def test_a_bad_pixel_size_is_refused_before_anything_is_written(tmp_path, bad):
    masks, scores = crossing_worms()
    with pytest.raises(ValueError, match="pixel_size"):
        write_run_outputs(tmp_path, "a", masks=masks, scores=scores, pixel_size=bad)
    with pytest.raises(ValueError, match="pixel_size"):
        write_label_image(tmp_path / "l.tif", np.ones((4, 4), np.uint8), pixel_size=bad)
    assert list(tmp_path.iterdir()) == []


def test_write_label_image_stores_the_pixel_size(tmp_path):
    stack = np.zeros((2, 6, 8), np.uint16)
    stack[1, 2:4, 2:7] = 300
    path = write_label_image(tmp_path / "l.tif", stack, pixel_size=(0.25, 0.125))
    assert resolution_tags(path) == ((8, 1), (4, 1), 1)
    np.testing.assert_array_equal(tifffile.imread(path), stack)


def test_read_tiff_pixel_size_of_other_writers(tmp_path):
    image = np.zeros((5, 6), np.uint16)
    # ImageJ: pixels per micron with ResolutionUnit NONE, the unit named in its header
    tifffile.imwrite(
        tmp_path / "ij.tif", image, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "micron"}
    )
    # one spelling for micron / um / micrometer: the one a centimetre resolution reads as
    assert read_tiff_pixel_size(tmp_path / "ij.tif") == PixelSize(0.5, 0.5, "µm")
    for spelling in ("um", "micrometer", "\\u00B5m"):  # ImageJ escapes µ in its ASCII header
        tifffile.imwrite(
            tmp_path / "ij2.tif", image, imagej=True, resolution=(2.0, 2.0),
            metadata={"unit": spelling},
        )  # fmt: skip
        assert read_tiff_pixel_size(tmp_path / "ij2.tif") == PixelSize(0.5, 0.5, "µm"), spelling
    tifffile.imwrite(
        tmp_path / "px.tif", image, imagej=True, resolution=(0.5, 0.5), metadata={"unit": "pixel"}
    )
    assert read_tiff_pixel_size(tmp_path / "px.tif") == PixelSize(2.0, 2.0, None)
    tifffile.imwrite(
        tmp_path / "cm.tif", image, resolution=(1e4 / 0.65, 1e4 / 0.4), resolutionunit="CENTIMETER"
    )
    assert read_tiff_pixel_size(tmp_path / "cm.tif") == PixelSize(
        0.4, 0.65, "µm"
    )  # resolution is (x, y)
    # an image editor's 72 dpi says nothing about the sample
    tifffile.imwrite(tmp_path / "dpi.tif", image, resolution=(72, 72), resolutionunit="INCH")
    assert read_tiff_pixel_size(tmp_path / "dpi.tif") is None
    tifffile.imwrite(tmp_path / "none.tif", image)
    assert read_tiff_pixel_size(tmp_path / "none.tif") is None


def test_widget_export_keeps_the_image_layers_scale(tmp_path):
    from types import SimpleNamespace

    from napari_semiconv.plugin._export import export_result

    masks = np.zeros((1, 40, 60), bool)
    masks[0, 10:16, 5:50] = True
    plane = SimpleNamespace(masks=masks, scores=np.array([0.9]))
    # a 2-plane stack at 0.65 um/px (plane spacing 2): y and x are the last two
    request = SimpleNamespace(scale=(2.0, 0.65, 0.65), translate=(0.0, 0.0, 0.0))
    result = SimpleNamespace(
        planes=[((0,), plane), ((1,), plane)], leading=(2,), run_info={}, request=request
    )
    paths = export_result(result, tmp_path / "plate")
    for i in (0, 1):
        for key in ("labels", "instances"):
            assert resolution_tags(paths[f"plane{i}/{key}"]) == ((20, 13), (20, 13), 1)
        record = read_run_json(paths[f"plane{i}/run"])
        assert record["pixel_size"] == [0.65, 0.65] and record["plane"] == [i]


@pytest.mark.parametrize(
    ("size", "unit", "recorded"),
    [
        (0.65, "µm", "µm"),
        (0.65, "micron", "µm"),
        (0.65, "um", "µm"),
        (0.65, "micrometer", "µm"),  # napari's Layer.units, as pint spells it
        (650.0, "nanometer", "nm"),
        (0.00065, "mm", "mm"),
        (0.000065, "cm", "cm"),
        (0.00000065, "m", "m"),
    ],
)
def test_a_length_unit_is_written_as_pixels_per_centimetre(tmp_path, size, unit, recorded):
    masks, scores = crossing_worms()
    paths = write_run_outputs(
        tmp_path, "a", masks=masks, scores=scores, pixel_size=(size, size), pixel_unit=unit
    )
    assert read_run_json(paths["run"])["pixel_unit"] == recorded
    for key, dtype, shape in (
        ("labels", np.uint16, (40, 50)),
        ("instances", np.uint8, (3, 40, 50)),
    ):
        assert resolution_tags(paths[key]) == ((200000, 13), (200000, 13), 3)  # 0.65 µm
        assert read_tiff_pixel_size(paths[key]) == PixelSize(0.65, 0.65, "µm")
        with tifffile.TiffFile(paths[key]) as tif:  # the rest of the file as before
            page = tif.pages.first
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK
            assert tif.series[0].shape == shape and page.dtype == dtype
            assert not tif.is_imagej
    write_label_image(
        tmp_path / "l.tif", np.ones((4, 4), np.uint8), pixel_size=(size, size), pixel_unit=unit
    )
    assert read_tiff_pixel_size(tmp_path / "l.tif") == PixelSize(0.65, 0.65, "µm")


@pytest.mark.parametrize(("unit", "recorded"), [("pixel", None), ("", None), ("a.u.", "a.u.")])
def test_no_unit_or_one_tiff_cannot_name_keeps_resolution_unit_none(tmp_path, unit, recorded):
    masks, scores = crossing_worms()
    paths = write_run_outputs(
        tmp_path, "a", masks=masks, scores=scores, pixel_size=(0.65, 0.5), pixel_unit=unit
    )
    assert resolution_tags(paths["labels"]) == ((2, 1), (20, 13), 1)
    assert read_run_json(paths["run"]).get("pixel_unit") == recorded


def test_unit_spellings_and_a_layers_units():
    from napari_semiconv.core.pixel_size import cm_per_unit, normalise_unit, pixel_unit_of

    for spelling in ("µm", "μm", "um", "UM", "micron", "Microns", "micrometer", "micrometre"):
        assert normalise_unit(spelling) == "µm", spelling
    assert normalise_unit("nanometer") == "nm" and normalise_unit("Millimetre") == "mm"
    assert [normalise_unit(u) for u in (None, "", "pixel", "px")] == [None] * 4
    assert normalise_unit(" a.u. ") == "a.u."
    assert cm_per_unit("micron") == 1e-4 and cm_per_unit("a.u.") is None
    assert cm_per_unit(None) is None
    # napari layers: (plane, y, x) units; the default "pixel" and mixed y/x units give none
    assert pixel_unit_of(("pixel", "micrometer", "micrometer")) == "µm"
    assert pixel_unit_of(("pixel", "pixel")) is None
    assert pixel_unit_of(("nm", "micrometer")) is None
    assert pixel_unit_of(None) is None and pixel_unit_of(("µm",)) is None


def test_widget_export_records_the_image_layers_unit(tmp_path):
    from types import SimpleNamespace

    from napari_semiconv.plugin._export import export_result

    masks = np.zeros((1, 40, 60), bool)
    masks[0, 10:16, 5:50] = True
    plane = SimpleNamespace(masks=masks, scores=np.array([0.9]))
    # as RunRequest carries a layer whose Layer.units are micrometres
    request = SimpleNamespace(scale=(0.65, 0.65), translate=(0.0, 0.0), pixel_unit="µm")
    result = SimpleNamespace(planes=[((), plane)], leading=(), run_info={}, request=request)
    paths = export_result(result, tmp_path / "plate")
    record = read_run_json(paths["run"])
    assert record["pixel_size"] == [0.65, 0.65] and record["pixel_unit"] == "µm"
    for key in ("labels", "instances"):
        assert read_tiff_pixel_size(paths[key]) == PixelSize(0.65, 0.65, "µm")
    # napari's default unit, "pixel", is no unit: as before, nothing claimed
    request.pixel_unit = None
    paths = export_result(result, tmp_path / "plain")
    assert "pixel_unit" not in read_run_json(paths["run"])
    assert resolution_tags(paths["labels"]) == ((20, 13), (20, 13), 1)


def test_predict_carries_the_input_resolution(tmp_path):
    from reliability_kit import save_tiny_model
    from toy_worms import toy_worms

    from napari_semiconv.cli.main import main

    model = save_tiny_model(tmp_path / "tiny.pt")
    image = (toy_worms((64, 64), seed=0)[0] * 255).astype(np.uint8)
    tifffile.imwrite(
        tmp_path / "ij.tif",
        image,
        imagej=True,
        resolution=(1 / 0.65, 1 / 0.65),
        metadata={"unit": "micron"},
    )
    tifffile.imwrite(tmp_path / "plain.tif", image)
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "ij.tif"), str(tmp_path / "plain.tif")]
    assert main([*argv, "--model", str(model), "--device", "cpu", "--out", str(out)]) == 0
    scaled, plain = output_paths(out, "ij"), output_paths(out, "plain")
    # ImageJ's "micron" goes on as a physical size: pixels per centimetre, read back in µm
    assert resolution_tags(scaled["labels"]) == ((200000, 13), (200000, 13), 3)
    assert read_tiff_pixel_size(scaled["instances"]) == PixelSize(0.65, 0.65, "µm")
    record = read_run_json(scaled["run"])
    assert record["pixel_size"] == [0.65, 0.65] and record["pixel_unit"] == "µm"
    assert read_tiff_pixel_size(plain["labels"]) is None
    assert "pixel_size" not in read_run_json(plain["run"])
