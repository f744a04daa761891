"""Temporary run settings of a detector: native pixel scale, an early score threshold, and a
bright-field cascade's foreground cut.

All are context managers that patch the model for the duration of a call and restore it, so
training (``core.training``) and inference (``core.inference``) share them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["check_foreground_cut", "detection_threshold", "foreground_cut", "native_scale"]


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


def check_foreground_cut(
    model: torch.nn.Module, threshold: float | None, name: str = "foreground_threshold"
) -> float | None:
    """``threshold`` as a float, if ``model`` can take it as its U-Net's cut; None stays None.
    ``name`` is what the messages call it (the argument or option it came from).

    Raises:
        ValueError: a cut for a model without a foreground U-Net, or one outside (0, 1).
    """
    if threshold is None:
        return None
    config = getattr(model, "module", model).config
    if not config.foreground_width:
        raise ValueError(
            f"{name}: only a bright-field cascade (a model with a foreground U-Net, such as "
            "worms-brightfield) has a foreground cut"
        )
    value = float(threshold)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return value


@contextlib.contextmanager
def foreground_cut(model: torch.nn.Module, threshold: float | None) -> Iterator[None]:
    """Cut a bright-field cascade's U-Net map at ``threshold`` for the duration (None: the
    model's own ``config.foreground_threshold``, untouched).

    The cut is read by the forward pass (the detector's binary input) and by the clean-up
    (``core.detections.worm_foreground``), both from the config, so it is set there and
    restored after. Not for two threads running one model object with different cuts.

    Raises:
        ValueError: see :func:`check_foreground_cut`.
    """
    value = check_foreground_cut(model, threshold)
    config = getattr(model, "module", model).config
    own = config.foreground_threshold
    if value is None or value == own:
        yield
        return
    config.foreground_threshold = value
    try:
        yield
    finally:
        config.foreground_threshold = own
