"""The napari "Fine-tune" widget on a real viewer (pytest-xvfb provides the X server).

A tiny random resnet18 base model is fine-tuned for a few steps on two synthetic worm images:
the loss curve grows, Cancel keeps the last checkpoint, Resume continues it, and the new model
shows up in list_models() and in an open Segment widget's model list at once.
"""

from __future__ import annotations

import numpy as np
import pytest
from toy_worms import tiny_model_config, toy_worms

from napari_semiconv.core.measurements import labels_from_instances

pytestmark = pytest.mark.gui

LONG = 60_000  # ms, on 2 shared CPU cores


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("SEMICONV_MODEL_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    import torch

    from napari_semiconv.core.checkpoint import save_checkpoint
    from napari_semiconv.core.model.builder import build_model

    torch.manual_seed(0)
    model = build_model(tiny_model_config(input_mode="binary"))
    return save_checkpoint(tmp_path_factory.mktemp("base") / "tiny-base.pt", model, {"name": "b"})


@pytest.fixture
def widget(make_napari_viewer, model_dir, base_model):
    from napari_semiconv.plugin.finetune_widget import FineTuneWidget

    viewer = make_napari_viewer()
    w = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(w, name="Fine-tune")
    assert w.set_model(str(base_model))
    w.device_combo.setCurrentText("cpu")
    w.batch_spin.setValue(1)
    w.crop_spin.setValue(96)
    return w


def _add_pair(viewer, name: str, seed: int):
    image, masks = toy_worms((128, 128), n=3, seed=seed)
    viewer.add_image(image, name=name)
    viewer.add_labels(labels_from_instances(masks), name=f"{name} labels")
    return viewer.layers[name], viewer.layers[f"{name} labels"]


def _errors() -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records]


def _refused(w, text: str) -> None:
    n = len(_errors())
    assert w.train() is None and not w.running
    assert text in w.status_label.text()
    assert any(text in m for m in _errors()[n:])


def test_bad_input_gives_a_message_and_starts_nothing(widget, model_dir):
    viewer = widget.viewer
    _refused(widget, "a pair needs an image and a Labels layer")
    widget.remove_pair(widget.rows[0])
    _refused(widget, "no training pairs")

    image, labels = _add_pair(viewer, "a", 0)
    row = widget.add_pair(image, labels)
    viewer.add_labels(np.zeros((128, 128), np.uint8), name="empty")
    row.select(labels="empty")
    _refused(widget, "no labelled worm")
    viewer.add_labels(np.zeros((64, 64), np.uint8), name="small")
    row.select(labels="small")
    _refused(widget, "is 128x128 but labels 'small' are 64x64")
    giant = np.zeros((128, 128), np.uint8)
    giant[10:120, 5:125] = 1
    viewer.add_labels(giant, name="mask")
    row.select(labels="mask")
    _refused(widget, "foreground mask")
    # a stack cannot be previewed: refused before training, not at the first preview
    row.select(labels="a labels")
    viewer.add_image(np.zeros((5, 64, 64), np.uint16), name="stack")
    widget.preview_combo.setCurrentIndex(widget.preview_combo.findText("stack"))
    _refused(widget, "the preview image 'stack' has shape (5, 64, 64)")
    assert not model_dir.exists()  # nothing was written


def test_a_preview_that_cannot_be_segmented_stops_the_preview_not_the_training(widget):
    from napari_semiconv.plugin._finetune_worker import run_finetune

    image, labels = _add_pair(widget.viewer, "a", 0)
    widget.rows[0].select(image, labels)
    widget.iter_spin.setValue(2)
    widget.preview_spin.setValue(1)
    updates, steps = [], run_finetune(widget.spec(), np.zeros((64, 64, 2), np.uint16))
    while True:
        try:
            updates.append(next(steps))
        except StopIteration as stop:
            result = stop.value
            break
    assert result.step == 2 and not [u for u in updates if u.kind == "preview"]
    stopped = [u.text for u in updates if u.kind == "message" and "preview stopped" in u.text]
    assert len(stopped) == 1 and "(64, 64, 2)" in stopped[0]


def test_correct_this_result_and_rectangles(widget):
    from napari_semiconv.plugin._layers import output_names

    viewer = widget.viewer
    assert widget.correct_result() is None
    assert "No Segment result" in widget.status_label.text()
    image, masks = toy_worms((128, 128), n=3, seed=4)
    viewer.add_image(image, name="plate")
    worms = viewer.add_labels(
        labels_from_instances(masks), name=output_names("plate")["labels"], rotate=20, shear=[0.2]
    )
    layer = widget.correct_result()
    assert layer.name == "plate corrections" and layer is not worms
    np.testing.assert_array_equal(layer.data, worms.data)
    # on the worms pixel for pixel, however they are turned
    np.testing.assert_allclose(layer.data_to_world((100, 7)), worms.data_to_world((100, 7)))
    layer.data[0:10, 0:10] = 7  # an edit touches only the copy
    assert worms.data[0:10, 0:10].max() < 7
    assert widget.rows[0].layers()[:2] == (viewer.layers["plate"], layer)
    assert widget.correct_result() is layer and len(widget.rows) == 1  # no duplicate pair
    # a re-run beside an edited worms layer ("plate worms [1]") is a result to correct too
    newer = viewer.add_labels(labels_from_instances(masks[:1]), name="plate worms [1]")
    from napari_semiconv.plugin._finetune_pairs import worms_layers

    assert [pair[1] for pair in worms_layers(viewer)] == [worms, newer]

    shapes = viewer.add_shapes(
        [np.array([[4.0, 6.0], [4.0, 100.0], [90.0, 100.0], [90.0, 6.0]])],
        shape_type="rectangle",
        name="checked",
    )
    widget.rows[0].select(region=shapes)
    spec = widget.spec()
    assert spec.pairs[0].rois == [(4, 6, 90, 100)]
    assert spec.pairs[0].image_name == "plate"
    assert spec.pairs[0].labels_name == "plate corrections"


def test_train_cancel_resume_and_the_model_is_listed(qtbot, widget, model_dir):
    from napari_semiconv.core.checkpoint import load_checkpoint
    from napari_semiconv.core.model_store import list_models
    from napari_semiconv.plugin.segment_widget import SegmentWidget

    viewer = widget.viewer
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment")
    first = _add_pair(viewer, "one", 1)
    second = _add_pair(viewer, "two", 2)
    widget.rows[0].select(*first)
    widget.add_pair(*second)
    widget.iter_spin.setValue(40)
    widget.preview_spin.setValue(2)
    widget.preview_combo.setCurrentIndex(widget.preview_combo.findText("one"))
    viewer.layers["one"].rotate = 20  # the preview lies on its image, turned or not
    widget.name_edit.setText("my worms")

    worker = widget.train()
    assert worker is not None and widget.running
    # the preview follows the checkpoint of step 2; cancel once both are in
    qtbot.waitUntil(lambda: "one preview" in viewer.layers and widget.last_step >= 2, timeout=LONG)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG)
    out = model_dir / "my-worms.pt"
    assert widget.last_output == out and out.is_file()
    assert "Cancelled" in widget.status_label.text()
    step = load_checkpoint(out).train_state["step"]
    assert 2 <= step < 40
    assert len(widget.curve) >= 2 and widget.curve.line.get_xdata()[0] == 1
    assert "one preview" in viewer.layers
    assert viewer.layers["one preview"].data.shape == (128, 128)
    np.testing.assert_allclose(
        viewer.layers["one preview"].data_to_world((100, 7)),
        viewer.layers["one"].data_to_world((100, 7)),
    )
    # listed at once, here and in the Segment widget
    assert "my-worms" in [m["name"] for m in list_models()]
    assert segment.model_combo.findData("my-worms") >= 0
    assert widget.model_combo.findData("my-worms") >= 0

    # a preview painted into is the user's: the next preview goes beside it
    painted = viewer.layers["one preview"]
    painted.data[:5, :5] = 77
    painted.refresh()
    painted.data = painted.data.copy()  # as a paint stroke would, the layer's data event

    # resume: the same model, from its checkpoint, to a shorter end
    widget.resume_check.setChecked(True)
    widget.iter_spin.setValue(step + 2)
    assert widget.name_edit.text() == "my-worms"
    assert widget.train() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG)
    assert "Saved my-worms" in widget.status_label.text(), widget.status_label.text()
    card = load_checkpoint(out).card
    assert card["step"] == step + 2
    assert [p["image"] for p in card["training_pairs"]] == ["one", "two"]
    assert "--layout folders --data" in card["command"]
    assert widget.curve.steps == list(range(1, step + 3))  # the earlier curve + 2 new points
    assert [m["name"] for m in list_models()].count("my-worms") == 1
    assert viewer.layers["one preview"] is painted and (painted.data[:5, :5] == 77).all()
    assert "one preview [1]" in viewer.layers

    # resuming to a step it has reached already trains nothing: said, not "Saved"
    assert widget.train() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG)
    assert f"already at step {step + 2}" in widget.status_label.text()
    assert load_checkpoint(out).card["step"] == step + 2


def test_the_training_settings_come_back_in_a_new_session(
    qtbot, widget, model_dir, base_model, make_napari_viewer
):
    import json
    import os
    from pathlib import Path

    from napari_semiconv.plugin._settings import FINETUNE_FILE
    from napari_semiconv.plugin.finetune_widget import EVERYTHING, FineTuneWidget

    assert widget.restored == []  # nothing remembered yet in this test's config folder
    widget.rows[0].select(*_add_pair(widget.viewer, "one", 1))
    widget.iter_spin.setValue(2)
    widget.minutes_spin.setValue(3.5)
    widget.lr_spin.setValue(0.001)
    widget.what_combo.setCurrentText(EVERYTHING)
    widget.preview_spin.setValue(7)
    widget.name_edit.setText("remembered")
    assert widget.train() is not None  # remembered when Train is clicked
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG)
    saved = json.loads((Path(os.environ["SEMICONV_CONFIG_DIR"]) / FINETUNE_FILE).read_text())
    assert saved["base"] == str(base_model) and saved["heads_only"] is False

    again = FineTuneWidget(make_napari_viewer())  # as after restarting napari
    assert again.models.choice() == str(base_model)
    assert again.device_combo.currentText() == "cpu"
    spins = (again.iter_spin, again.batch_spin, again.crop_spin)
    assert tuple(spin.value() for spin in spins) == (2, 1, 96)
    assert again.minutes_spin.value() == pytest.approx(3.5)
    assert again.lr_spin.value() == pytest.approx(0.001)
    assert again.what_combo.currentText() == EVERYTHING and again.preview_spin.value() == 7
    assert again.name_edit.text() == ""  # a new run needs a new name: never remembered
    assert set(again.restored) == {
        "base", "device", "iterations", "minutes", "lr", "batch_size", "crop", "preview_every",
        "heads_only",
    }  # fmt: skip


def test_the_widgets_as_napari_opens_them_pair_corrections_and_list_new_models(
    make_napari_viewer, model_dir, base_model
):
    # napari hands a plugin's widget a proxy of the viewer, whose layers are new proxy objects
    # at every access: "Correct this result" made the other plate's corrections and paired
    # plate B's image with plate A's uncorrected worms, and the open Segment widget was not
    # told of a new model. (The other tests build the widgets on the viewer itself.)
    import shutil

    from napari_semiconv.plugin._layers import output_names

    viewer = make_napari_viewer()
    _, segment = viewer.window.add_plugin_dock_widget("napari-semiconv", "Segment")
    _, widget = viewer.window.add_plugin_dock_widget("napari-semiconv", "Fine-tune")
    worms = {}
    for name, seed in (("plate A", 4), ("plate B", 5)):
        image, masks = toy_worms((128, 128), n=3, seed=seed)
        viewer.add_image(image, name=name)
        worms[name] = viewer.add_labels(
            labels_from_instances(masks), name=output_names(name)["labels"]
        )
    for name in ("plate A", "plate B"):
        viewer.layers.selection.active = worms[name]
        assert widget.correct_result().name == f"{name} corrections"
    pairs = [[layer.name for layer in row.layers()[:2]] for row in widget.rows]
    assert pairs == [["plate A", "plate A corrections"], ["plate B", "plate B corrections"]]
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(base_model, model_dir / "my-new-worms.pt")
    assert segment.model_combo.findData("my-new-worms") < 0
    widget.publish()
    assert segment.model_combo.findData("my-new-worms") >= 0


def test_a_folder_with_a_misnamed_label_file_says_what_it_left_out(qtbot, widget, tmp_path):
    # "w1 .tif" beside "w1.tif": the widget trained on the other images and said nothing
    from toy_worms import write_folders_dataset

    (tmp_path / "data").mkdir()
    data = write_folders_dataset(tmp_path / "data", (96, 96), 2, 0, "w")
    (data / "labels" / "w1.tif").rename(data / "labels" / "w1 .tif")
    widget.folder_radio.setChecked(True)
    widget.folder_edit.setText(str(data))
    widget.iter_spin.setValue(1)
    widget.name_edit.setText("from-folder")
    assert widget.train() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=LONG)
    status = widget.status_label.text()
    assert "Saved from-folder" in status
    assert "no label file of the same name in labels/: w1.tif" in status
    assert "no image of the same name in images/: w1 .tif" in status
