"""The Segment widget's "Choose thresholds": a generator for ``napari.qt.threading`` (no Qt).

The user's labels (e.g. the worms layer after correcting it) are the truth; the model's worms
before the clean-up are computed once per mask threshold and every setting is scored
(``core.threshold_search``). One mask threshold at a time, so Cancel stops between passes.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.refine import FOREGROUND_CUT_GRID, SEARCH_GRID
from ._workers import ModelCache, RunUpdate

SCORE_THRESHOLDS, MASK_THRESHOLDS, MAX_OVERLAPS = SEARCH_GRID


@dataclass(frozen=True)
class TuneRequest:
    """Captured on the GUI thread when "Choose thresholds" is clicked."""

    image_name: str
    labels_name: str
    image: np.ndarray  # (H, W) or (H, W, 3|4) RGB(A)
    labels: np.ndarray  # (H, W) integer ids, 0 = background
    model: str
    device: str
    current: dict[str, float]  # the widget's thresholds now, scored for comparison
    foreground_threshold: float | None = None  # the widget's cut (a cascade), else None
    rescale: float = 1.0  # the widget's Rescale: scored where Segment runs the network


@dataclass
class TuneResult:
    request: TuneRequest
    best: dict[str, Any]  # the best row (core.threshold_search), by avS
    current: dict[str, Any] | None  # the row of the widget's thresholds, if in the grid
    rows: list[dict[str, Any]]


def _sample(request: TuneRequest, input_mode: str) -> Any:
    from ..core.data.arrays import labels_to_masks
    from ..core.data.sample import Sample
    from ..core.preprocess import normalise, to_grey

    image = np.asarray(request.image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(
            f"choose thresholds on one 2-D image (grey or RGB); {request.image_name!r} has "
            f"shape {image.shape}"
        )
    grey = normalise(to_grey(image), input_mode)
    masks = labels_to_masks(np.asarray(request.labels), grey.shape)
    if request.rescale != 1.0:
        # the thresholds act on the network's output, so they are chosen at the size Segment
        # shows it the image: the image and the truth resized alike
        from ..core.rescale import masks_at_size, rescaled_input

        grey = rescaled_input(grey, request.rescale, input_mode)
        masks = masks_at_size(masks, grey.shape)
        masks = masks[masks.reshape(len(masks), -1).any(axis=1)]  # a worm too thin to keep
    return Sample(grey, masks, request.image_name)


def run_tuning(request: TuneRequest, cache: ModelCache) -> Generator[RunUpdate, None, TuneResult]:
    """Score every threshold setting (a cascade: at every foreground cut) on the request's
    image against its labels."""
    from ..core.threshold_search import best_setting, search_thresholds

    yield RunUpdate(0, len(MASK_THRESHOLDS), "loading the model")
    model = cache.get(request.model, request.device)
    sample = _sample(request, model.config.input_mode)
    masks = sorted({*MASK_THRESHOLDS, request.current["mask_threshold"]})
    scores = sorted({*SCORE_THRESHOLDS, request.current["score_threshold"]})
    overlaps = sorted({*MAX_OVERLAPS, request.current["max_overlap"]})
    current_cut = request.foreground_threshold
    if not model.config.foreground_width:
        current_cut = None  # the widget's cut is off for models without a foreground network
    cuts = [None] if current_cut is None else sorted({*FOREGROUND_CUT_GRID, current_cut})
    passes = [(cut, mask) for cut in cuts for mask in masks]
    rows: list[dict[str, Any]] = []
    for done, (cut, mask_threshold) in enumerate(passes):
        text = f"mask threshold {mask_threshold:.2f}"
        yield RunUpdate(done, len(passes), text if cut is None else f"cut {cut:.2f}, {text}")
        rows += search_thresholds(
            model, [sample], scores, [mask_threshold], overlaps,
            foreground_cuts=None if cut is None else [cut],
        )  # fmt: skip
    yield RunUpdate(len(passes), len(passes), "scored")
    now = dict(request.current)
    if current_cut is not None:
        now["foreground_threshold"] = current_cut
    current = next((r for r in rows if all(r[k] == v for k, v in now.items())), None)
    return TuneResult(request, best_setting(rows, "avS"), current, rows)
