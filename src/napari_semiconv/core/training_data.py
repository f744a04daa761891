"""What the trainer feeds the model: samples from disk, batches by step, targets, k-fold splits.

Every random choice here takes an explicit ``numpy.random.Generator`` seeded per step, so a batch
depends on (seed, step, rank) only and a resumed run repeats it exactly. That also lets
:func:`iter_batches` build the batches of the coming steps in worker processes while the GPU
trains on the current one: the same batches, in the same order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler

from napari_semiconv.core.data.dataset import kfold_wells, to_target
from napari_semiconv.core.data.sample import Sample

__all__ = [
    "batch_indices",
    "iter_batches",
    "step_batch",
    "step_seed",
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


def step_seed(*keys: int) -> int:
    """A 32-bit seed drawn from the integers ``keys`` (e.g. seed, step, rank)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


Batch = tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]


def step_batch(config: Any, sampler: DistributedSampler, step: int) -> Batch:
    """The (images, targets) of ``step`` on the sampler's rank, on the CPU, from (seed, step,
    rank) alone.

    ``config`` is a TrainConfig with its samples loaded; ``sampler`` deals them to the ranks.
    Items are synthetic worms with probability ``synthetic_fraction`` (always without samples),
    augmented (``augment``) or cropped to ``crop``.
    """
    from napari_semiconv.core.data.augment import augment

    rng = np.random.default_rng(step_seed(config.seed, step, sampler.rank))
    images, targets = [], []
    for index in batch_indices(sampler, step, config.batch_size):
        if not config.samples or rng.random() < config.synthetic_fraction:
            sample = synthetic_sample(config.model.input_mode, rng, config.crop)
        else:
            sample = config.samples[index]
        if config.augment and len(sample.masks):  # (augment cannot take a worm-free image)
            sample = augment(sample, rng, crop=config.crop, input_mode=config.model.input_mode)
        elif config.crop:
            sample = random_crop(sample, rng, config.crop)
        image, target = sample_to_target(sample)
        images.append(image)
        targets.append(target)
    return images, targets


class _StepBatches(torch.utils.data.Dataset):
    """Item i: the batch of step ``start + i`` on ``rank`` of ``world``."""

    def __init__(self, config: Any, start: int, stop: int, rank: int, world: int) -> None:
        self.config, self.start, self.stop = config, start, stop
        self.sampler = DistributedSampler(
            range(max(1, len(config.samples))),
            num_replicas=world,
            rank=rank,
            shuffle=True,
            seed=config.seed,
        )

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> Batch:
        return step_batch(self.config, self.sampler, self.start + i)


def iter_batches(
    config: Any, start: int, stop: int, rank: int = 0, world: int = 1, workers: int = 0
) -> Iterator[Batch]:
    """The CPU batches of steps ``start`` .. ``stop - 1`` in order.

    ``workers`` > 0 builds them in that many processes, a few steps ahead (torch's DataLoader);
    closing the iterator stops them. 0 builds each when asked, in this process.
    """
    steps = _StepBatches(config, start, stop, rank, world)
    if workers <= 0:
        yield from (steps[i] for i in range(len(steps)))
        return
    loader = torch.utils.data.DataLoader(
        steps,
        batch_size=None,  # an item is already a whole batch
        shuffle=False,
        num_workers=int(workers),
        prefetch_factor=2,
    )
    batches = iter(loader)
    try:
        yield from batches
    finally:
        del batches  # shuts the worker processes down
