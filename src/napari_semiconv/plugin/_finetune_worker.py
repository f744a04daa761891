"""The Fine-tune widget's run, as a generator for ``napari.qt.threading`` (no Qt in here).

It builds the TrainConfig (``core.finetune.build_train_config``), runs the trainer under the time
budget, keeps the loss history beside the checkpoint and, every ``preview_every`` steps, segments
the preview image with the latest checkpoint. Every trainer step yields, so ``worker.quit()``
cancels within one step; the checkpoints already written stay valid.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.finetune import FineTuneSpec, LossHistory, history_path


@dataclass
class FineTuneUpdate:
    """One event for the GUI thread.

    ``kind``: "message", "history" (a resumed run's earlier curve), "loss", "val",
    "checkpoint" or "preview" (``labels`` of the preview image at ``step``).
    """

    kind: str
    step: int = 0
    total: int = 0
    text: str = ""
    loss: float | None = None
    history: LossHistory | None = None
    labels: np.ndarray | None = None
    checkpoint: str | None = None
    metrics: dict[str, Any] | None = None


@dataclass
class FineTuneResult:
    """What a finished (or budget-stopped) run hands back."""

    out: str
    step: int
    total: int
    metrics: dict[str, Any] | None
    message: str
    seconds: float
    notes: list[str] = field(default_factory=list)  # e.g. files a folder's pairs left out


class FineTuneError(Exception):
    """A failure inside the run (e.g. the loss diverged, out of memory), with its message.

    superqt drops a ``RuntimeError`` escaping a worker's generator as "worker deleted", so
    torch's RuntimeErrors (and ``TrainingDiverged``) are re-raised as this type.
    """


def preview_labels(checkpoint: str, image: np.ndarray, device: str) -> np.ndarray:
    """The label image that ``checkpoint`` predicts for ``image`` (default thresholds)."""
    from ..core.checkpoint import load_checkpoint, model_from_checkpoint
    from ..core.inference import segment

    model = model_from_checkpoint(load_checkpoint(checkpoint), device=device)
    return segment(model, image).labels()


def run_finetune(
    spec: FineTuneSpec, preview_image: np.ndarray | None = None
) -> Generator[FineTuneUpdate, None, FineTuneResult]:
    """Fine-tune per ``spec``; yields progress, returns the result."""
    try:
        result = yield from _run(spec, preview_image)
    except RuntimeError as exc:
        raise FineTuneError(f"{type(exc).__name__}: {exc}") from exc
    return result


def _run(
    spec: FineTuneSpec, preview_image: np.ndarray | None
) -> Generator[FineTuneUpdate, None, FineTuneResult]:
    from ..core.finetune import build_train_config, train_with_budget

    start = time.perf_counter()
    yield FineTuneUpdate("message", text="reading the base model and the pairs")
    config = build_train_config(spec)
    notes = []
    if spec.folder:  # a misnamed file is left out: say so, not only in a log
        from ..core.data.folders import unpaired_files

        notes = unpaired_files(spec.folder)
        for note in notes:
            yield FineTuneUpdate("message", text=note)
    out = Path(config.out)
    yield FineTuneUpdate("message", total=config.iterations, text=f"training {out.stem}")
    history = LossHistory.load(history_path(out)) if spec.resume else LossHistory()
    last_preview, metrics, final = None, None, None
    for event in train_with_budget(config, spec.minutes):
        if event.phase == "train" and not event.losses:  # the start (or resume) event
            history.truncate(event.iteration)
            if spec.resume:  # the curve restarts from what the checkpoint holds
                yield FineTuneUpdate("history", event.iteration, event.total, history=history)
            last_preview = event.iteration
            yield FineTuneUpdate("message", event.iteration, event.total, event.message)
        elif history.add(event):
            yield FineTuneUpdate("loss", event.iteration, event.total, loss=history.loss[-1])
        elif event.phase == "val":
            metrics = event.metrics
            yield FineTuneUpdate("val", event.iteration, event.total, metrics=metrics)
        elif event.phase == "checkpoint":
            is_last = Path(event.checkpoint) == out
            if is_last:  # the curve on disk always ends at the checkpoint's step
                history.save(history_path(out))
            yield FineTuneUpdate("checkpoint", event.iteration, event.total, checkpoint=str(out))
            due = spec.preview_every > 0 and event.iteration - last_preview >= spec.preview_every
            if preview_image is not None and is_last and (due or event.iteration >= event.total):
                last_preview = event.iteration
                try:
                    labels = preview_labels(event.checkpoint, preview_image, config.device)
                except (ValueError, TypeError) as exc:  # the image, not the training, is wrong
                    preview_image = None
                    text = f"preview stopped ({exc}); training goes on"
                    yield FineTuneUpdate("message", event.iteration, event.total, text)
                else:
                    yield FineTuneUpdate("preview", event.iteration, event.total, labels=labels)
        elif event.phase == "done":
            final = event
    step = final.iteration if final else 0
    return FineTuneResult(
        out=str(out),
        step=step,
        total=config.iterations,
        metrics=metrics,
        message=final.message if final else "",
        seconds=time.perf_counter() - start,
        notes=notes,
    )
