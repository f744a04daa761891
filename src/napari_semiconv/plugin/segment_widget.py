"""The napari "Segment" widget: pick an image and a model, segment off the GUI thread, show and
export the worms.

The widget only gathers parameters, runs ``_workers.run_segmentation`` (a generator over tiles
and planes, in a ``napari.qt.threading`` worker) and hands the result to ``_layers.show_views``.
All computation lives in ``core.inference`` and ``core.visualise``; torch is imported only when
a model is listed or run, never when this module is imported.

Outputs, named after the image and re-used on re-runs: Labels ``<image> worms`` (overlaps
resolved by score, a per-worm feature table shown on hover), Vectors ``<image> displacement``
(u → u + Φ_u, eq. 4) and Image ``<image> votes`` (the Hough accumulator, hidden). The instance
stacks, which keep overlaps, stay on the widget (``last_result``) for :meth:`export_to`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.refine import postprocess_defaults
from ..core.rescale import MAX_RESCALE, MIN_RESCALE
from ..core.tiling import MIN_TILE_SIZE
from ._layers import unproxied
from ._pickers import ImagePicker, ModelPicker, full_resolution, show_error, show_warning
from ._settings import load_settings, restore_segment, save_settings, segment_snapshot
from ._threading import worker_for
from ._torch_import import import_torch
from ._tune_row import ThresholdTuner
from ._workers import ModelCache, RunRequest, RunResult, RunUpdate, run_segmentation

#: The Augment choices (``core.tta``): views per image and their label; 8 measured best on the
#: BBBC010 training wells (docs/benchmarks.md, "Test-time augmentation").
VIEW_CHOICES = (
    (1, "off"),
    (4, "4 flips (4 passes)"),
    (8, "8 flips and turns (8 passes)"),
)

if TYPE_CHECKING:  # pragma: no cover
    import napari

logger = logging.getLogger(__name__)

#: warnings of one run shown after it (a stack's planes may each have one)
MAX_NOTES = 3


class SegmentWidget(QWidget):
    """Segment worms in an image layer with a semi-convolutional Mask R-CNN."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import_torch()  # before any model is listed: napari's Qt is already running
        self.viewer = unproxied(viewer)  # layers compared by identity (see there)
        self.worker: Any = None  # the running napari worker, None when idle
        self.last_result: RunResult | None = None
        self._last_labels: Any = None  # the worms layer the last result was shown in
        self.runs_started = 0
        self._cache = ModelCache()
        self._running_name = ""
        self._build()
        self.refresh_images()
        self.refresh_models()
        # the last run's settings, from an earlier session too (_settings: a convenience, never
        # an error)
        self.restored = restore_segment(self, load_settings())
        viewer.layers.events.inserted.connect(self.refresh_images)
        viewer.layers.events.removed.connect(self.refresh_images)
        viewer.layers.events.moved.connect(self.refresh_images)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        form = QFormLayout()
        self.images = ImagePicker(self.viewer)
        self.image_combo = self.images.combo
        self.channel_combo = self.images.channel_combo
        form.addRow("Image", self.image_combo)
        form.addRow(self.images.channel_label, self.channel_combo)
        self.models = ModelPicker(self)
        self.model_combo = self.models.combo
        self.card_label = self.models.card_label
        form.addRow("Model", self.models.row)
        form.addRow(self.card_label)
        self.device_combo = QComboBox()
        form.addRow("Device", self.device_combo)
        # the thresholds follow the chosen model's own defaults (its card's, else its kind's)
        # whenever they change; until a model is chosen, the bright-field defaults
        defaults = postprocess_defaults("brightfield")
        self.score_spin = _fraction(
            defaults["score_threshold"], "Keep worms whose detection score is at least this."
        )
        form.addRow("Score threshold", self.score_spin)
        self.mask_spin = _fraction(
            defaults["mask_threshold"], "A pixel belongs to a worm above this mask probability."
        )
        form.addRow("Mask threshold", self.mask_spin)
        self.overlap_spin = _fraction(
            defaults["max_overlap"],
            "Of two worms whose masks overlap more than this (IoU), keep only the higher "
            "scoring one: removes duplicate detections (1 keeps both).",
        )
        form.addRow("Max overlap", self.overlap_spin)
        self.cut_spin = _fraction(
            0.5,
            "Bright-field cascades (worms-brightfield): a pixel is worm where the foreground "
            "network's probability exceeds this. Raise it for thinner worms, lower it to find "
            "faint ones. Other models have no foreground network.",
        )
        self.cut_spin.setRange(0.01, 0.99)  # 0 or 1 would make every or no pixel worm
        self.cut_spin.setEnabled(False)
        form.addRow("Foreground cut", self.cut_spin)
        self.tuner = ThresholdTuner(self)
        form.addRow("Truth", self.tuner.row)
        self.models.on_defaults_change = self._apply_model_defaults
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 8192)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setSpecialValueText("auto")
        self.tile_spin.setToolTip("Tile side in pixels; auto tiles only images over 1024 px.")
        form.addRow("Tile size", self.tile_spin)
        self.rescale_spin = QDoubleSpinBox()
        self.rescale_spin.setRange(MIN_RESCALE, MAX_RESCALE)
        self.rescale_spin.setDecimals(2)
        self.rescale_spin.setSingleStep(0.1)
        self.rescale_spin.setValue(1.0)
        self.rescale_spin.setToolTip(
            "Resize the image by this factor before segmenting, for worms imaged larger or "
            "smaller than the model's training images (about 8-9 px wide): 0.5 for worms twice "
            "that size. The worms come back at the image's size."
        )
        form.addRow("Rescale", self.rescale_spin)
        self.views_combo = QComboBox()
        for count, text in VIEW_CHOICES:
            self.views_combo.addItem(text, count)
        self.views_combo.setToolTip(
            "Test-time augmentation: segment flipped (and transposed) copies of the image and "
            "fuse their worms. Smoother, more accurate outlines; one network pass per view."
        )
        form.addRow("Augment", self.views_combo)
        self.stride_spin = QSpinBox()
        self.stride_spin.setRange(1, 64)
        self.stride_spin.setValue(4)
        self.stride_spin.setToolTip("Draw one displacement arrow every N pixels.")
        form.addRow("Arrow stride", self.stride_spin)

        buttons = QHBoxLayout()
        self.segment_button = QPushButton("Segment")
        self.segment_button.clicked.connect(self.segment)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.export_button = QPushButton("Export…")
        self.export_button.clicked.connect(self._export_clicked)
        self.export_button.setEnabled(False)
        for button in (self.segment_button, self.cancel_button, self.export_button):
            buttons.addWidget(button)
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.result_label)
        layout.addStretch(1)

    # ------------------------------------------------------------------ pickers
    def refresh_images(self, *_: Any) -> None:
        """Re-list the viewer's image and labels layers (on every layer added, removed or moved)."""
        self.images.refresh()
        self.tuner.refresh()

    def refresh_models(self, *_: Any) -> None:
        """Re-list the models and the devices."""
        from ..core.devices import available_devices

        self.models.refresh()
        device = self.device_combo.currentText()
        self.device_combo.clear()
        self.device_combo.addItems(["auto", *available_devices()])
        if device:
            self.device_combo.setCurrentText(device)

    def _apply_model_defaults(self, defaults: dict[str, float]) -> None:
        """Set the thresholds to the chosen model's own defaults (its card's, else its kind's)."""
        self.score_spin.setValue(defaults["score_threshold"])
        self.mask_spin.setValue(defaults["mask_threshold"])
        self.overlap_spin.setValue(defaults["max_overlap"])
        cut = defaults.get("foreground_threshold")
        self.cut_spin.setEnabled(cut is not None)
        if cut is not None:
            self.cut_spin.setValue(cut)

    def foreground_cut(self) -> float | None:
        """The Foreground cut, if the chosen model is a bright-field cascade (else None)."""
        return float(self.cut_spin.value()) if self.cut_spin.isEnabled() else None

    def spins(self) -> tuple[QDoubleSpinBox, QDoubleSpinBox, QDoubleSpinBox]:
        """The score threshold, mask threshold and max overlap fields."""
        return self.score_spin, self.mask_spin, self.overlap_spin

    def image_layer(self) -> Any:
        """The chosen image layer, or None."""
        return self.images.layer()

    def set_model(self, name_or_path: str | Path) -> bool:
        """Choose a model by bundled/user name or checkpoint path (what Browse… does)."""
        return self.models.set_model(name_or_path)

    def model_choice(self) -> str | None:
        """The chosen model (name or path), or None."""
        return self.models.choice()

    # ------------------------------------------------------------------ run
    @property
    def running(self) -> bool:
        return self.worker is not None

    def segment(self) -> Any:
        """Start a run on the chosen image; returns the worker, or None if nothing started."""
        if self.running:  # a second click while running never starts a concurrent run
            return None
        request = self._request()
        if request is None:
            return None
        save_settings(segment_snapshot(request))
        self.worker = worker_for(
            self, run_segmentation, request, self._cache, desc=f"Segmenting {request.image_name}"
        )
        self.runs_started += 1
        self._running_name = request.image_name
        self._set_running(True)
        self.result_label.setText(f"Segmenting {request.image_name}…")
        self.worker.start()
        return self.worker

    def _request(self) -> RunRequest | None:
        """Capture the target layer and the settings now, so a run ignores later changes."""
        from ..core.pixel_size import pixel_unit_of
        from ..core.visualise import leading_shape, select_channel

        layer = self.image_layer()
        if layer is None:
            show_error(
                "No image layer: open an image (File > Open) or a sample "
                "(File > Open Sample > Semi-convolutional worms), then Segment."
            )
            return None
        model = self.model_choice()
        if model is None:
            show_error("No model: choose one in the Model list, or Browse… for a checkpoint file.")
            return None
        tile = int(self.tile_spin.value())
        if 0 < tile < MIN_TILE_SIZE:  # refused here, not after the model has loaded
            show_error(f"Tile size {tile} is too small: choose auto, or {MIN_TILE_SIZE} or more.")
            return None
        data = full_resolution(layer)
        axis, channel = self.images.channel()
        try:
            data = select_channel(data, axis, channel)
            leading_shape(data.shape, layer.rgb)
        except ValueError as exc:
            show_error(f"Cannot segment {layer.name!r}: {exc}")
            return None
        from ._layers import kept_transform

        # world geometry of the output: the layer's, less the channel axis that was taken
        keep = [d for d in range(layer.ndim) if d != axis]
        source_path = getattr(layer.source, "path", None)
        return RunRequest(
            image_name=layer.name,
            data=data,
            rgb=bool(layer.rgb),
            model=model,
            device=self.device_combo.currentText() or "auto",
            score_threshold=float(self.score_spin.value()),
            mask_threshold=float(self.mask_spin.value()),
            max_overlap=float(self.overlap_spin.value()),
            foreground_threshold=self.foreground_cut(),
            tile_size=int(self.tile_spin.value()) or None,
            stride=int(self.stride_spin.value()),
            views=int(self.views_combo.currentData()),
            rescale=float(self.rescale_spin.value()),
            scale=tuple(float(layer.scale[d]) for d in keep),
            # napari >= 0.6 layers name their axes' unit; older ones (and "pixel") give None
            pixel_unit=pixel_unit_of(getattr(layer, "units", None)),
            translate=tuple(float(layer.translate[d]) for d in keep),
            transform=kept_transform(layer, keep),
            metadata=dict(layer.metadata),
            channel_axis=axis,
            channel=channel,
            source={
                "layer": layer.name,
                "path": str(source_path) if source_path else None,
                "shape": [int(s) for s in layer.data.shape] if not layer.multiscale else None,
                "rgb": bool(layer.rgb),
                "channel_axis": axis,
                "channel": channel,
            },
        )

    def cancel(self) -> None:
        """Stop the run at its next tile; no layer is added or changed."""
        if self.worker is not None:
            self.worker.quit()
            self.cancel_button.setEnabled(False)
            self.result_label.setText("Cancelling…")

    def _set_running(self, running: bool) -> None:
        self.segment_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.export_button.setEnabled(not running and self.last_result is not None)

    def _on_update(self, update: RunUpdate) -> None:
        pbar = getattr(self.worker, "pbar", None)
        if pbar is None:
            return
        if update.total and pbar.total != update.total:
            pbar.total = update.total
        if update.done > pbar.n:
            pbar.update(update.done - pbar.n)
        pbar.set_description(f"{self._running_name}: {update.text}")

    def _on_returned(self, result: RunResult) -> None:
        from ._layers import output_names, show_views

        # everything about the target was captured when the run started (RunRequest), so the
        # result lands on that image even if the user picked another one meanwhile
        request = result.request
        metadata = {**request.metadata, "napari_semiconv": result.run_info}
        try:
            shown = show_views(
                self.viewer,
                request.image_name,
                result.views,
                request.scale,
                request.translate,
                metadata,
                request.transform,
            )
        except (ValueError, TypeError) as exc:  # e.g. a same-named layer napari cannot update
            show_error(f"Could not show the result of {request.image_name!r}: {exc}")
            return
        self.last_result = result
        self._last_labels = shown["labels"]  # Export takes the user's corrections from it
        planes = f" in {len(result.planes)} planes" if result.leading else ""
        text = (
            f"{result.n_worms} worms{planes} in {result.seconds:.1f} s on {result.device} "
            f"({request.image_name})"
        )
        usual = output_names(request.image_name)["labels"]
        if shown["labels"].name != usual:  # the usual layer holds the user's edits: kept
            text += f"\n{usual!r} was edited, so it was kept; the new worms are in "
            text += f"{shown['labels'].name!r}."
        # shown after the run, not only as a passing progress line; a long stack's planes may
        # each have one: the first few, then how many more
        notes = result.warnings[:MAX_NOTES]
        if len(result.warnings) > MAX_NOTES:
            notes.append(f"… and {len(result.warnings) - MAX_NOTES} more warnings like these")
        for note in notes:
            show_warning(note)
            text += f"\n{note}"
        self.result_label.setText(text)

    def _on_error(self, exc: BaseException) -> None:
        # the user gets one line; the traceback goes to the log for whoever debugs it
        logger.warning("segmentation failed", exc_info=exc)
        show_error(f"Segmentation failed: {exc}")
        self.result_label.setText(f"Failed: {exc}")

    def _on_aborted(self) -> None:
        self.result_label.setText("Cancelled: no layer was changed.")

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)

    # ------------------------------------------------------------------ export
    def _export_clicked(self) -> None:
        if self.last_result is None:
            show_warning("Nothing to export yet: Segment first.")
            return
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Export: choose a folder and a name (four files get this prefix)",
            self.last_result.request.image_name,
        )
        if path:
            self.export_to(Path(path))

    def export_to(self, path_stem: str | Path) -> dict[str, Path] | None:
        """Write the last result as ``<stem>_labels.tif``, ``_instances.tif``,
        ``_measurements.csv`` and ``_run.json`` (per plane ``<stem>_plane<i>_…`` for stacks).

        Nothing is overwritten: if any target exists, a message names it and nothing is written.
        Returns {name: path} of the files written, or None.
        """
        from ._export import export_result

        if self.last_result is None:
            show_warning("Nothing to export yet: Segment first.")
            return None
        edited = self._edited_worms()
        try:
            paths = export_result(
                self.last_result,
                Path(path_stem),
                None if edited is None else edited.data,
                None if edited is None else edited.name,
            )
        except (FileExistsError, ValueError, OSError) as exc:
            show_error(f"Not exported: {exc}")
            return None
        text = f"Exported {len(paths)} files to {Path(path_stem).parent}"
        if edited is not None:
            text += f", with your corrections in {edited.name!r}"
        self.result_label.setText(text)
        return paths

    def _edited_worms(self) -> Any:
        """The worms layer of the last run if the user has corrected it since, else None."""
        from ._layers import unchanged_output

        layer = self._last_labels
        if layer is None or layer not in self.viewer.layers or unchanged_output(layer):
            return None
        return layer


def _fraction(value: float, tip: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(0.0, 1.0)
    spin.setSingleStep(0.05)
    spin.setDecimals(2)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin
