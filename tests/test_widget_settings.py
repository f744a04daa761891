"""The Segment widget remembers its last run's settings between sessions (plugin._settings), on a
real napari viewer; each test has its own config folder (conftest)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.gui,
    pytest.mark.filterwarnings("ignore:System theme detection:UserWarning"),
]

LONG = 60_000  # ms


def _settings_file() -> Path:
    from napari_semiconv.plugin._settings import SEGMENT_FILE

    return Path(os.environ["SEMICONV_CONFIG_DIR"]) / SEGMENT_FILE


def _widget(make_napari_viewer):
    from napari_semiconv.plugin.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    return SegmentWidget(viewer)


def _chosen(w) -> dict:
    return {
        "model": w.model_choice(),
        "device": w.device_combo.currentText(),
        "thresholds": [round(s.value(), 2) for s in w.spins()],
        "cut": round(w.cut_spin.value(), 2),
        "tile": w.tile_spin.value(),
        "views": w.views_combo.currentData(),
        "stride": w.stride_spin.value(),
        "rescale": round(w.rescale_spin.value(), 2),
    }


def test_the_last_runs_settings_come_back_in_a_new_session(qtbot, make_napari_viewer):
    from napari_semiconv.core.synthetic.worms import synthetic_worms

    first = _widget(make_napari_viewer)
    assert first.restored == [] and not _settings_file().exists()
    image, _ = synthetic_worms(seed=3, shape=(160, 200), render="brightfield")
    first.viewer.add_image(image, name="well")
    assert first.set_model("worms-brightfield")
    first.device_combo.setCurrentText("cpu")
    for spin, value in zip(first.spins(), (0.65, 0.45, 0.25), strict=True):
        spin.setValue(value)
    first.cut_spin.setValue(0.55)
    first.tile_spin.setValue(512)
    first.views_combo.setCurrentIndex(first.views_combo.findData(4))
    first.stride_spin.setValue(8)
    first.rescale_spin.setValue(1.25)
    assert first.segment() is not None  # remembered when Segment is clicked
    qtbot.waitUntil(lambda: not first.running, timeout=LONG)
    saved = json.loads(_settings_file().read_text())
    assert saved["model"] == "worms-brightfield" and saved["foreground_threshold"] == 0.55
    assert saved["views"] == 4 and saved["tile_size"] == 512 and saved["rescale"] == 1.25

    second = _widget(make_napari_viewer)  # a new viewer: as after restarting napari
    assert _chosen(second) == _chosen(first)
    assert set(second.restored) == {
        "model", "device", "score_threshold", "mask_threshold", "max_overlap",
        "foreground_threshold", "tile_size", "views", "stride", "rescale",
    }  # fmt: skip


def test_thresholds_come_back_only_with_their_model(make_napari_viewer, tmp_path):
    from napari_semiconv.core.refine import postprocess_defaults

    gone = tmp_path / "deleted-model.pt"
    _settings_file().parent.mkdir(parents=True, exist_ok=True)
    _settings_file().write_text(json.dumps({
        "model": str(gone), "device": "cpu", "score_threshold": 0.95, "mask_threshold": 0.05,
        "max_overlap": 0.9, "tile_size": None, "views": 8, "stride": 2,
    }))  # fmt: skip
    w = _widget(make_napari_viewer)
    # the model file is gone: the first listed model stays, with its own thresholds
    assert w.model_choice() != str(gone) and "model" not in w.restored
    first = w.model_choice()
    kind = "cascade" if first == "worms-brightfield" else "binary"
    assert [s.value() for s in w.spins()] == pytest.approx(
        list(postprocess_defaults(kind).values())
    )
    assert w.views_combo.currentData() == 8 and w.stride_spin.value() == 2
    assert w.tile_spin.value() == 0  # None: automatic
    assert set(w.restored) == {"device", "tile_size", "views", "stride"}


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2, 3]", b"\xff\xfe\x00garbage"],
    ids=["broken JSON", "not an object", "not text"],
)
def test_a_damaged_settings_file_is_ignored(make_napari_viewer, caplog, content):
    _settings_file().parent.mkdir(parents=True, exist_ok=True)
    _settings_file().write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="napari_semiconv.plugin._settings"):
        w = _widget(make_napari_viewer)
    assert w.restored == [] and w.model_choice() is not None
    assert "ignoring the remembered settings" in caplog.text
    assert _settings_file().read_bytes() == content  # not overwritten until the next run


def test_damaged_entries_are_skipped_one_by_one(make_napari_viewer):
    _settings_file().parent.mkdir(parents=True, exist_ok=True)
    _settings_file().write_text(json.dumps({
        "model": "worms-binary", "device": "a-gpu-this-machine-lacks", "score_threshold": 1.5,
        "mask_threshold": "0.4", "max_overlap": 0.35, "foreground_threshold": 0.7,
        "tile_size": -5, "views": 3, "stride": True,
    }))  # fmt: skip
    w = _widget(make_napari_viewer)
    assert w.model_choice() == "worms-binary"
    assert w.overlap_spin.value() == pytest.approx(0.35)
    # a binary model has no foreground cut: the remembered one is not applied
    assert not w.cut_spin.isEnabled()
    assert set(w.restored) == {"model", "max_overlap"}


def test_a_tile_size_under_32_is_neither_restored_nor_run(make_napari_viewer):
    from napari.utils.notifications import notification_manager

    _settings_file().parent.mkdir(parents=True, exist_ok=True)
    _settings_file().write_text(json.dumps({"model": "worms-binary", "tile_size": 5}))
    w = _widget(make_napari_viewer)
    assert "tile_size" not in w.restored and w.tile_spin.value() == 0  # auto
    w.viewer.add_image(np.zeros((64, 64), np.uint8), name="plate")
    w.refresh_images()
    w.tile_spin.setValue(5)  # typed: refused before the model loads, not after
    start = len(notification_manager.records)
    assert w.segment() is None and not w.running
    said = [str(n.message) for n in notification_manager.records[start:]]
    assert any("Tile size 5 is too small" in m for m in said)


@pytest.mark.parametrize(
    "model", ["/tmp/" + "x" * 300 + ".pt", "/tmp/a\x00b.pt"], ids=["name too long", "NUL byte"]
)
def test_a_remembered_model_path_the_system_refuses_is_skipped(make_napari_viewer, model):
    from napari_semiconv.plugin._settings import FINETUNE_FILE
    from napari_semiconv.plugin.finetune_widget import FineTuneWidget

    _settings_file().parent.mkdir(parents=True, exist_ok=True)
    _settings_file().write_text(json.dumps({"model": model, "device": "cpu"}))
    (_settings_file().parent / FINETUNE_FILE).write_text(json.dumps({"base": model}))
    w = _widget(make_napari_viewer)
    assert w.restored == ["device"] and w.model_choice() != model
    assert "base" not in FineTuneWidget(w.viewer).restored


def test_a_settings_folder_that_cannot_be_written_does_not_stop_a_run(
    qtbot, make_napari_viewer, tmp_path, monkeypatch, caplog
):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("SEMICONV_CONFIG_DIR", str(blocked))
    w = _widget(make_napari_viewer)
    w.viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32), name="x")
    assert w.set_model("worms-binary")
    w.device_combo.setCurrentText("cpu")
    with caplog.at_level(logging.WARNING, logger="napari_semiconv.plugin._settings"):
        assert w.segment() is not None
    qtbot.waitUntil(lambda: not w.running, timeout=LONG)
    assert "could not remember the settings" in caplog.text
    assert w.last_result is not None
