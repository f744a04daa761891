"""The torch training dataset: samples (+ optional synthetic worms) -> Mask R-CNN inputs/targets.

Each item is (image Tensor (1, H, W) float32, target) with target = {"boxes": (N, 4) float32
xyxy, "labels": (N,) int64 all 1, "masks": (N, H, W) uint8}, the format torchvision's Mask
R-CNN trains on. Boxes are the masks' tight boxes with exclusive right/bottom edges
(x1 = last column + 1), so a one-pixel worm fragment still has a box of positive size.

Randomness: item ``i`` in epoch ``e`` draws from ``numpy.random.default_rng([seed, e, i])``,
so items are reproducible, independent of DataLoader workers and of the order they are asked
for; call ``set_epoch(e)`` each epoch to see new augmentations (and new synthetic worms).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from napari_semiconv.core.data.augment import augment as augment_sample
from napari_semiconv.core.data.augment import crop_size, is_binary_image
from napari_semiconv.core.data.sample import Sample
from napari_semiconv.core.preprocess import check_input_mode, normalise

__all__ = ["WormDataset", "collate", "kfold_wells", "masks_to_boxes", "to_target"]


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float32 xyxy tight boxes of (N, H, W) masks; right/bottom edges exclusive."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for k, mask in enumerate(masks):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            raise ValueError(f"mask {k} is empty; drop empty masks before computing boxes")
        boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def to_target(sample: Sample) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(image (1, H, W) float32, target dict) of a sample; empty masks are dropped."""
    masks = np.asarray(sample.masks, dtype=bool)
    masks = masks[masks.any(axis=(1, 2))]
    image = torch.from_numpy(np.ascontiguousarray(sample.image, dtype=np.float32))[None]
    target = {
        "boxes": torch.from_numpy(masks_to_boxes(masks)).reshape(-1, 4),
        "labels": torch.ones(len(masks), dtype=torch.int64),
        "masks": torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)),
    }
    return image, target


def collate(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list, list]:
    """DataLoader ``collate_fn``: (list of images, list of targets); sizes may differ."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)


class WormDataset(Dataset):
    """Samples (and ``synthetic`` extra synthetic images) as Mask R-CNN training items.

    Args:
        samples: the annotated samples (``Sample``), normalised for the model's input mode.
        augment: apply ``data.augment.augment`` (flips, turns, scale, intensity jitter).
        crop: random window (rows, cols) or int; applied with or without ``augment``.
        seed: base seed of all random choices.
        synthetic: how many synthetic worm images (``core.synthetic.worms``) to append, as items
            ``len(samples) ..``; new worms every epoch. With ``crop``, they are crop-sized
            windows of a synthetic well; without, whole 520 x 696 wells.
        input_mode: "binary" or "brightfield"; None infers it from the first sample (binary when
            its pixels are all 0/1). Needed when there are only synthetic items.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        augment: bool = True,
        crop: int | tuple[int, int] | None = None,
        seed: int = 0,
        synthetic: int = 0,
        *,
        input_mode: str | None = None,
    ) -> None:
        self.samples = list(samples)
        for s in self.samples:
            if not isinstance(s, Sample):
                raise TypeError(f"samples must be data.sample.Sample records, got {type(s)}")
        if isinstance(synthetic, bool) or int(synthetic) != synthetic or synthetic < 0:
            raise ValueError(f"synthetic must be a non-negative integer, got {synthetic!r}")
        if not self.samples and not synthetic:
            raise ValueError("WormDataset needs samples or synthetic > 0")
        if input_mode is None:
            if not self.samples:
                raise ValueError("input_mode is needed when the dataset is synthetic only")
            binary = is_binary_image(self.samples[0].image)
            input_mode = "binary" if binary else "brightfield"
        self.input_mode = check_input_mode(input_mode)
        self.augment = bool(augment)
        self.crop = crop_size(crop)
        self.seed = int(seed)
        self.synthetic = int(synthetic)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations (and synthetic worms) the items show."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples) + self.synthetic

    def sample(self, index: int) -> Sample:
        """Item ``index`` as a (transformed) ``Sample``, before conversion to tensors."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if index < len(self.samples):
            sample = self.samples[index]
        else:
            from napari_semiconv.core.synthetic.worms import FRAME_SHAPE, render_worms

            shape = FRAME_SHAPE
            if self.crop:  # room for augment's zoom-out (scale down to 0.85) around the crop
                shape = tuple(
                    min(int(np.ceil(c / 0.84)), f)
                    for c, f in zip(self.crop, FRAME_SHAPE, strict=True)
                )
            image, masks = render_worms(shape, rng, self.input_mode)
            sample = Sample(normalise(image, self.input_mode), masks, f"synthetic-{index}")
        if self.augment:
            return augment_sample(sample, rng, crop=self.crop, input_mode=self.input_mode)
        if self.crop:
            return _plain_crop(sample, rng, self.crop)
        return sample

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return to_target(self.sample(index))


def _plain_crop(sample: Sample, rng: np.random.Generator, crop: tuple[int, int]) -> Sample:
    """A random window of at most ``crop``, nothing else changed."""
    h, w = sample.image.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    masks = sample.masks[:, y : y + ch, x : x + cw]
    masks = masks[masks.any(axis=(1, 2))]
    return Sample(sample.image[y : y + ch, x : x + cw].copy(), masks.copy(), sample.name)


def kfold_wells(
    names: Sequence[str], k: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k-fold cross-validation splits that keep each well (equal ``names``) in one fold.

    Args:
        names: one name per sample (e.g. the well ids of ``read_bbbc010``'s samples).
        k: number of folds (2 <= k <= number of distinct names).
        seed: shuffles the wells before they are dealt into folds.

    Returns:
        k pairs (train_idx, val_idx) of sorted int arrays into ``names``; the val folds are
        disjoint, cover every index once, and differ in size by at most one well.
    """
    names = [str(n) for n in names]
    wells = sorted(set(names))
    if isinstance(k, bool) or int(k) != k or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    if k > len(wells):
        raise ValueError(f"{len(wells)} distinct wells cannot make {k} folds; lower k")
    order = np.random.default_rng(seed).permutation(len(wells))
    fold_of = {wells[w]: i % k for i, w in enumerate(order)}
    folds = np.array([fold_of[n] for n in names])
    return [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in range(k)]
