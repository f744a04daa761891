"""The trainer's records: its settings (`TrainConfig`), its progress events (`TrainProgress`),
the learning-rate schedule and the error raised when a run diverges.

Kept apart from the training loop so the CLI and the napari widget can fill a `TrainConfig`
and read `TrainProgress` without reading the loop.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_semiconv.core.data.sample import Sample
from napari_semiconv.core.model.config import ModelConfig


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN/inf; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Everything a training run needs (a plain record: the napari widget and the CLI fill it).

    Data: ``samples`` (normalised for ``model.input_mode``) or ``data_root`` + ``layout``
    ("bbbc010" with optional ``wells`` / "folders"); validation: ``val_samples`` or ``val_wells``.
    ``synthetic_fraction`` of the batch items are synthetic worms (all when there is no data).

    Schedule: ``iterations`` steps of ``batch_size`` images per process; the learning rate warms
    up linearly over ``warmup_iters`` from ``lr * warmup_factor``, then follows ``schedule``:
    "step" (×0.1 at each fraction in ``lr_steps``) or "cosine" (to 0 at the end).

    Output: ``out`` (the last checkpoint, every ``checkpoint_every`` steps and at the end) and
    :func:`best_path` (the best validation AP, checked every ``eval_every`` steps and at the end).
    ``resume=True`` continues from ``out``; without it an existing ``out`` is an error.
    ``base``: fine-tune from this checkpoint; ``train_heads_only`` freezes the backbone + FPN.

    ``data_workers``: processes that build the coming steps' batches while the current one
    trains (worth it on a GPU; the batches are the same as with 0, which builds them in turn).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    samples: list[Sample] = field(default_factory=list)
    val_samples: list[Sample] = field(default_factory=list)
    data_root: str | None = None
    layout: str = "bbbc010"
    wells: list[str] | None = None
    val_wells: list[str] | None = None
    iterations: int = 1000
    batch_size: int = 4
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    schedule: str = "step"
    lr_steps: tuple[float, ...] = (0.67, 0.89)
    grad_clip: float = 10.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    crop: int | None = 256
    augment: bool = True
    synthetic_fraction: float = 0.0
    eval_every: int = 0
    checkpoint_every: int = 100
    out: str | None = None
    resume: bool = False
    base: str | None = None
    train_heads_only: bool = False
    time_budget_s: float | None = None
    data_workers: int = 0
    card: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise ValueError/TypeError naming the first bad setting."""
        if not isinstance(self.model, ModelConfig):
            raise TypeError(f"model must be a ModelConfig, got {type(self.model).__name__}")
        for name in ("iterations", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule must be 'step' or 'cosine', got {self.schedule!r}")
        if not 0.0 <= self.synthetic_fraction <= 1.0:
            raise ValueError(f"synthetic_fraction must be in [0, 1], got {self.synthetic_fraction}")
        if self.crop is not None and int(self.crop) < 32:
            raise ValueError(f"crop must be at least 32 pixels (or None), got {self.crop}")
        if self.layout not in ("bbbc010", "folders"):
            raise ValueError(f"layout must be 'bbbc010' or 'folders', got {self.layout!r}")
        if self.out and Path(self.out).is_dir():
            raise ValueError(f"out {self.out} is a folder; give a file name, e.g. worms.pt in it")
        if self.resume and not self.out:
            raise ValueError("resume=True needs out= (the checkpoint to continue)")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(
                f"time_budget_s must be > 0 seconds (or None), got {self.time_budget_s}"
            )
        if int(self.data_workers) < 0:
            raise ValueError(f"data_workers must be >= 0, got {self.data_workers}")
        if self.grad_clip <= 0 or self.checkpoint_every < 1 or self.eval_every < 0:
            raise ValueError("grad_clip and checkpoint_every must be > 0, eval_every >= 0")


@dataclass
class TrainProgress:
    """One event of :func:`train`.

    ``phase``: "train" (after a step), "val" (``metrics`` holds the validation summary),
    "checkpoint" (``checkpoint`` names the file written) or "done" (``model`` is the result).
    """

    iteration: int
    total: int
    phase: str
    losses: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    images_per_s: float = 0.0
    eta_s: float = 0.0
    metrics: dict[str, Any] | None = None
    checkpoint: str | None = None
    message: str = ""
    model: Any = None  # "done" only: the trained model, in eval mode, ready to segment


def best_path(out: str | os.PathLike[str]) -> Path:
    """Where the best-by-validation checkpoint of ``out`` goes: model.pt -> model.best.pt."""
    out = Path(out)
    return out.with_name(f"{out.stem}.best{out.suffix or '.pt'}")


#: warm-up never takes more than this share of a run: a short run, or a time budget spent in fewer
#: steps than ``warmup_iters``, would otherwise train at a tiny rate and never decay
WARMUP_SHARE = 0.1


def lr_factor(config: TrainConfig, step: int, fraction: float | None = None) -> float:
    """Multiplier of ``config.lr`` at ``step`` (0-based): warm-up, then step or cosine decay.

    ``fraction`` (0..1) is how far the run is; by default ``step / iterations``. A run with a
    time budget passes the larger of that and the fraction of its budget spent, so the decay
    still happens when time, not the step count, ends the run. The warm-up ends after
    ``warmup_iters`` steps or :data:`WARMUP_SHARE` of the run, whichever comes first.
    """
    if fraction is None:
        fraction = step / max(1, config.iterations)
    alpha = max(step / max(1, config.warmup_iters), fraction / WARMUP_SHARE)
    if alpha < 1:
        return config.warmup_factor * (1 - alpha) + alpha
    if config.schedule == "cosine":
        start = min(config.warmup_iters / max(1, config.iterations), WARMUP_SHARE)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, fraction - start) / (1 - start))))
    return 0.1 ** sum(fraction >= f for f in config.lr_steps)
