"""The Segment widget's "Choose thresholds" row: a labels layer as the truth, a button, a worker.

Gathers the image, the labels, the model and the current thresholds on the GUI thread, runs
``_tune_worker.run_tuning`` in a napari worker and sets the widget's thresholds to the best
setting. Nothing is computed here.
"""

from __future__ import annotations

import logging
from typing import Any

from napari.utils.notifications import show_error
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QPushButton

from ..core.refine import POSTPROCESS_KEYS as KEYS
from ._finetune_pairs import fill_combo, layer_data
from ._threading import worker_for
from ._tune_worker import TuneRequest, TuneResult, run_tuning
from ._workers import ModelCache, RunUpdate

logger = logging.getLogger(__name__)


class ThresholdTuner:
    """``owner``: the Segment widget (its image picker, model, device and threshold spins)."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.worker: Any = None
        self._cache = ModelCache()  # its own: a Segment run may load another model meanwhile
        self.labels_combo = QComboBox()
        self.labels_combo.setToolTip(
            "A labels layer drawn on the chosen image (e.g. the worms layer after correcting "
            "it): the thresholds that reproduce it best are chosen."
        )
        self.button = QPushButton("Choose thresholds")
        self.button.setToolTip(
            "Score every setting of the three thresholds (and a bright-field cascade's "
            "foreground cut) against the labels (avS, COCO AP) and set the best."
        )
        self.button.clicked.connect(self._clicked)
        self.row = QHBoxLayout()
        self.row.addWidget(self.labels_combo, 1)
        self.row.addWidget(self.button)

    def refresh(self, *_: Any) -> None:
        from napari.layers import Labels

        layers = [layer for layer in self.owner.viewer.layers if isinstance(layer, Labels)]
        fill_combo(self.labels_combo, layers)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def _clicked(self) -> None:
        if self.running:
            self.worker.quit()
            self.button.setEnabled(False)
        else:
            self.start()

    def start(self) -> Any:
        """Start choosing; returns the worker, or None (with a message) if nothing started."""
        request = self._request()
        if request is None:
            return None
        self.worker = worker_for(
            self,
            run_tuning,
            request,
            self._cache,
            anchor=self.owner,
            desc=f"Choosing thresholds on {request.labels_name}",
        )
        self.button.setText("Cancel choosing")
        self.owner.result_label.setText(f"Choosing thresholds on {request.labels_name}…")
        self.worker.start()
        return self.worker

    def _request(self) -> TuneRequest | None:
        owner = self.owner
        image, labels = owner.image_layer(), self.labels_combo.currentData()
        model = owner.model_choice()
        if image is None or labels is None or model is None:
            show_error(
                "Choose an image, a model and a labels layer drawn on that image (e.g. the "
                "worms layer after correcting it) to choose thresholds on."
            )
            return None
        from ..core.visualise import select_channel

        try:
            data = select_channel(layer_data(image), *owner.images.channel())
        except ValueError as exc:
            show_error(f"Cannot choose thresholds on {image.name!r}: {exc}")
            return None
        return TuneRequest(
            image_name=image.name,
            labels_name=labels.name,
            image=data,
            labels=layer_data(labels),
            model=model,
            device=owner.device_combo.currentText() or "auto",
            current={
                k: round(float(s.value()), 4) for k, s in zip(KEYS, owner.spins(), strict=True)
            },
            foreground_threshold=_rounded(owner.foreground_cut()),
            rescale=float(owner.rescale_spin.value()),
        )

    def _on_update(self, update: RunUpdate) -> None:
        pbar = getattr(self.worker, "pbar", None)
        if pbar is not None and update.total:
            pbar.total = update.total
            if update.done > pbar.n:
                pbar.update(update.done - pbar.n)

    def _on_returned(self, result: TuneResult) -> None:
        best = result.best
        if self.owner.model_choice() != result.request.model:
            # the model was changed while choosing: these thresholds suit the other one
            self.owner.result_label.setText(
                f"Thresholds not changed: they were chosen for {result.request.model!r}, "
                "and another model is selected now (choose again)."
            )
            return
        for key, spin in zip(KEYS, self.owner.spins(), strict=True):
            spin.setValue(float(best[key]))
        cut = ""
        if "foreground_threshold" in best:  # a cascade: its U-Net's cut was chosen too
            self.owner.cut_spin.setValue(float(best["foreground_threshold"]))
            cut = f", foreground cut {best['foreground_threshold']:.2f}"
        before = "" if result.current is None else f"; before: {result.current['avS']:.3f}"
        self.owner.result_label.setText(
            f"Thresholds chosen on {result.request.labels_name!r}: score "
            f"{best['score_threshold']:.2f}, mask {best['mask_threshold']:.2f}, overlap "
            f"{best['max_overlap']:.2f}{cut} (avS {best['avS']:.3f}{before}; AP "
            f"{best['AP']:.3f})"
        )

    def _on_error(self, exc: BaseException) -> None:
        logger.warning("choosing thresholds failed", exc_info=exc)
        show_error(f"Could not choose thresholds: {exc}")
        self.owner.result_label.setText(f"Thresholds not changed: {exc}")

    def _on_aborted(self) -> None:
        self.owner.result_label.setText("Cancelled: the thresholds were not changed.")

    def _on_finished(self) -> None:
        self.worker = None
        self.button.setText("Choose thresholds")
        self.button.setEnabled(True)


def _rounded(value: float | None) -> float | None:
    """A spin box's value as the search grid holds it (4 decimals), so the current setting's
    row is found among the scored ones."""
    return None if value is None else round(float(value), 4)
