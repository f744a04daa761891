"""k-fold cross-validation over wells: a fold's config, its checkpoint path, all folds in turn.

Wells are grouped so no well is split across folds (``core.training_data.kfold_split``, seeded
by the run's seed), so a fold's held-out wells are never seen in its training.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

from napari_semiconv.core.training_config import TrainConfig, TrainProgress
from napari_semiconv.core.training_data import kfold_split, load_samples

__all__ = ["fold_config", "fold_path", "kfold"]


def fold_config(config: TrainConfig, k: int, fold: int) -> TrainConfig:
    """``config`` restricted to fold ``fold`` of ``k``: train on the other wells, validate on it.

    Wells are grouped so no well is split across folds (``core.training_data.kfold_split``);
    ``out`` becomes ``<stem>.fold<i>.pt``.

    Raises:
        ValueError: ``config`` has ``val_wells`` or ``val_samples`` (a fold has its own).
    """
    config.check()
    if config.val_wells or config.val_samples:
        # a fold validates on its held-out wells; load_samples would take the given validation
        # wells out of training too, so they would be in neither set of any fold
        raise ValueError(
            "k-fold cross-validation makes its own validation wells (each fold holds out its "
            "share); leave val_wells and val_samples empty"
        )
    samples = config.samples or load_samples(config)[0]
    train_samples, val_samples = kfold_split(samples, k, fold, seed=config.seed)
    out = str(fold_path(config.out, fold)) if config.out else None
    card = {**config.card, "fold": {"k": int(k), "index": int(fold)}}
    return dataclasses.replace(
        config, samples=train_samples, val_samples=val_samples, out=out, card=card
    )


def fold_path(out: str | os.PathLike[str], fold: int) -> Path:
    """Where fold ``fold`` of a k-fold run writes its checkpoint: model.pt -> model.fold2.pt."""
    path = Path(out)
    return path.with_name(f"{path.stem}.fold{fold}{path.suffix or '.pt'}")


def kfold(config: TrainConfig, k: int) -> Iterator[tuple[int, TrainProgress]]:
    """Train the ``k`` folds one after the other, yielding (fold, progress)."""
    from napari_semiconv.core.training import train  # the trainer imports this module

    for fold in range(k):
        for progress in train(fold_config(config, k, fold)):
            yield fold, progress
