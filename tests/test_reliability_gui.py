"""The Segment widget under stress, on a real napari viewer (pytest-xvfb provides the X server).

Hostile model files through Browse…, bad images as layers, repeated clicks, Cancel in every
phase, closing the viewer or deleting the target layer during a run, failing exports and a GPU
out of memory. Each ends with a message or a result: no exception escapes into Qt (pytest-qt
fails a test on any exception raised in a Qt slot), no traceback notification, no worker left
running, and no layer changed by a run that failed or was cancelled.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest
from reliability_kit import HOSTILE_NAMES, fake_bundled_dir, hostile_model_files, save_tiny_model

pytestmark = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("ignore:System theme detection:UserWarning"),
    pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning"),
]

LONG = 60_000  # ms: a run on 2 shared CPU cores


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("gui")
    good = save_tiny_model(root / "tiny.pt", "brightfield")
    files = hostile_model_files(root / "hostile", good, root / "markers")
    return {"good": good, "files": files, "markers": root / "markers", "root": root}


def _image(height: int = 96, width: int = 112, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = 0.2 + 0.05 * rng.standard_normal((height, width))
    image[20:28, 10:100] = 0.9
    image[40:90, 50:57] = 0.9
    return (image * 1000).astype(np.uint16)


@pytest.fixture
def widget(make_napari_viewer, kit, monkeypatch, tmp_path):
    from napari_semiconv.plugin.segment_widget import SegmentWidget

    monkeypatch.setenv("SEMICONV_MODEL_DIR", str(tmp_path / "no-user-models"))
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment")
    assert w.set_model(str(kit["good"]))
    w.device_combo.setCurrentText("cpu")
    w.score_spin.setValue(0.0)
    w.mask_spin.setValue(0.0)
    yield w
    assert list(kit["markers"].iterdir()) == [], "a pickle payload ran"


def _messages() -> list:
    from napari.utils.notifications import notification_manager

    return list(notification_manager.records)


def _new_messages(since: int) -> list[str]:
    return [str(n.message) for n in _messages()[since:]]


def _no_tracebacks(since: int) -> None:
    """No notification carrying an exception (napari shows those with a traceback button)."""
    from napari.utils.notifications import ErrorNotification

    bad = [n for n in _messages()[since:] if isinstance(n, ErrorNotification)]
    assert bad == [], [str(n.message) for n in bad]


def _idle(qtbot, w) -> None:
    """Wait for the run to end and check that no worker thread is left behind."""
    from qtpy.QtCore import QThreadPool

    qtbot.waitUntil(lambda: not w.running, timeout=LONG)
    assert QThreadPool.globalInstance().waitForDone(LONG)
    assert QThreadPool.globalInstance().activeThreadCount() == 0
    assert w.worker is None
    assert w.segment_button.isEnabled() and not w.cancel_button.isEnabled()


def _layer_names(viewer) -> list[str]:
    return [layer.name for layer in viewer.layers]


# --------------------------------------------------------------------- hostile model files


def test_model_files_in_the_widget(qtbot, widget, kit, monkeypatch):
    _browse_refuses_hostile_files(widget, kit, monkeypatch)
    _foreign_architecture_fails_at_segment(qtbot, widget, kit)
    _bundled_model_with_wrong_sha256(qtbot, widget, kit, monkeypatch)


def _browse_refuses_hostile_files(widget, kit, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    from napari_semiconv.plugin._pickers import BROWSE

    start = len(_messages())
    chosen = widget.model_choice()
    for name in HOSTILE_NAMES:
        hostile = kit["files"][name]
        if not hostile.at_load:
            continue  # readable checkpoints whose weights do not fit: refused at Segment
        n = len(_messages())
        assert widget.set_model(str(hostile.path)) is False
        (message,) = _new_messages(n)
        assert hostile.path.name in message and re.search(hostile.reason, message), message
        assert widget.model_choice() == chosen
    # the real Browse… item, with the file dialog answering a hostile pickle
    hostile = kit["files"]["pickle-shell-proto2.pt"]
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(hostile.path), ""))
    browse = widget.model_combo.findText(BROWSE)
    widget.model_combo.setCurrentIndex(browse)
    widget.models._activated(browse)  # what choosing the item in the list does
    assert widget.model_choice() == chosen  # back on the model chosen before, not the first
    assert any("refused" in m for m in _new_messages(start))
    # the dialog cancelled: the choice is kept too
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: ("", ""))
    widget.model_combo.setCurrentIndex(browse)
    widget.models._activated(browse)
    assert widget.model_choice() == chosen
    _no_tracebacks(start)


def _foreign_architecture_fails_at_segment(qtbot, widget, kit):
    name = "other-architecture.pt"  # other-backbone.pt takes the same path (see test_..._files)
    viewer = widget.viewer
    viewer.add_image(_image(), name="plate")
    widget.refresh_images()
    hostile = kit["files"][name]
    assert widget.set_model(str(hostile.path))  # its card reads fine
    start = len(_messages())
    assert widget.segment() is not None
    _idle(qtbot, widget)
    message = " ".join(_new_messages(start))
    assert hostile.path.name in message and "another architecture" in message
    assert _layer_names(viewer) == ["plate"]
    assert "Failed" in widget.result_label.text()
    _no_tracebacks(start)


def _bundled_model_with_wrong_sha256(qtbot, widget, kit, monkeypatch):
    from napari_semiconv.core import model_store

    bundled = kit["root"] / "bundled"
    copy = fake_bundled_dir(bundled, kit["good"], name="worms-test")
    monkeypatch.setattr(model_store, "BUNDLED_DIR", bundled)
    widget.refresh_models()
    index = widget.model_combo.findData("worms-test")
    assert index >= 0
    widget.model_combo.setCurrentIndex(index)
    start = len(_messages())
    widget.segment()
    _idle(qtbot, widget)
    message = " ".join(_new_messages(start))
    assert "sha256 mismatch" in message and copy.name in message
    assert _layer_names(widget.viewer) == ["plate"]
    _no_tracebacks(start)


# --------------------------------------------------------------------- bad images as layers


def _nan_image():
    image = _image().astype(np.float32)
    image[3, 4] = np.nan
    return image


BAD_LAYERS = [
    ("nan", _nan_image, {}, r"NaN"),
    ("one-pixel", lambda: np.ones((1, 1), np.uint16), {}, r"too small|at least"),
    ("strip-4x2000", lambda: np.ones((4, 2000), np.uint8), {}, r"too small"),
]

GOOD_LAYERS = [
    ("rgb", lambda: np.repeat((_image() // 8).astype(np.uint8)[..., None], 3, axis=2), {}),
    ("rgba", lambda: np.dstack([np.repeat(_image()[..., None], 3, 2), _image()]), {"rgb": True}),
    ("bool", lambda: _image() > 500, {}),
    ("int8", lambda: (_image() // 10 - 100).astype(np.int8), {}),
    ("blank", lambda: np.zeros((96, 112), np.uint16), {}),
    ("4d-no-axes", lambda: np.stack([np.stack([_image(56, 64, s)] * 2) for s in range(2)]), {}),
]


def test_images_in_the_widget(qtbot, widget):
    _bad_images_give_a_message_and_no_layer(qtbot, widget)
    _odd_images_give_results(qtbot, widget)


def _bad_images_give_a_message_and_no_layer(qtbot, widget):
    viewer = widget.viewer
    start = len(_messages())
    for name, make, kwargs, words in BAD_LAYERS:
        viewer.add_image(make(), name=name, **kwargs)
        widget.image_combo.setCurrentIndex(widget.image_combo.findText(name))
        n = len(_messages())
        assert widget.segment() is not None, name
        _idle(qtbot, widget)
        assert any(re.search(words, m) for m in _new_messages(n)), (name, _new_messages(n))
        assert "Failed" in widget.result_label.text()
    assert _layer_names(viewer) == [b[0] for b in BAD_LAYERS]  # no output layer for any
    _no_tracebacks(start)


def _odd_images_give_results(qtbot, widget):
    viewer = widget.viewer
    start = len(_messages())
    for name, make, kwargs in GOOD_LAYERS:
        data = make()
        layer = viewer.add_image(data, name=name, **kwargs)
        widget.image_combo.setCurrentIndex(widget.image_combo.findText(name))
        if name == "4d-no-axes":  # a short leading axis: the widget offers channels or planes
            assert widget.channel_combo.isVisibleTo(widget)
        assert widget.segment() is not None, name
        _idle(qtbot, widget)
        assert "worms" in widget.result_label.text(), (name, widget.result_label.text())
        labels = viewer.layers[f"{name} worms"]
        spatial = layer.data.shape[:-1] if layer.rgb else layer.data.shape
        assert labels.data.shape[-2:] == spatial[-2:]
        if name == "blank":
            assert widget.last_result.n_worms == 0 and not labels.data.any()
    _no_tracebacks(start)


# --------------------------------------------------------------------- clicks and cancels


def test_clicks_and_cancels(qtbot, widget):
    _repeated_clicks_start_one_run_at_a_time(qtbot, widget)
    _cancel_in_every_phase(qtbot, widget)


def _repeated_clicks_start_one_run_at_a_time(qtbot, widget):
    viewer = widget.viewer
    viewer.add_image(_image(), name="plate")
    widget.refresh_images()
    start = len(_messages())
    for _ in range(5):
        widget.segment_button.click()
        widget.segment()
    assert widget.runs_started == 1
    _idle(qtbot, widget)
    for _ in range(3):  # one after the other: each runs, the same layers are re-used
        widget.segment_button.click()
        _idle(qtbot, widget)
    assert widget.runs_started == 4
    assert _layer_names(viewer) == ["plate", "plate votes", "plate worms", "plate displacement"]
    _no_tracebacks(start)


def _cancel_in_every_phase(qtbot, widget):
    viewer = widget.viewer
    viewer.add_image(_image(200, 220), name="big")
    widget.refresh_images()
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("big"))
    widget.tile_spin.setValue(64)  # 16 tiles: a run long enough to cancel in the middle
    start = len(_messages())
    names = _layer_names(viewer)

    text = widget.result_label.text()
    widget.cancel()  # no run going: nothing happens
    assert widget.result_label.text() == text and not widget.running

    # the moment it starts (before the model is even loaded)
    previous = widget.last_result
    worker = widget.segment()
    widget.cancel()
    widget.cancel()  # twice: harmless
    _idle(qtbot, widget)
    assert "Cancelled" in widget.result_label.text()
    assert _layer_names(viewer) == names and widget.last_result is previous

    # in the middle, on the third tile
    def cancel_at_tile_3(update):
        if update.total and update.done >= 3:
            widget.cancel()

    worker = widget.segment()
    worker.yielded.connect(cancel_at_tile_3)
    _idle(qtbot, widget)
    assert "Cancelled" in widget.result_label.text()
    assert _layer_names(viewer) == names and widget.last_result is previous

    # Segment again while a cancel is in flight: refused until the worker has stopped
    widget.segment()
    widget.cancel()
    assert widget.segment() is None
    _idle(qtbot, widget)

    # after a finished run: Cancel changes nothing
    widget.tile_spin.setValue(0)
    widget.segment()
    _idle(qtbot, widget)
    result, labels = widget.last_result, viewer.layers["big worms"].data.copy()
    widget.cancel()
    assert widget.last_result is result
    np.testing.assert_array_equal(viewer.layers["big worms"].data, labels)
    assert "worms" in widget.result_label.text()
    _no_tracebacks(start)


def test_deleting_the_target_layer_mid_run(qtbot, widget):
    viewer = widget.viewer
    viewer.add_image(_image(), name="plate")
    widget.refresh_images()
    start = len(_messages())
    worker = widget.segment()
    removed = []

    def remove_target(update):
        if not removed and "plate" in viewer.layers:
            viewer.layers.remove("plate")
            removed.append(update.text)

    worker.yielded.connect(remove_target)
    _idle(qtbot, widget)
    assert removed and "plate" not in viewer.layers
    # the run captured its image when it started: the result is kept, not lost
    assert widget.last_result is not None
    assert viewer.layers["plate worms"].data.shape == (96, 112)
    assert widget.image_combo.findText("plate") < 0
    _no_tracebacks(start)


def test_closing_the_viewer_during_a_run(qtbot, make_napari_viewer, kit, monkeypatch, tmp_path):
    from qtpy.QtCore import QThreadPool

    from napari_semiconv.plugin.segment_widget import SegmentWidget

    monkeypatch.setenv("SEMICONV_MODEL_DIR", str(tmp_path / "none"))
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment")
    assert w.set_model(str(kit["good"]))
    w.device_combo.setCurrentText("cpu")
    viewer.add_image(_image(), name="plate")
    w.refresh_images()
    start = len(_messages())
    worker = w.segment()
    assert worker is not None
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    qtbot.waitUntil(lambda: worker.is_running, timeout=LONG)
    viewer.close()  # the user quits napari while the model runs
    assert QThreadPool.globalInstance().waitForDone(LONG)
    qtbot.wait(50)  # let queued signals from the worker be delivered
    assert QThreadPool.globalInstance().activeThreadCount() == 0
    assert not worker.is_running
    _no_tracebacks(start)


# --------------------------------------------------------------------- export and memory


def test_export_and_memory_failures(qtbot, widget, tmp_path, monkeypatch):
    _export_failures_leave_no_file(qtbot, widget, tmp_path, monkeypatch)
    _out_of_memory_during_a_run_is_a_message(qtbot, widget, monkeypatch)


def _export_failures_leave_no_file(qtbot, widget, tmp_path, monkeypatch):
    viewer = widget.viewer
    viewer.add_image(_image(), name="plate")
    widget.refresh_images()
    widget.segment()
    _idle(qtbot, widget)
    start = len(_messages())

    not_a_folder = tmp_path / "results"
    not_a_folder.write_text("notes")
    assert widget.export_to(not_a_folder / "plate") is None
    assert any("Not exported" in m and "results" in m for m in _new_messages(start))
    assert not_a_folder.read_text() == "notes"

    out = tmp_path / "out"
    out.mkdir()
    real = os.replace
    calls = {"n": 0}

    def full_disk_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    n = len(_messages())
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", full_disk_on_third)
        assert widget.export_to(out / "plate") is None
    assert any("No space left" in m for m in _new_messages(n))
    assert list(out.iterdir()) == []  # the two files written before the failure were removed
    paths = widget.export_to(out / "plate")  # with room on the disk it works
    assert paths is not None and len(list(out.iterdir())) == 4
    _no_tracebacks(start)


def _out_of_memory_during_a_run_is_a_message(qtbot, widget, monkeypatch):
    import torch

    viewer = widget.viewer  # "plate" was segmented by the export check
    before = viewer.layers["plate worms"].data.copy()
    model = widget._cache.model  # the loaded model the next run re-uses

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model, "forward", out_of_memory)
    start = len(_messages())
    widget.segment()
    _idle(qtbot, widget)
    message = " ".join(_new_messages(start))
    # with no fallback in core.inference the user still gets one clear line, no traceback
    assert "out of memory" in message.lower() and "smaller Tile size" in message
    np.testing.assert_array_equal(viewer.layers["plate worms"].data, before)
    _no_tracebacks(start)
    assert Path(widget.model_choice()).name == "tiny.pt"


def test_a_tile_at_the_models_worm_limit_is_said_after_the_run(qtbot, widget):
    # the tiny model keeps at most 4 worms per tile and, at score 0, returns that many: the
    # limit was passed without a word (on a dense plate the bundled models' 100 per tile)
    viewer = widget.viewer
    viewer.add_image(_image(), name="plate")
    widget.refresh_images()
    said = _segment_noting(qtbot, widget)
    assert "limit per tile" in widget.result_label.text()
    assert any("limit per tile" in m for m in said)


def test_a_long_stacks_warnings_are_said_once_with_a_count(qtbot, widget):
    # every plane at the tile limit: 6 planes gave 6 notifications and 6 lines, or more
    from napari_semiconv.plugin.segment_widget import MAX_NOTES

    viewer = widget.viewer
    viewer.add_image(np.stack([_image(seed=s) for s in range(6)]), name="stack")
    widget.refresh_images()
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("stack"))
    said = _segment_noting(qtbot, widget)
    assert len(widget.last_result.warnings) >= 6
    assert len(said) == MAX_NOTES + 1 and "more warnings like these" in said[-1]
    assert widget.result_label.text().count("plane ") == MAX_NOTES


def _segment_noting(qtbot, widget) -> list[str]:
    """Segment, wait, and return the messages the run showed (none of them a traceback)."""
    start = len(_messages())
    widget.segment()
    _idle(qtbot, widget)
    _no_tracebacks(start)
    return _new_messages(start)


def test_an_inverted_image_is_said_after_the_run(qtbot, widget, bbbc010_root):
    # an inverted bright-field well gave 42 confident small "worms" with no word
    import tifffile

    image = tifffile.imread(next((bbbc010_root / "images").glob("*_A02_w2_*.tif")))
    viewer = widget.viewer
    viewer.add_image(image.max() - image, name="inverted")
    widget.refresh_images()
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("inverted"))
    assert widget.set_model("worms-brightfield")
    said = _segment_noting(qtbot, widget)
    assert "smaller than the worms this model learnt" in widget.result_label.text()
    assert any("may be inverted" in m for m in said)
    assert "inverted worms" in viewer.layers  # a word, not a refusal
