"""The napari "Fine-tune" widget: retrain a worm model on a few images annotated in the viewer.

The loop it serves: Segment an image, "Correct this result" (an editable copy of the worms layer
paired with its image), fix a few worms, Train, and use the new model in the Segment widget at
once. The widget gathers a :class:`~napari_semiconv.core.finetune.FineTuneSpec` (checked on the
GUI thread: bad input starts nothing), runs ``_finetune_worker.run_finetune`` in a
``napari.qt.threading`` worker and shows the loss curve and a preview. All of the training is in
``core.training``; torch is imported only when a run starts or a model is listed. The controls
are laid out by ``_finetune_layout.build_layout``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QApplication,
    QFileDialog,
    QWidget,
)

from ._finetune_curve import format_metric
from ._finetune_layout import EVERYTHING, HEADS_ONLY, build_layout
from ._finetune_pairs import (
    NONE,
    PairRow,
    corrections_layer,
    fill_combo,
    image_layers,
    layer_data,
    one_plane,
    worms_layers,
)
from ._finetune_worker import FineTuneResult, FineTuneUpdate, run_finetune
from ._layers import unproxied
from ._pickers import show_error
from ._settings import (
    FINETUNE_FILE,
    finetune_snapshot,
    load_settings,
    restore_finetune,
    save_settings,
)
from ._threading import worker_for
from ._torch_import import import_torch

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..core.finetune import FineTuneSpec


class FineTuneWidget(QWidget):
    """Fine-tune a semi-convolutional Mask R-CNN on (image, labels) pairs or a folder."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import_torch()  # before any model is listed: napari's Qt is already running
        self.viewer = unproxied(viewer)  # layers compared by identity (see there)
        self.worker: Any = None
        self.rows: list[PairRow] = []
        self.last_output: Path | None = None  # the model file of the latest run
        self.last_step = 0
        self._preview_target: dict[str, Any] = {}
        build_layout(self)
        self.add_pair()
        self.refresh_layers()
        self.refresh_models()
        # the last run's settings, from an earlier session too (_settings)
        remembered = load_settings(FINETUNE_FILE)
        self.restored = restore_finetune(self, remembered, HEADS_ONLY, EVERYTHING)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self.refresh_layers)

    # ------------------------------------------------------------------ pickers
    def refresh_layers(self, *_: Any) -> None:
        """Re-list the layers in every pair, the validation pair and the preview choice."""
        for layer in self.viewer.layers:  # keep names current (connecting twice is a no-op)
            layer.events.name.connect(self.refresh_layers)
        for row in [*self.rows, self.val_row]:
            row.refresh()
        fill_combo(self.preview_combo, image_layers(self.viewer), NONE)

    def refresh_models(self, *_: Any) -> None:
        """Re-list the base models and the devices (CPU only: train the heads only)."""
        from ..core.devices import available_devices

        self.models.refresh()
        devices = available_devices()
        current = self.device_combo.currentText()
        self.device_combo.clear()
        self.device_combo.addItems(["auto", *devices])
        if current:
            self.device_combo.setCurrentText(current)
        else:
            self.what_combo.setCurrentText(HEADS_ONLY if devices[0] == "cpu" else EVERYTHING)

    def set_model(self, name_or_path: str | Path) -> bool:
        """Choose the base model by name or checkpoint path."""
        return self.models.set_model(name_or_path)

    def add_pair(self, image: Any = None, labels: Any = None, region: Any = None) -> PairRow:
        """Add a pair row, optionally with its layers (objects or names) picked."""
        row = PairRow(self.viewer)
        row.remove_button.clicked.connect(lambda: self.remove_pair(row))
        self.rows.append(row)
        self.rows_layout.addWidget(row)
        row.select(image, labels, region)
        return row

    def remove_pair(self, row: PairRow) -> None:
        if row in self.rows:
            self.rows.remove(row)
            self.rows_layout.removeWidget(row)
            row.deleteLater()

    def use_folder(self, folder: str | Path | None) -> None:
        """Train on a folder (``images/`` + ``labels/``), or on the layers with None."""
        self.folder_radio.setChecked(folder is not None)
        self.layers_radio.setChecked(folder is None)
        self.folder_edit.setText(str(folder) if folder else "")

    def _source_changed(self, *_: Any) -> None:
        folder = self.folder_radio.isChecked()
        self.pairs_box.setVisible(not folder)
        self.folder_box.setVisible(folder)

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder with images/ and labels/")
        if path:
            self.folder_edit.setText(path)

    def correct_result(self, worms: Any = None) -> Any:
        """Turn a Segment result (``<image> worms``) into an editable ``<image> corrections``
        layer paired with its image; returns the corrections layer, or None with a message."""
        found = worms_layers(self.viewer)
        if worms is None:
            active = self.viewer.layers.selection.active
            match = [f for f in found if f[1] is active] or found[-1:]
        else:
            match = [f for f in found if f[1] is worms]
        if not match:
            return self._refuse(
                "No Segment result to correct: segment an image with the Segment widget first "
                "(it makes an '<image> worms' layer), then click Correct this result."
            )
        image, labels = match[0]
        layer = corrections_layer(self.viewer, image, labels)
        self.refresh_layers()
        if not any(r.layers()[:2] == (image, layer) for r in self.rows):
            # re-use a row without labels, or one holding the raw result being corrected
            free = [r for r in self.rows if r.layers()[1] in (None, labels)]
            row = free[0] if free else self.add_pair()
            row.select(image, layer)
        self.status_label.setText(
            f"Fix the worms in {layer.name!r} (paint, erase, one label per worm), then Train."
        )
        return layer

    # ------------------------------------------------------------------ run
    @property
    def running(self) -> bool:
        return self.worker is not None

    def spec(self) -> FineTuneSpec:
        """The run the widget describes now (layer data copied).

        Raises:
            ValueError / TypeError: naming the problem (as ``core.finetune.check_spec``).
        """
        from ..core.finetune import FineTuneSpec, check_spec

        folder = self.folder_edit.text().strip() if self.folder_radio.isChecked() else None
        if folder == "":
            raise ValueError("no folder chosen: Browse… for a folder with images/ and labels/")
        pairs = []
        for i, row in enumerate([] if folder else self.rows, start=1):
            try:
                pairs.append(row.pair())
            except ValueError as exc:
                raise ValueError(f"pair {i}: {exc}") from exc
        try:
            val_pair = None if self.val_row.is_empty() else self.val_row.pair()
        except ValueError as exc:
            raise ValueError(f"validation pair: {exc}") from exc
        base = self.models.choice()
        spec = FineTuneSpec(
            base=str(base) if base else "",
            pairs=pairs,
            folder=folder,
            val_pair=val_pair,
            name=self.name_edit.text().strip(),
            iterations=int(self.iter_spin.value()),
            minutes=float(self.minutes_spin.value()),
            lr=float(self.lr_spin.value()),
            heads_only=self.what_combo.currentText() == HEADS_ONLY,
            device=self.device_combo.currentText() or "auto",
            batch_size=int(self.batch_spin.value()),
            crop=int(self.crop_spin.value()),
            resume=self.resume_check.isChecked(),
            preview_every=int(self.preview_spin.value()),
        )
        check_spec(spec)
        return spec

    def train(self) -> Any:
        """Start fine-tuning; returns the worker, or None (with a message) if nothing started."""
        from ..core.finetune import output_path

        if self.running:
            return None
        try:
            spec = self.spec()
        except (ValueError, TypeError) as exc:
            return self._refuse(f"Not started: {exc}")
        save_settings(finetune_snapshot(spec), FINETUNE_FILE)
        preview = self.preview_combo.currentData()
        if preview is not None and not one_plane(preview):
            return self._refuse(
                f"Not started: the preview image {preview.name!r} has shape "
                f"{tuple(preview.data.shape)}; choose one 2-D image (grey or RGB) or {NONE!r}."
            )
        self._preview_target = {}
        if preview is not None:
            from ._layers import kept_transform

            self._preview_target = {
                "name": f"{preview.name} preview",
                "scale": tuple(preview.scale)[-2:],
                "translate": tuple(preview.translate)[-2:],
                "transform": kept_transform(preview, list(range(preview.ndim))[-2:]),
            }
        out = output_path(spec)
        self.name_edit.setText(out.stem)  # so Resume continues this very model
        self.last_output, self.last_step = out, 0
        if not spec.resume:
            self.curve.clear()
        self.worker = worker_for(
            self,
            run_finetune,
            spec,
            layer_data(preview) if preview is not None else None,
            total=spec.iterations,
            desc=f"Fine-tuning {out.stem}",
        )
        self._set_running(True)
        self.status_label.setText(f"Fine-tuning {out.stem} from {spec.base or out.stem}…")
        self.worker.start()
        return self.worker

    def cancel(self) -> None:
        """Stop at the next step; the last checkpoint written is kept (Resume continues it)."""
        if self.worker is not None:
            self.worker.quit()
            self.cancel_button.setEnabled(False)
            self.status_label.setText("Cancelling…")

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_update(self, update: FineTuneUpdate) -> None:
        pbar = getattr(self.worker, "pbar", None)
        if pbar is not None and update.step > pbar.n:
            pbar.update(update.step - pbar.n)
        if update.kind == "history" and update.history is not None:
            self.curve.set_data(update.history.steps, update.history.loss)
        elif update.kind == "loss" and update.loss is not None:
            self.curve.add(update.step, update.loss)
            self.status_label.setText(f"step {update.step}/{update.total}: loss {update.loss:.4f}")
        elif update.kind == "val" and update.metrics:
            ap = update.metrics.get("AP")
            self.status_label.setText(f"step {update.step}: validation AP {format_metric(ap)}")
        elif update.kind == "checkpoint":
            self.last_output, self.last_step = Path(update.checkpoint), update.step
        elif update.kind == "preview" and update.labels is not None:
            self._show_preview(update.labels)
        elif update.kind == "message" and update.text:
            self.status_label.setText(update.text)

    def _show_preview(self, labels: Any) -> None:
        from ._layers import WRITTEN, _put, digest

        target = self._preview_target
        if not target:
            return
        geometry = {
            "scale": target["scale"],
            "translate": target["translate"],
            **target["transform"],
        }
        # a preview the user has painted into is theirs: the next one goes beside it
        layer = _put(self.viewer, "labels", target["name"], labels, labels.ndim, geometry, {}, True)
        layer.metadata = {**layer.metadata, WRITTEN: digest(layer.data)}

    def _on_returned(self, result: FineTuneResult) -> None:
        self.last_output, self.last_step = Path(result.out), result.step
        ap = (result.metrics or {}).get("AP")
        text = f"Saved {Path(result.out).stem} (step {result.step}/{result.total}"
        text += f", validation AP {format_metric(ap)}" if result.metrics else ""
        text += f") in {result.seconds:.0f} s; it is in the Segment widget's model list."
        lines = [*result.notes, result.message, text]
        self.status_label.setText("\n".join(line for line in lines if line))
        self.publish()

    def _on_error(self, exc: BaseException) -> None:
        show_error(f"Fine-tuning failed: {exc}")
        self.status_label.setText(f"Failed: {exc}")
        self.publish()

    def _on_aborted(self) -> None:
        kept = self.last_output if self.last_output and self.last_output.is_file() else None
        at = f" at step {self.last_step}" if self.last_step else ""
        self.status_label.setText(
            f"Cancelled. Kept {kept.stem}{at}; tick Resume and Train to continue it."
            if kept
            else "Cancelled before the first checkpoint: nothing was saved."
        )
        self.publish()

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)

    def publish(self) -> None:
        """Re-list the models here and in every open Segment widget of this viewer."""
        self.refresh_models()
        module = sys.modules.get("napari_semiconv.plugin.segment_widget")
        if module is None:  # never imported: no Segment widget to refresh
            return
        for widget in QApplication.allWidgets():
            if isinstance(widget, module.SegmentWidget) and widget.viewer is self.viewer:
                widget.refresh_models()

    def _refuse(self, message: str) -> None:
        show_error(message)
        self.status_label.setText(message)
        return None
