"""Temporary run settings of a detector: native pixel scale, and an early score threshold.

Both are context managers that patch the model for the duration of a call and restore it, so
training (``core.training``) and inference (``core.inference``) share them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["detection_threshold", "native_scale"]


def _identity_resize(image: torch.Tensor, target: Any = None) -> tuple[torch.Tensor, Any]:
    return image, target


@contextlib.contextmanager
def native_scale(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` (a SemiConvMaskRCNN, or DDP around one) at the input's own pixel scale.

    torchvision's transform resizes every image so its short side is ``min_size``; for crops and
    tiles of another size than the training images that would change the worms' size in pixels.
    Training and inference both run at scale 1 instead (mean/std normalisation and batching by
    padding still apply), so a model sees worms at the microscope's scale in both.
    """
    transform = getattr(model, "module", model).transform
    if "resize" in vars(transform):  # already at native scale (nested or concurrent use)
        yield
        return
    transform.resize = _identity_resize  # an instance attribute shadows the method
    try:
        yield
    finally:
        vars(transform).pop("resize", None)


@contextlib.contextmanager
def detection_threshold(model: torch.nn.Module, score_threshold: float) -> Iterator[None]:
    """Let the model drop detections scoring below ``score_threshold`` before pasting masks.

    torchvision keeps boxes scoring above ``roi_heads.score_thresh`` (0.05) and pastes a
    full-size mask for each; most score below what :func:`segment` keeps. Dropping them first
    gives the same worms: NMS only ever suppresses a box with a higher-scoring one, so the boxes
    at or above the threshold and their order do not change. torchvision keeps scores strictly
    above its threshold, so it is set to the largest float32 below ``score_threshold``.
    """
    heads = getattr(getattr(model, "module", model), "roi_heads", None)
    if not hasattr(heads, "score_thresh"):  # another detector: its outputs are filtered after
        yield
        return
    own = heads.score_thresh
    below = float(np.nextafter(np.float32(score_threshold), np.float32(-np.inf)))
    heads.score_thresh = max(own, below)
    try:
        yield
    finally:
        heads.score_thresh = own
