"""Tiny worm-like test images (curved thick strokes) and a tiny model config, for fast CPU tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import binary_dilation
from skimage.draw import bezier_curve

from napari_semiconv.core.model.config import ModelConfig


def tiny_model_config(**overrides) -> ModelConfig:
    """resnet18 with narrow FPN/heads: a training step on a 96-128 px crop takes ~1 s on a CPU."""
    options = dict(
        backbone="resnet18",
        min_size=128,
        max_size=128,
        fpn_channels=32,
        box_head_width=64,
        mask_head_width=16,
        embed_hidden=32,
        detections_per_img=20,
    )
    options.update(overrides)
    return ModelConfig(**options)


def toy_worms(
    shape: tuple[int, int] = (112, 112), n: int = 3, seed: int = 0, width: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 0/1 foreground, masks (n, H, W) bool): ``n`` curved strokes, may cross."""
    rng = np.random.default_rng(seed)
    height, wide = shape
    masks = np.zeros((n, height, wide), dtype=bool)
    for k in range(n):
        pts = rng.integers(8, [height - 8, wide - 8], size=(3, 2))
        while np.hypot(*(pts[0] - pts[2])) < min(shape) / 3:  # long enough to look like a worm
            pts[2] = rng.integers(8, [height - 8, wide - 8])
        rr, cc = bezier_curve(*pts[0], *pts[1], *pts[2], weight=1.0, shape=shape)
        masks[k, rr, cc] = True
        masks[k] = binary_dilation(masks[k], iterations=width)
    return masks.any(axis=0).astype(np.float32), masks


def write_folders_dataset(
    root: Path, shape: tuple[int, int], n_images: int, seed: int, prefix: str
) -> Path:
    """An ``images/`` + ``labels/`` folder (the `folders` layout) of toy worms, as real TIFFs."""
    import tifffile

    from napari_semiconv.core.measurements import labels_from_instances

    (root / "images").mkdir()
    (root / "labels").mkdir()
    for i in range(n_images):
        image, masks = toy_worms(shape, n=3, seed=seed + i)
        tifffile.imwrite(root / "images" / f"{prefix}{i}.tif", (image * 255).astype(np.uint8))
        tifffile.imwrite(root / "labels" / f"{prefix}{i}.tif", labels_from_instances(masks))
    return root


def write_bbbc010_like(root: Path, wells: list[str]) -> Path:
    """A BBBC010-layout folder: two 80 x 80 worm masks per well in eachworm/ (no images: the
    binary input is the masks' union)."""
    from PIL import Image

    (root / "eachworm").mkdir(parents=True)
    for k, well in enumerate(wells):
        _, masks = toy_worms((80, 80), n=2, seed=20 + k)
        for i, mask in enumerate(masks, start=1):
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                root / "eachworm" / f"{well}_{i:02d}_ground_truth.png"
            )
    return root


def run_steps(steps) -> tuple[list, object]:
    """Drain a generator such as ``segment_steps``: (the events it yielded, its return value)."""
    events = []
    while True:
        try:
            events.append(next(steps))
        except StopIteration as stop:
            return events, stop.value


def stop_after_first_checkpoint():
    """A context in which ``core.training.train`` is stopped as by Ctrl-C right after its first
    checkpoint: a run part-way through its schedule, for tests that resume one (a time budget
    would end the schedule, and a finished schedule is not resumed)."""
    import contextlib

    import pytest

    from napari_semiconv.core import training

    real = training.train

    def interrupted(config):
        for event in real(config):
            yield event
            if event.phase == "checkpoint":
                raise KeyboardInterrupt

    @contextlib.contextmanager
    def patched():
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(training, "train", interrupted)
            yield

    return patched()
