"""What the trainer feeds the model: samples from disk, batches by step, targets, k-fold splits.

Every random choice here takes an explicit ``numpy.random.Generator`` (the trainer seeds one per
step), so a batch depends on (seed, step, rank) only and a resumed run repeats it exactly.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler

from napari_semiconv.core.data.dataset import kfold_wells, to_target
from napari_semiconv.core.data.sample import Sample

__all__ = [
    "batch_indices",
    "kfold_split",
    "load_samples",
    "random_crop",
    "read_samples",
    "sample_to_target",
    "synthetic_sample",
    "well_of",
]

_WELL = re.compile(r"(?<![A-Za-z0-9])([A-P])(\d{2})(?!\d)")


def read_samples(
    root: str, layout: str, input_mode: str, wells: list[str] | None = None
) -> list[Sample]:
    """Samples of a data folder, normalised for ``input_mode``.

    Raises:
        ValueError: unknown layout, ``wells`` with the folders layout, or no images found.
    """
    if layout == "bbbc010":
        from napari_semiconv.core.data.bbbc010 import read_bbbc010

        samples = read_bbbc010(root, input_mode, wells=wells)
    elif layout == "folders":
        if wells:
            raise ValueError("wells apply to the bbbc010 layout only")
        from napari_semiconv.core.data.folders import read_folders

        samples = read_folders(root, input_mode)
    else:
        raise ValueError(f"layout must be 'bbbc010' or 'folders', got {layout!r}")
    if not samples:
        raise ValueError(f"no annotated images found in {root} (layout {layout})")
    return samples


def load_samples(config: Any) -> tuple[list[Sample], list[Sample]]:
    """(train, validation) samples of a TrainConfig's ``data_root``; no validation without
    ``val_wells``. Validation wells are removed from the training set."""
    mode = config.model.input_mode
    val: list[Sample] = []
    train = read_samples(config.data_root, config.layout, mode, config.wells)
    if config.val_wells:
        val = read_samples(config.data_root, config.layout, mode, config.val_wells)
        held = {well_of(s.name) for s in val}
        train = [s for s in train if well_of(s.name) not in held]
        if not train:
            raise ValueError("every training image is in a validation well; check val_wells")
    return train, val


def well_of(name: str) -> str:
    """The BBBC010 well (e.g. "A01") in a sample name, or the name itself when there is none."""
    match = _WELL.search(name)
    return f"{match.group(1)}{match.group(2)}" if match else name


def kfold_split(
    samples: list[Sample], k: int, fold: int, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """(train, held-out) for fold ``fold`` of ``k``; the samples of one well stay together.

    Raises:
        ValueError: k < 2, fold outside 0..k-1, or fewer wells than folds
            (``core.data.dataset.kfold_wells`` deals the wells into folds).
    """
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1}, got {fold}")
    train_idx, val_idx = kfold_wells([well_of(s.name) for s in samples], k, seed)[fold]
    return [samples[i] for i in train_idx], [samples[i] for i in val_idx]


def batch_indices(sampler: DistributedSampler, step: int, batch_size: int) -> list[int]:
    """The sample indices of ``step`` for this rank: consecutive items of the sampler's epochs.

    Epoch e is the sampler's permutation after ``set_epoch(e)``, so the sequence is a function of
    (seed, rank, world size) only and any step can be recomputed when resuming.
    """
    per_epoch = len(sampler)
    out = []
    cache: dict[int, list[int]] = {}
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, per_epoch)
        if epoch not in cache:
            sampler.set_epoch(epoch)
            cache[epoch] = list(sampler)
        out.append(cache[epoch][offset])
    return out


def random_crop(sample: Sample, rng: np.random.Generator, crop: int) -> Sample:
    """A window of at most ``crop`` × ``crop`` pixels at a random position (no other change)."""
    height, width = sample.image.shape
    y = int(rng.integers(0, height - crop + 1)) if height > crop else 0
    x = int(rng.integers(0, width - crop + 1)) if width > crop else 0
    window = (slice(y, y + crop), slice(x, x + crop))
    return Sample(sample.image[window], sample.masks[(slice(None), *window)], sample.name)


def sample_to_target(
    sample: Sample, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(image (1, H, W) float32, target) on ``device`` (``core.data.dataset.to_target``: tight
    xyxy boxes, empty masks dropped)."""
    if len(sample.masks) == 0:
        # a crop that missed every worm: a negative image (to_target cannot reshape 0 masks)
        height, width = sample.image.shape
        image = torch.from_numpy(np.ascontiguousarray(sample.image, dtype=np.float32))[None]
        target = {
            "boxes": torch.zeros((0, 4), dtype=torch.float32),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros((0, height, width), dtype=torch.uint8),
        }
    else:
        image, target = to_target(sample)
    return image.to(device), {k: v.to(device) for k, v in target.items()}


def synthetic_sample(input_mode: str, rng: np.random.Generator, size: int | None) -> Sample:
    """A synthetic C. elegans-like image (``core.synthetic.worms``), ``size`` px square."""
    from napari_semiconv.core.preprocess import normalise
    from napari_semiconv.core.synthetic.worms import render_worms

    side = int(size or 256)
    image, masks = render_worms((side, side), rng=rng, mode=input_mode)
    return Sample(normalise(image, input_mode), np.asarray(masks, dtype=bool), "synthetic")
