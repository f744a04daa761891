"""Temporary run settings of a detector: native pixel scale, an early score threshold, and a
bright-field cascade's foreground cut.

All are context managers that set a run setting for the duration of a call, so training
(``core.training``) and inference (``core.inference``) share them. One model object may serve
several threads at once (a notebook's thread pool): the score threshold and the foreground cut
are therefore held per thread (a thread's own value, read through :func:`thread_value`), and the
native scale, which every run wants, is counted so that the last run to end restores it. (They
were plain attributes set and restored around a call: two threads with thresholds 0.9 and 0.2
lost worms, and left the model at 0.9 for every later call.)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = [
    "active_foreground_threshold",
    "check_foreground_cut",
    "detection_threshold",
    "foreground_cut",
    "native_scale",
    "thread_value",
]

_per_thread = threading.local()
_scale_lock = threading.Lock()
_scale_users: dict[int, int] = {}  # id(transform) -> runs now inside native_scale


def _overrides(owner: object, key: str) -> list[Any]:
    """This thread's stack of values set for ``owner``'s ``key`` (innermost last)."""
    table = getattr(_per_thread, "table", None)
    if table is None:
        table = _per_thread.table = {}
    return table.setdefault((id(owner), key), [])


@contextlib.contextmanager
def _thread_override(owner: object, key: str, value: Any) -> Iterator[None]:
    stack = _overrides(owner, key)
    stack.append(value)
    try:
        yield
    finally:
        stack.pop()


def thread_value(owner: object, key: str, default: Any) -> Any:
    """The value this thread has set for ``owner``'s ``key`` inside a run mode, else ``default``."""
    stack = _overrides(owner, key)
    return stack[-1] if stack else default


def active_foreground_threshold(config: Any) -> float:
    """A cascade's foreground cut as this thread runs it: a :func:`foreground_cut` in force,
    else ``config.foreground_threshold``."""
    return float(thread_value(config, "foreground_threshold", config.foreground_threshold))


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
    key = id(transform)
    with _scale_lock:  # nested or concurrent runs: the first in patches, the last out restores
        _scale_users[key] = _scale_users.get(key, 0) + 1
        if _scale_users[key] == 1:
            transform.resize = _identity_resize  # an instance attribute shadows the method
    try:
        yield
    finally:
        with _scale_lock:
            _scale_users[key] -= 1
            if not _scale_users[key]:
                del _scale_users[key]
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
    below = float(np.nextafter(np.float32(score_threshold), np.float32(-np.inf)))
    if hasattr(heads, "own_score_thresh"):  # this project's heads: a per-thread setting
        with _thread_override(heads, "score_thresh", max(heads.own_score_thresh, below)):
            yield
        return
    own = heads.score_thresh  # another detector's heads (a benchmark's torchvision model)
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
    (``core.detections.worm_foreground``), both through :func:`active_foreground_threshold`, so
    it is set there and
    restored after, for this thread only (:func:`active_foreground_threshold` reads it).

    Raises:
        ValueError: see :func:`check_foreground_cut`.
    """
    value = check_foreground_cut(model, threshold)
    config = getattr(model, "module", model).config
    if value is None:
        yield
        return
    with _thread_override(config, "foreground_threshold", value):
        yield
