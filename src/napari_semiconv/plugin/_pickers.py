"""The Segment widget's two pickers: the image layer (+ channel) and the model (+ its card).

Each picker owns its Qt widgets and the logic behind them; the widget places the widgets in its
form. Neither imports torch at module import time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QWidget

from ..core.model.config import FOREGROUND_THRESHOLD, postprocess_kind
from ..core.refine import postprocess_defaults_of
from ._cards import card_text

BROWSE = "Browse…"
ALL_PLANES = "all planes (a stack, not channels)"


def show_error(message: str) -> None:
    """A napari error notification (no traceback dialog)."""
    from napari.utils.notifications import show_error as _show

    _show(message)


def show_warning(message: str) -> None:
    """A napari warning notification."""
    from napari.utils.notifications import show_warning as _show

    _show(message)


class ImagePicker:
    """Image layers of a viewer, and for a multi-channel image the channel to segment.

    Channel rule (``core.visualise.channel_axis_candidate``): for a non-RGB image with 3+ axes, a
    last axis of 2-4 entries is a channel axis; else a first axis of 2-4 entries may be channels
    or a short Z/T stack, so the channel list also offers "all planes".
    """

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.combo = QComboBox()
        self.combo.currentIndexChanged.connect(self._changed)
        self.channel_label = QLabel("Channel")
        self.channel_combo = QComboBox()
        self.channel_combo.setToolTip(
            "This image has a short axis that may hold channels: pick the channel to segment, "
            "or treat the axis as a stack of planes."
        )
        self.channel_axis: int | None = None
        self._built_for: Any = None  # (layer, shape, rgb) the channel list was built for

    def refresh(self, *_: Any) -> None:
        """List the viewer's image layers, keeping the current choice when it still exists."""
        from napari.layers import Image

        current = self.layer()
        # our own outputs (the votes image) carry the run record and are not offered as input
        images = [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Image) and "napari_semiconv" not in layer.metadata
        ]
        for layer in images:  # keep the names in the list current (connect is idempotent)
            layer.events.name.connect(self._rename)
            layer.events.data.connect(self._changed)  # and the channels, if its shape changes
        if current not in images:
            active = self.viewer.layers.selection.active
            current = active if active in images else (images[0] if images else None)
        self.combo.blockSignals(True)
        self.combo.clear()
        for layer in images:
            self.combo.addItem(layer.name, layer)
        if current is not None:
            self.combo.setCurrentIndex(images.index(current))
        self.combo.blockSignals(False)
        self._changed()

    def layer(self) -> Any:
        """The chosen image layer, or None."""
        return self.combo.currentData() if self.combo.count() else None

    def channel(self) -> tuple[int | None, int | None]:
        """(axis, index) of the chosen channel, or (None, None) to segment every plane."""
        channel = self.channel_combo.currentData() if self.channel_axis is not None else None
        return (None, None) if channel is None else (self.channel_axis, int(channel))

    def _rename(self, event: Any) -> None:
        index = self.combo.findData(event.source)
        if index >= 0:
            self.combo.setItemText(index, event.source.name)

    def _changed(self, *_: Any) -> None:
        from ..core.visualise import channel_axis_candidate

        layer = self.layer()
        # a multiscale image is segmented at its full resolution, level 0
        shape = None if layer is None else tuple(full_resolution(layer).shape)
        built = (layer, shape, None if layer is None else bool(layer.rgb))
        last = self._built_for
        if layer is not None and last is not None and last[0] is layer and last[1:] == built[1:]:
            return  # same image, same shape (layers were only added or moved): keep the choice
        self._built_for = built
        axis = None
        if layer is not None:
            axis = channel_axis_candidate(shape, layer.rgb)
        self.channel_axis = axis
        self.channel_combo.clear()
        if axis is not None:
            for c in range(shape[axis]):
                self.channel_combo.addItem(f"channel {c} (axis {axis})", c)
            if axis == 0:  # a leading short axis may be a short Z/T stack instead
                self.channel_combo.addItem(ALL_PLANES, None)
        self.channel_combo.setVisible(axis is not None)
        self.channel_label.setVisible(axis is not None)


class ModelPicker:
    """Bundled and user models (``list_models``), browsed checkpoint files, and "Browse…"."""

    def __init__(self, parent: QWidget) -> None:
        self.parent = parent
        self.combo = QComboBox()
        self.combo.activated.connect(self._activated)
        self.combo.currentIndexChanged.connect(self._show_card)
        self.card_label = QLabel("")
        self.card_label.setWordWrap(True)
        refresh = QPushButton("↻")
        refresh.setToolTip("Refresh the list (e.g. after fine-tuning a model)")
        refresh.setMaximumWidth(32)
        refresh.clicked.connect(self.refresh)
        self.row = QHBoxLayout()
        self.row.addWidget(self.combo, 1)
        self.row.addWidget(refresh)
        self._cards: dict[str, str] = {}
        # each listed model's own post-processing defaults (its card's, else its kind's)
        self._defaults: dict[str, dict[str, float] | None] = {}
        self._last: str | None = None  # the last real model chosen, restored after a refusal
        self._last_defaults: dict[str, float] | None = None
        #: called with the chosen model's threshold defaults whenever they change
        self.on_defaults_change: Callable[[dict[str, float]], None] | None = None

    def refresh(self, *_: Any) -> None:
        """Re-read the models, keeping browsed files and the current choice."""
        from ..core.inference import list_models

        chosen = self.choice()
        browsed = [
            self.combo.itemData(i)
            for i in range(self.combo.count())
            if self.combo.itemData(i) and self.combo.itemText(i).startswith("file: ")
        ]
        self.combo.blockSignals(True)
        self.combo.clear()
        for row in list_models():
            if row.get("installed"):
                ref = row["ref"]  # its name, or its path where the name loads another model
                self.combo.addItem(f"{row['name']} ({row['kind']})", ref)
                self._cards[ref] = card_text(row)
                self._defaults[ref] = _model_defaults(row.get("config"), row.get("card"))
        for path in browsed:
            self.combo.addItem(f"file: {Path(path).name}", path)
        self.combo.addItem(BROWSE, None)
        index = self.combo.findData(chosen) if chosen else -1
        self.combo.setCurrentIndex(max(index, 0))
        self.combo.blockSignals(False)
        self._show_card()

    def choice(self) -> str | None:
        """The chosen model (name or path), or None."""
        return self.combo.currentData()

    def set_model(self, name_or_path: str | Path) -> bool:
        """Choose a model by name or checkpoint path; a file that is no checkpoint is refused
        with a message (False)."""
        key = str(name_or_path)
        index = self.combo.findData(key)
        if index < 0:
            from ..core.checkpoint import CheckpointError, load_checkpoint

            try:
                ckpt = load_checkpoint(key)
            except CheckpointError as exc:
                show_error(f"Cannot use this model: {exc}")
                return False
            self._cards[key] = card_text({"card": ckpt.card, "config": ckpt.config.to_dict()})
            self._defaults[key] = _model_defaults(ckpt.config.to_dict(), ckpt.card)
            index = self.combo.count() - 1  # before "Browse…"
            self.combo.insertItem(index, f"file: {Path(key).name}", key)
        self.combo.setCurrentIndex(index)
        return True

    def _activated(self, index: int) -> None:
        if self.combo.itemData(index) is not None:
            return
        path, _ = QFileDialog.getOpenFileName(
            self.parent,
            "Choose a napari-semiconv checkpoint",
            "",
            "Checkpoints (*.pt *.pth);;All (*)",
        )
        if not path or not self.set_model(path):
            # dialog cancelled or file refused: back to the model chosen before, else the first
            index = self.combo.findData(self._last) if self._last else -1
            self.combo.setCurrentIndex(
                index if index >= 0 else (0 if self.combo.count() > 1 else -1)
            )

    def _show_card(self, *_: Any) -> None:
        key = self.choice()
        if key is not None:
            self._last = key
        self.card_label.setText(self._cards.get(key, "") if key else "No model chosen.")
        defaults = self._defaults.get(key) if key else None
        if defaults and defaults != self._last_defaults:
            self._last_defaults = defaults
            if self.on_defaults_change is not None:
                self.on_defaults_change(defaults)


def _model_defaults(config: dict | None, card: dict | None) -> dict[str, float] | None:
    """A listed model's threshold defaults, or None when its config names no known kind; a
    bright-field cascade's include its U-Net's cut ("foreground_threshold")."""
    config = config or {}
    try:
        defaults = postprocess_defaults_of(postprocess_kind(config), card)
    except ValueError:
        return None
    if config.get("foreground_width"):
        cut = config.get("foreground_threshold", FOREGROUND_THRESHOLD)  # older files: none
        defaults["foreground_threshold"] = float(cut)
    return defaults


def full_resolution(layer: Any) -> Any:
    """A layer's data at full resolution: level 0 of a multiscale image (not read: a lazy
    array stays lazy)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data
