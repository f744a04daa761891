"""Rescaling: segment worms imaged at another pixel size than the model learnt them at.

A model sees an image at its own pixel scale (``core.model.run_modes.native_scale``), so it
finds worms of the size it was trained on: the bundled models learnt BBBC010's, about 8-9 px
wide and 120 px long. An image taken at twice the magnification shows worms twice as large, and
the network then finds fragments of them, with high scores (``worms-brightfield`` on a BBBC010
well enlarged 2x: AP 0.00). ``segment(..., rescale=f)`` resizes the normalised image by ``f``
before the network (``f = 0.5`` for that image), and brings the worms, Φ and the foreground back
to the image's own size after the clean-up, so the outputs line up with the image as always.

The image is resized with bilinear interpolation (antialiased when shrinking); a binary input is
cut again at 0.5, so it stays the 0/1 foreground the binary models learnt. Masks come back by
bilinear interpolation cut at 0.5, Φ (a displacement in pixels) is interpolated and divided by
``f``, the foreground probability is interpolated.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported when a resize runs: the widgets read the limits first
    import torch

    from napari_semiconv.core.detections import Instances

__all__ = [
    "MAX_RESCALE",
    "MIN_RESCALE",
    "check_rescale",
    "instances_at_size",
    "masks_at_size",
    "rescaled_input",
]

#: the factors accepted: a tenth to ten times the image's size
MIN_RESCALE, MAX_RESCALE = 0.1, 10.0
# masks resized per chunk: N masks at full size as float32 would be 4·N·H·W bytes at once
_CHUNK = 16


def check_rescale(rescale: float, name: str = "rescale") -> float:
    """``rescale`` as a float in [MIN_RESCALE, MAX_RESCALE]; ValueError naming ``name`` else."""
    if isinstance(rescale, bool) or not isinstance(rescale, (int, float, np.number)):
        raise ValueError(f"{name} must be a number, got {rescale!r}")
    value = float(rescale)
    if not math.isfinite(value) or not MIN_RESCALE <= value <= MAX_RESCALE:
        raise ValueError(
            f"{name} must be between {MIN_RESCALE} and {MAX_RESCALE} (the factor the image is "
            f"resized by: 0.5 for worms twice the training size), got {rescale!r}"
        )
    return value


def _resized(array: torch.Tensor, shape: tuple[int, int], antialias: bool) -> torch.Tensor:
    """(C, h, w) float -> (C, *shape), bilinear, pixel centres aligned (align_corners=False)."""
    import torch.nn.functional as F

    return F.interpolate(
        array[None], size=shape, mode="bilinear", align_corners=False, antialias=antialias
    )[0]


def rescaled_input(grey: np.ndarray, factor: float, input_mode: str) -> np.ndarray:
    """The normalised (H, W) image resized by ``factor`` (each side rounded, at least 1 px)."""
    import torch

    height, width = grey.shape
    shape = (max(1, round(height * factor)), max(1, round(width * factor)))
    small = _resized(torch.from_numpy(np.ascontiguousarray(grey, np.float32))[None], shape,
                     antialias=factor < 1)[0].numpy()  # fmt: skip
    if input_mode == "binary":
        return (small > 0.5).astype(np.float32)
    return np.clip(small, 0.0, 1.0).astype(np.float32)


def masks_at_size(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, h, w) bool masks at ``shape``: bilinear, cut at 0.5 (a chunk of masks at a time)."""
    import torch

    out = np.zeros((len(masks), *shape), dtype=bool)
    for start in range(0, len(out), _CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(masks[start : start + _CHUNK])).float()
        # antialiased when shrinking: a thin worm must not vanish between the samples
        smaller = shape[0] < chunk.shape[-2]
        out[start : start + _CHUNK] = (_resized(chunk, shape, antialias=smaller) > 0.5).numpy()
    return out


def instances_at_size(found: Instances, shape: tuple[int, int], factor: float) -> Instances:
    """``found`` (segmented on the image resized by ``factor``) at the image's own ``shape``."""
    import torch

    from napari_semiconv.core.detections import Instances

    masks = masks_at_size(found.masks, shape)
    phi = torch.from_numpy(np.ascontiguousarray(found.displacement, np.float32))
    displacement = (_resized(phi, shape, antialias=factor > 1) / factor).numpy()
    foreground = None
    if found.foreground is not None:
        fg = torch.from_numpy(np.ascontiguousarray(found.foreground, np.float32))[None]
        foreground = _resized(fg, shape, antialias=factor > 1)[0].numpy()
    return Instances(masks, found.scores.copy(), displacement, foreground)
