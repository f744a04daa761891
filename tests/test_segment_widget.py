"""The napari "Segment" widget on a real viewer (pytest-xvfb provides the X server).

The model is a tiny, randomly initialised resnet18 semi-conv Mask R-CNN saved as a real
checkpoint; with the score threshold at 0 and the mask threshold at 0 it returns its capped
number of detections, so every run has worms to show and export.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("ignore:System theme detection:UserWarning"),
]

LONG = 60_000  # ms: a run on 2 shared CPU cores


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import torch
    from reliability_kit import tiny_config

    from napari_semiconv.core.checkpoint import save_checkpoint
    from napari_semiconv.core.model.builder import build_model

    torch.manual_seed(0)
    config = tiny_config("brightfield")
    model = build_model(config).eval()
    card = {"name": "tiny-test", "data": "none (random weights)", "metrics": {"AP": 0.0}}
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", model, card)


def test_widget_module_imports_neither_torch_nor_the_core_model():
    import subprocess
    import sys

    code = "import sys, napari_semiconv.plugin.segment_widget; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _worm_image(height: int = 128, width: int = 160, seed: int = 0) -> np.ndarray:
    """A few bright thick bands on a noisy background: enough structure for a forward pass."""
    rng = np.random.default_rng(seed)
    image = 0.2 + 0.05 * rng.standard_normal((height, width))
    rows, cols = np.mgrid[:height, :width]
    for k in range(3):
        a, b = rng.uniform(-0.6, 0.6), rng.uniform(0.2, 0.8) * height
        image[np.abs(rows - (a * cols + b)) < 3 + k] = 0.8
    return (image * 1000).astype(np.uint16)


@pytest.fixture
def widget(make_napari_viewer, tiny_model):
    from napari_semiconv.plugin.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment")
    w.set_model(str(tiny_model))
    w.device_combo.setCurrentText("cpu")
    w.score_spin.setValue(0.0)
    w.mask_spin.setValue(0.0)
    return w


def test_thresholds_follow_the_models_kind(make_napari_viewer, tiny_model, tmp_path):
    from napari_semiconv.core.checkpoint import save_checkpoint
    from napari_semiconv.core.inference import load_model
    from napari_semiconv.core.model_store import resolve_model_path
    from napari_semiconv.core.refine import postprocess_defaults
    from napari_semiconv.plugin.segment_widget import SegmentWidget

    w = SegmentWidget(make_napari_viewer())
    kinds = {k: postprocess_defaults(k) for k in ("binary", "brightfield", "cascade")}
    assert len({tuple(d.values()) for d in kinds.values()}) == 3

    def shown() -> dict[str, float]:
        return {
            "score_threshold": w.score_spin.value(),
            "mask_threshold": w.mask_spin.value(),
            "max_overlap": w.overlap_spin.value(),
        }

    assert w.set_model("worms-binary")
    assert shown() == pytest.approx(kinds["binary"])
    assert not w.cut_spin.isEnabled() and w.foreground_cut() is None
    # the tiny bright-field model has no foreground U-Net: a plain bright-field Mask R-CNN
    assert w.set_model(str(tiny_model))
    assert shown() == pytest.approx(kinds["brightfield"])
    assert w.foreground_cut() is None
    # worms-brightfield is a cascade: its own defaults (chosen on its training wells), and
    # its U-Net's cut, which only a cascade has
    assert w.set_model("worms-brightfield")
    assert shown() == pytest.approx(kinds["cascade"])
    cut = load_model("worms-brightfield", device="cpu").config.foreground_threshold
    assert w.cut_spin.isEnabled() and w.foreground_cut() == pytest.approx(cut)
    # a user's value survives a change to another model of the same kind (the bundled binary
    # model's file, chosen as a file)
    assert w.set_model("worms-binary")
    w.mask_spin.setValue(0.65)
    assert w.set_model(str(resolve_model_path("worms-binary")[0]))
    assert w.mask_spin.value() == pytest.approx(0.65)
    # a model whose card records its own thresholds (tune-thresholds) gets those
    model = load_model("worms-binary", device="cpu")
    own = {"score_threshold": 0.65, "mask_threshold": 0.45, "max_overlap": 0.25}
    tuned = save_checkpoint(tmp_path / "tuned.pt", model, {**model.card, "postprocess": own})
    assert w.set_model(str(tuned))
    assert shown() == pytest.approx(own)


def _run(qtbot, w) -> None:
    assert w.segment() is not None
    qtbot.waitUntil(lambda: not w.running, timeout=LONG)


def _errors() -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records]


def test_segment_adds_three_layers_and_reuses_them(qtbot, widget):
    viewer = widget.viewer
    viewer.add_image(_worm_image(), name="worms", scale=(2.0, 3.0), translate=(5.0, 7.0))
    widget.refresh_images()
    assert widget.model_choice().endswith("tiny.pt")
    assert "tiny-test" in widget.card_label.text() and "brightfield" in widget.card_label.text()
    _run(qtbot, widget)
    labels = viewer.layers["worms worms"]
    vectors = viewer.layers["worms displacement"]
    votes = viewer.layers["worms votes"]
    assert type(labels).__name__ == "Labels" and labels.data.shape == (128, 160)
    assert type(vectors).__name__ == "Vectors" and vectors.data.shape[1:] == (2, 2)
    assert type(votes).__name__ == "Image" and votes.data.shape == (128, 160)
    assert votes.visible is False
    for layer in (labels, vectors, votes):
        np.testing.assert_allclose(layer.scale, (2.0, 3.0))
        np.testing.assert_allclose(layer.translate, (5.0, 7.0))
    result = widget.last_result
    n = result.n_worms
    assert n > 0
    assert labels.data.max() <= n
    for column in ("index", "score", "area", "length", "width", "straightness"):
        assert column in labels.features.columns
    assert len(labels.features) == n
    # hovering a worm shows its row of the table in napari's status bar
    row, col = np.argwhere(labels.data > 0)[0]
    status = labels.get_status((row, col))["coordinates"]
    assert "score:" in status and "straightness:" in status
    instances = result.planes[0][1]
    np.testing.assert_array_equal(labels.data, instances.labels())
    np.testing.assert_array_equal(labels.features["area"], instances.masks.sum(axis=(1, 2)))
    # arrows start on segmented pixels of the stride grid
    starts = vectors.data[:, 0].astype(int)
    assert (starts % widget.stride_spin.value() == 0).all()
    assert instances.masks.any(axis=0)[starts[:, 0], starts[:, 1]].all()
    # the votes of all foreground pixels (blurred, so up to what spills over the border)
    assert votes.data.sum() == pytest.approx(instances.masks.any(axis=0).sum(), rel=0.05)
    assert f"{n} worms" in widget.result_label.text() and "cpu" in widget.result_label.text()
    assert result.device == "cpu"

    # a re-run updates the same three layers instead of adding new ones
    count = len(viewer.layers)
    widget.stride_spin.setValue(1)
    _run(qtbot, widget)
    assert len(viewer.layers) == count
    assert viewer.layers["worms worms"] is labels
    assert viewer.layers["worms displacement"] is vectors
    assert len(vectors.data) >= len(starts)

    # a worms layer the user has edited is never overwritten: the next run goes beside it
    labels.data[labels.data == 1] = 0
    labels.data[:4, :4] = 99
    edited = labels.data.copy()
    _run(qtbot, widget)
    assert viewer.layers["worms worms"] is labels
    np.testing.assert_array_equal(labels.data, edited)
    new = viewer.layers["worms worms [1]"]
    np.testing.assert_array_equal(new.data, widget.last_result.planes[0][1].labels())
    assert "'worms worms' was edited, so it was kept" in widget.result_label.text()
    assert viewer.layers["worms displacement"] is vectors  # arrows are not the user's work
    _run(qtbot, widget)  # the new layer, unedited, is the one re-used from now on
    assert viewer.layers["worms worms [1]"] is new and "[2]" not in " ".join(
        layer.name for layer in viewer.layers
    )
    np.testing.assert_array_equal(labels.data, edited)


def test_a_worms_layer_from_elsewhere_is_not_overwritten(qtbot, widget):
    # e.g. "<stem> worms" opened from an exported file, or drawn by hand under that name
    viewer = widget.viewer
    viewer.add_image(_worm_image(), name="plate")
    theirs = np.zeros((128, 160), np.uint16)
    theirs[10:20, 10:90] = 1
    viewer.add_labels(theirs.copy(), name="plate worms")
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("plate"))
    _run(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers["plate worms"].data, theirs)
    assert "plate worms [1]" in viewer.layers


def test_stack_is_segmented_plane_by_plane_and_cancel_leaves_no_layer(qtbot, widget, tmp_path):
    from napari_semiconv.plugin._pickers import ALL_PLANES

    viewer = widget.viewer
    stack = np.stack([_worm_image(96, 144, seed=s) for s in range(3)])
    viewer.add_image(stack, name="zstack", metadata={"sample": "z"})
    widget.refresh_images()
    # a leading axis of 3 may be channels or a short stack: the widget asks, defaulting to
    # channel 0; here it is a Z stack
    assert widget.channel_combo.isVisibleTo(widget)
    assert widget.channel_combo.count() == 4
    widget.channel_combo.setCurrentIndex(widget.channel_combo.findText(ALL_PLANES))

    def cancel_on_second_plane(update):
        if update.text.startswith("plane 2/"):
            widget.cancel()

    worker = widget.segment()
    worker.yielded.connect(cancel_on_second_plane)
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG)
    assert "Cancelled" in widget.result_label.text()
    assert [layer.name for layer in viewer.layers] == ["zstack"]
    assert widget.last_result is None
    assert widget.segment_button.isEnabled() and not widget.cancel_button.isEnabled()

    _run(qtbot, widget)
    labels = viewer.layers["zstack worms"]
    assert labels.data.shape == (3, 96, 144)
    assert viewer.layers["zstack votes"].data.shape == (3, 96, 144)
    vec = viewer.layers["zstack displacement"].data
    assert vec.shape[1:] == (2, 3) and (vec[:, 1, 0] == 0).all()
    assert labels.metadata["sample"] == "z" and "napari_semiconv" in labels.metadata
    features = labels.features
    assert list(features["plane_0"]) == sorted(features["plane_0"])
    # worm ids are numbered 1..n over the whole stack; each plane shows only its own ids (a worm
    # entirely under a higher-scored one may be absent from the label image, never misplaced)
    np.testing.assert_array_equal(features["index"], np.arange(1, len(features) + 1))
    for plane in range(3):
        shown = set(np.unique(labels.data[plane])) - {0}
        assert shown <= set(features["index"][features["plane_0"] == plane])

    import tifffile

    # a stack exports one set of four files per plane; a correction in plane 0 changes plane 0
    # only (plane 1's worms, numbered on from plane 0's in the layer, were all taken for new)
    labels.data[0, 0, 0] = labels.data.max() + 1
    labels.data = labels.data.copy()
    paths = widget.export_to(tmp_path / "zstack")
    assert paths is not None and len(paths) == 12
    assert (tmp_path / "zstack_plane2_labels.tif").is_file()
    record = json.loads((tmp_path / "zstack_plane1_run.json").read_text())
    assert record["plane"] == [1]
    assert record["edited"] == {
        "layer": "zstack worms", "changed": [], "added": [], "removed": []
    }  # fmt: skip
    run_plane1 = widget.last_result.planes[1][1]
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "zstack_plane1_instances.tif").astype(bool),
        run_plane1.masks.reshape(-1, *run_plane1.masks.shape[1:]),
    )
    assert len(json.loads((tmp_path / "zstack_plane0_run.json").read_text())["edited"]["added"])
    # `predict` replays a plane of the stack from its record (it refused the 3-D file)
    from napari_semiconv.cli.main import main

    tifffile.imwrite(tmp_path / "zstack.tif", stack)
    argv = ["predict", str(tmp_path / "zstack.tif"), "--out", str(tmp_path / "replay")]
    assert main([*argv, "--from-run", str(tmp_path / "zstack_plane1_run.json")]) == 0
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "replay" / "zstack_labels.tif"),
        tifffile.imread(tmp_path / "zstack_plane1_labels.tif"),
    )


def test_results_land_on_the_original_image_after_switching(qtbot, widget):
    viewer = widget.viewer
    viewer.add_image(_worm_image(seed=1), name="first", scale=(0.5, 0.5))
    viewer.add_image(_worm_image(seed=2), name="second", scale=(4.0, 4.0))
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("first"))
    worker = widget.segment()
    assert worker is not None
    # the user switches images while the run is going
    viewer.layers.selection.active = viewer.layers["second"]
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("second"))
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG)
    assert "first worms" in viewer.layers and "second worms" not in viewer.layers
    np.testing.assert_allclose(viewer.layers["first worms"].scale, (0.5, 0.5))


def test_second_click_while_running_starts_no_second_worker(qtbot, widget):
    viewer = widget.viewer
    viewer.add_image(_worm_image(), name="img")
    widget.refresh_images()
    widget.segment_button.click()  # the button starts a run like segment() does
    first = widget.worker
    assert first is not None and widget.running
    assert not widget.segment_button.isEnabled()
    assert widget.segment() is None
    widget.segment_button.click()  # disabled: does nothing
    assert widget.worker is first and widget.runs_started == 1
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG)
    names = [layer.name for layer in viewer.layers]
    assert [n for n in names if n.endswith("worms")] == ["img worms"]


def test_export_writes_four_files_and_the_cli_replays_them(qtbot, widget, tmp_path):
    import tifffile

    from napari_semiconv.cli.main import main

    image = _worm_image(seed=3)
    image_path = tmp_path / "plate.tif"
    tifffile.imwrite(image_path, image)
    widget.viewer.add_image(image, name="plate")
    widget.refresh_images()
    # with test-time augmentation (4 views), recorded for the replay below
    widget.views_combo.setCurrentIndex(widget.views_combo.findData(4))
    _run(qtbot, widget)
    assert widget.last_result.run_info["settings"]["views"] == 4
    assert widget.export_button.isEnabled()
    paths = widget.export_to(tmp_path / "out" / "plate")
    assert paths is not None
    assert sorted(p.name for p in paths.values()) == [
        "plate_instances.tif",
        "plate_labels.tif",
        "plate_measurements.csv",
        "plate_run.json",
    ]
    labels = tifffile.imread(paths["labels"])
    np.testing.assert_array_equal(labels, widget.viewer.layers["plate worms"].data)
    assert tifffile.imread(paths["instances"]).shape[0] == widget.last_result.n_worms

    # never overwritten silently: a message, nothing written
    before = {p: p.stat().st_mtime_ns for p in paths.values()}
    n_records = len(_errors())
    assert widget.export_to(tmp_path / "out" / "plate") is None
    assert any("overwrite" in m for m in _errors()[n_records:])
    assert {p: p.stat().st_mtime_ns for p in paths.values()} == before

    # `napari-semiconv predict IMAGE --from-run RUN.json --out DIR` gives the same labels
    replay = tmp_path / "replay"
    argv = ["predict", str(image_path), "--from-run", str(paths["run"]), "--out", str(replay)]
    assert main(argv) == 0
    replayed = sorted(replay.glob("*_labels.tif"))
    assert len(replayed) == 1
    np.testing.assert_array_equal(tifffile.imread(replayed[0]), labels)


def test_export_carries_the_image_layers_unit(qtbot, widget, tmp_path):
    from napari_semiconv.core.export import read_run_json, read_tiff_pixel_size
    from napari_semiconv.core.pixel_size import PixelSize

    if not hasattr(widget.viewer.add_image(np.zeros((4, 4)), name="probe"), "units"):
        pytest.skip("napari before 0.6 has no layer units")
    widget.viewer.layers.remove("probe")
    image = _worm_image(seed=3)
    widget.viewer.add_image(image, name="plate", scale=(0.65, 0.65), units=("µm", "µm"))
    widget.viewer.add_image(image, name="plain", scale=(0.65, 0.65))  # napari's "pixel"
    widget.refresh_images()
    for name, unit in (("plate", "µm"), ("plain", None)):
        widget.image_combo.setCurrentIndex(widget.image_combo.findText(name))
        assert widget._request().pixel_unit == unit
        _run(qtbot, widget)
        paths = widget.export_to(tmp_path / name)
        assert read_run_json(paths["run"]).get("pixel_unit") == unit
        for key in ("labels", "instances"):
            assert read_tiff_pixel_size(paths[key]) == PixelSize(0.65, 0.65, unit)


def test_export_writes_the_worms_as_the_user_corrected_them(qtbot, widget, tmp_path):
    import json

    import pandas as pd
    import tifffile

    viewer = widget.viewer
    viewer.add_image(_worm_image(seed=3), name="plate")
    widget.refresh_images()
    _run(qtbot, widget)
    layer = viewer.layers["plate worms"]
    n = widget.last_result.n_worms
    assert n >= 2
    data = layer.data.copy()
    data[data == 1] = 0  # a false worm erased
    data[2:6, 2:40] = 99  # a missed worm drawn
    layer.data = data
    paths = widget.export_to(tmp_path / "plate")
    assert paths is not None and "with your corrections in 'plate worms'" in (
        widget.result_label.text()
    )
    labels = tifffile.imread(paths["labels"])
    # the same worms as the layer, pixel for pixel (numbered 1..N in the files)
    pairs = {(int(a), int(b)) for a, b in zip(labels.ravel(), layer.data.ravel(), strict=True)}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    assert (labels == 0).sum() == (layer.data == 0).sum()
    table = pd.read_csv(paths["measurements"])
    assert len(table) == n and 1.0 in set(table["score"])  # n - 1 of the run's, 1 drawn
    record = json.loads(paths["run"].read_text())
    assert record["edited"]["layer"] == "plate worms"
    assert record["edited"]["added"] == [99] and record["edited"]["removed"] == [1]
    # an unedited layer exports the run as it was found, overlaps included
    _run(qtbot, widget)
    again = widget.export_to(tmp_path / "again")
    assert "edited" not in json.loads(again["run"].read_text())
    assert "corrections" not in widget.result_label.text()


def test_outputs_lie_on_a_turned_sheared_image_and_lose_the_turn_with_it(qtbot, widget):
    viewer = widget.viewer
    turn = {
        "rotate": 30.0,
        "shear": [0.3],
        "affine": [[1.0, 0.1, 4.0], [0.0, 1.2, -2.0], [0, 0, 1]],
    }
    image = viewer.add_image(
        _worm_image(96, 144), name="turned", scale=(2.0, 3.0), translate=(5.0, 7.0), **turn
    )
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("turned"))
    _run(qtbot, widget)
    points = [(0, 0), (95, 143), (40, 17)]
    for name in ("turned worms", "turned displacement", "turned votes"):
        layer = viewer.layers[name]
        for point in points:
            np.testing.assert_allclose(
                layer.data_to_world(point), image.data_to_world(point), atol=1e-9
            )
    # the image put straight again: the re-used layers are straight too
    image.rotate, image.shear, image.affine = 0.0, [0.0], np.eye(3)
    _run(qtbot, widget)
    labels = viewer.layers["turned worms"]
    np.testing.assert_allclose(labels.data_to_world((95, 143)), (5.0 + 2 * 95, 7.0 + 3 * 143))
    # a channel axis taken out of a stack turned in its last two axes: the turn stays
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    stack = np.stack([np.zeros((96, 144), np.uint16), _worm_image(96, 144)])
    rotate = [[1, 0, 0], [0, c, -s], [0, s, c]]
    layer = viewer.add_image(stack, name="chan", scale=(1.0, 2.0, 3.0), rotate=rotate)
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("chan"))
    widget.channel_combo.setCurrentIndex(1)
    _run(qtbot, widget)
    labels = viewer.layers["chan worms"]
    assert labels.data.shape == (96, 144)
    np.testing.assert_allclose(
        labels.data_to_world((95, 143)), layer.data_to_world((1, 95, 143))[1:], atol=1e-9
    )


def test_channels_and_rgb(qtbot, widget, tmp_path):
    viewer = widget.viewer
    two = np.stack([np.zeros((96, 144), np.uint16), _worm_image(96, 144)], axis=-1)
    viewer.add_image(two, name="twochan", rgb=False)
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("twochan"))
    assert widget.channel_combo.isVisibleTo(widget)
    assert widget.channel_combo.count() == 2  # channel-last: no "all planes" choice
    widget.channel_combo.setCurrentIndex(1)
    _run(qtbot, widget)
    assert viewer.layers["twochan worms"].data.shape == (96, 144)
    assert widget.last_result.run_info["image"]["channel"] == 1
    assert widget.last_result.n_worms > 0
    # `predict` replays the channel the run took from the two-channel file
    import tifffile

    from napari_semiconv.cli.main import main

    paths = widget.export_to(tmp_path / "twochan")
    tifffile.imwrite(tmp_path / "twochan.tif", two, photometric="minisblack")
    argv = ["predict", str(tmp_path / "twochan.tif"), "--out", str(tmp_path / "replay")]
    assert main([*argv, "--from-run", str(paths["run"])]) == 0
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "replay" / "twochan_labels.tif"),
        tifffile.imread(paths["labels"]),
    )

    grey = _worm_image(96, 144).astype(np.float32) / 1000
    rgb = np.stack([grey, grey, grey], axis=-1)
    viewer.add_image(rgb, name="colour", rgb=True)
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("colour"))
    assert not widget.channel_combo.isVisibleTo(widget)
    _run(qtbot, widget)
    assert viewer.layers["colour worms"].data.shape == (96, 144)


def test_the_channel_choice_follows_a_changed_layer_and_a_multiscale_image(qtbot, widget):
    viewer = widget.viewer
    three = np.stack([np.zeros((96, 112), np.uint16), _worm_image(96, 112), _worm_image(96, 112)])
    layer = viewer.add_image(three, name="img")
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("img"))
    widget.channel_combo.setCurrentIndex(1)
    # the layer's data replaced by one plane: the stale list made Segment fail on "(112,)"
    layer.data = _worm_image(96, 112)
    assert not widget.channel_combo.isVisibleTo(widget)
    _run(qtbot, widget)
    assert viewer.layers["img worms"].data.shape == (96, 112)
    # a 3-channel pyramid gets the same choice as the same data flat (it was 3 planes)
    pyramid = viewer.add_image([three, three[:, ::2, ::2]], multiscale=True, name="pyramid")
    assert pyramid.multiscale
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("pyramid"))
    assert widget.channel_combo.isVisibleTo(widget) and widget.channel_combo.count() == 4
    widget.channel_combo.setCurrentIndex(1)
    _run(qtbot, widget)
    assert viewer.layers["pyramid worms"].data.shape == (96, 112)


def test_clear_messages_and_no_half_made_layers(qtbot, widget):
    viewer = widget.viewer
    n_records = len(_errors())
    assert widget.segment() is None  # no image layer
    assert any("No image layer" in m for m in _errors()[n_records:])

    viewer.add_image(np.zeros((10, 10), np.uint16) + np.eye(10, dtype=np.uint16), name="tiny")
    widget.refresh_images()
    n_records = len(_errors())
    _run(qtbot, widget)  # too small for the model: the core refuses it
    assert any("too small" in m for m in _errors()[n_records:])
    assert [layer.name for layer in viewer.layers] == ["tiny"]
    assert "Failed" in widget.result_label.text()

    widget.set_model(str(Path(__file__)))  # not a checkpoint: refused when chosen
    assert any("not a checkpoint" in m or "text file" in m for m in _errors())
    assert widget.model_choice().endswith("tiny.pt")


def test_choose_thresholds_on_a_labels_layer(qtbot, make_napari_viewer):
    # the user's labels are the truth: the widget ends up with the setting that reproduces them
    # best, as the core search scores it on the same image
    from napari_semiconv.core.data.arrays import labels_to_masks
    from napari_semiconv.core.data.sample import Sample
    from napari_semiconv.core.inference import load_model
    from napari_semiconv.core.measurements import labels_from_instances
    from napari_semiconv.core.preprocess import normalise
    from napari_semiconv.core.synthetic.worms import synthetic_worms
    from napari_semiconv.core.threshold_search import best_setting, search_thresholds
    from napari_semiconv.plugin._tune_worker import MASK_THRESHOLDS, MAX_OVERLAPS, SCORE_THRESHOLDS
    from napari_semiconv.plugin.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    image, masks = synthetic_worms(seed=3, render="binary")
    viewer.add_image(image, name="well")
    viewer.add_labels(labels_from_instances(masks), name="truth")
    viewer.add_labels(np.zeros((10, 10), np.uint16), name="wrong size")
    w = SegmentWidget(viewer)
    assert w.set_model("worms-binary")
    w.device_combo.setCurrentText("cpu")
    start = (0.9, 0.5, 1.0)  # poor thresholds: most worms dropped, duplicates kept
    for spin, value in zip(w.spins(), start, strict=True):
        spin.setValue(value)

    # labels that do not fit the image: a message, the thresholds untouched
    w.tuner.labels_combo.setCurrentIndex(w.tuner.labels_combo.findText("wrong size"))
    assert w.tuner.start() is not None
    qtbot.waitUntil(lambda: not w.tuner.running, timeout=LONG)
    assert "not changed" in w.result_label.text() and "do not match" in w.result_label.text()
    assert tuple(s.value() for s in w.spins()) == pytest.approx(start)

    w.tuner.labels_combo.setCurrentIndex(w.tuner.labels_combo.findText("truth"))
    assert w.tuner.start() is not None
    qtbot.waitUntil(lambda: not w.tuner.running, timeout=LONG)
    model = load_model("worms-binary", device="cpu")
    # the truth is the labels layer, where overlapping worms lost their shared pixels to one
    # of them, not the overlapping masks it was drawn from
    truth = labels_to_masks(viewer.layers["truth"].data, image.shape)
    sample = Sample(normalise(image, "binary"), truth, "well")
    rows = search_thresholds(
        model,
        [sample],
        sorted({*SCORE_THRESHOLDS, start[0]}),
        sorted({*MASK_THRESHOLDS, start[1]}),
        sorted({*MAX_OVERLAPS, start[2]}),
    )
    best = best_setting(rows, "avS")
    chosen = tuple(s.value() for s in w.spins())
    assert chosen == pytest.approx(
        (best["score_threshold"], best["mask_threshold"], best["max_overlap"])
    )
    assert chosen != pytest.approx(start)
    text = w.result_label.text()
    assert "Thresholds chosen on 'truth'" in text and f"avS {best['avS']:.3f}" in text


def test_a_cascades_foreground_cut_reaches_the_run_and_its_record(qtbot, make_napari_viewer):
    # the Foreground cut is what the core cuts the U-Net's map at, and what the record replays
    from napari_semiconv.core.synthetic.worms import synthetic_worms
    from napari_semiconv.plugin.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    image, _ = synthetic_worms(seed=3, shape=(160, 200), render="brightfield")
    viewer.add_image(image, name="well")
    w = SegmentWidget(viewer)
    assert w.set_model("worms-brightfield")
    w.device_combo.setCurrentText("cpu")
    w.cut_spin.setValue(0.85)
    _run(qtbot, w)
    result = w.last_result
    assert result.run_info["settings"]["foreground_threshold"] == pytest.approx(0.85)
    ((_, found),) = result.planes
    assert found.foreground is not None and len(found) > 0
    assert not (found.masks & ~(found.foreground > 0.85)).any()
    # the run does not change the model's own cut (the next run at another cut differs)
    w.cut_spin.setValue(0.3)
    _run(qtbot, w)
    ((_, lower),) = w.last_result.planes
    assert lower.masks.any(axis=0).sum() > found.masks.any(axis=0).sum()
    # a binary-input model has no cut: none is sent, none recorded
    assert w.set_model("worms-binary")
    assert w._request().foreground_threshold is None


def test_choosing_thresholds_for_a_cascade_chooses_its_cut_too(qtbot, make_napari_viewer):
    from napari_semiconv.core.measurements import labels_from_instances
    from napari_semiconv.core.refine import FOREGROUND_CUT_GRID
    from napari_semiconv.core.synthetic.worms import synthetic_worms
    from napari_semiconv.plugin._tune_worker import run_tuning
    from napari_semiconv.plugin._workers import ModelCache
    from napari_semiconv.plugin.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    image, masks = synthetic_worms(seed=4, shape=(160, 200), render="brightfield")
    viewer.add_image(image, name="well")
    viewer.add_labels(labels_from_instances(masks), name="truth")
    w = SegmentWidget(viewer)
    assert w.set_model("worms-brightfield")
    w.device_combo.setCurrentText("cpu")
    w.cut_spin.setValue(0.35)  # off the grid: scored as the current setting
    w.tuner.labels_combo.setCurrentIndex(w.tuner.labels_combo.findText("truth"))
    request = w.tuner._request()
    assert request.foreground_threshold == pytest.approx(0.35)
    steps = run_tuning(request, ModelCache())
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            result = stop.value
            break
    cuts = {r["foreground_threshold"] for r in result.rows}
    assert cuts == {*FOREGROUND_CUT_GRID, 0.35}
    assert result.current is not None and result.current["foreground_threshold"] == 0.35
    assert result.best["avS"] == max(r["avS"] for r in result.rows)
    # the widget takes the best setting, its cut included
    w.tuner._on_returned(result)
    assert w.cut_spin.value() == pytest.approx(result.best["foreground_threshold"])
    assert "foreground cut" in w.result_label.text()


def test_thresholds_chosen_for_another_model_are_not_applied(make_napari_viewer):
    # the model list stays live while choosing runs: a result for the model the user has since
    # left must not overwrite the new model's thresholds
    from napari_semiconv.plugin._tune_worker import TuneRequest, TuneResult
    from napari_semiconv.plugin.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    assert w.set_model("worms-brightfield")
    before = (tuple(s.value() for s in w.spins()), w.cut_spin.value())
    best = {"score_threshold": 0.1, "mask_threshold": 0.2, "max_overlap": 0.9, "avS": 0.5}
    best |= {"AP": 0.5, "foreground_threshold": 0.4}
    request = TuneRequest(
        "well", "truth", np.zeros((8, 8)), np.zeros((8, 8), int), "worms-binary", "cpu", {}
    )
    w.tuner._on_returned(TuneResult(request, best, None, [best]))
    assert (tuple(s.value() for s in w.spins()), w.cut_spin.value()) == before
    assert "Thresholds not changed" in w.result_label.text()
    assert "'worms-binary'" in w.result_label.text()
    # the same result for the model in the widget is applied
    assert w.set_model("worms-binary")
    w.tuner._on_returned(TuneResult(request, best, None, [best]))
    assert tuple(s.value() for s in w.spins()) == pytest.approx((0.1, 0.2, 0.9))


def test_the_model_card_shows_the_models_own_figures_first():
    from napari_semiconv.core.model_store import list_models
    from napari_semiconv.plugin._cards import card_text

    (row,) = [r for r in list_models() if r["name"] == "worms-brightfield"]
    lines = card_text(row).splitlines()
    keys = [line.split(":")[0] for line in lines]
    # the cascade's own held-out metrics, before its history and the detector's entries
    assert keys[:3] == ["name", "description", "metrics"]
    assert f"AP {row['card']['metrics']['AP']:.3g}" in lines[2]
    assert keys.index("metrics") < keys.index("detector metrics")
    assert "versions" not in keys
