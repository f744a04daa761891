"""How large a model's worms are, and a word when an image's worms are far from it.

A network trained on worms of one size in pixels finds worms of about that size. When the worms
it finds in an image are far smaller or larger, the image is rarely what the model expects: an
inverted bright-field image, a fluorescence channel, or worms imaged at another magnification.
The network stays confident there, so its scores cannot tell; the sizes can. On BBBC010 (both
bundled models) the median area of the worms found per image was 848-1240 px on the 50 training
wells (none warned), and 33-300 px or 1800-52600 px on fold 0's 10 wells inverted, as their
fluorescence channel (w1), or enlarged / shrunk twice (docs/reliability.md). So a median below
SMALL_SHARE or above LARGE_SHARE of the model's own worm area gets a warning (a word, not a
refusal: larvae are small worms too).

The model's worm area is the median area of its training worms (``worm_area`` in its card,
written by ``core.training``); models without it (the bundled ones, trained on BBBC010 at its
own scale) have BBBC010's: TYPICAL_WORM_AREA.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "LARGE_SHARE",
    "MIN_WORMS",
    "SMALL_SHARE",
    "TYPICAL_WORM_AREA",
    "learnt_worm_area",
    "size_warning",
    "worm_area_record",
]

#: median area in pixels of the 710 worm masks of BBBC010's 50 training wells (5-95 %: 782-1214)
TYPICAL_WORM_AREA = 1001.0
#: a median area under this share of the model's, or over LARGE_SHARE of it, is out of place
SMALL_SHARE = 0.4
LARGE_SHARE = 1.7
#: fewer worms than this say too little about their size
MIN_WORMS = 5


def worm_area_record(masks_of_images: Iterable[np.ndarray]) -> dict[str, Any] | None:
    """{"median": px, "n": worms} of the worms in (N, H, W) mask stacks, for a model's card;
    None when there is no worm."""
    areas = [
        np.asarray(masks, dtype=bool).reshape(len(masks), -1).sum(axis=1)
        for masks in masks_of_images
        if len(masks)
    ]
    if not areas:
        return None
    every = np.concatenate(areas)
    every = every[every > 0]
    if every.size == 0:
        return None
    return {"median": float(np.median(every)), "n": int(every.size)}


def learnt_worm_area(card: dict | None) -> float:
    """The median worm area (px) a model learnt: its card's ``worm_area``, else BBBC010's."""
    record = (card or {}).get("worm_area")
    if isinstance(record, dict):
        median = record.get("median")
        if isinstance(median, (int, float)) and not isinstance(median, bool) and median > 0:
            return float(median)
    return TYPICAL_WORM_AREA


def size_warning(areas: np.ndarray, learnt: float, input_mode: str) -> str | None:
    """A message when the median of ``areas`` (the worms found, in the pixels the network saw)
    is far from ``learnt``; None when it is not, or with fewer than MIN_WORMS worms."""
    areas = np.asarray(areas)
    areas = areas[areas > 0]
    if areas.size < MIN_WORMS or learnt <= 0:
        return None
    median = float(np.median(areas))
    share = median / learnt
    if SMALL_SHARE <= share <= LARGE_SHARE:
        return None
    what = (
        "a foreground mask (worms non-zero)"
        if input_mode == "binary"
        else "a bright-field image (dark worms in a bright well)"
    )
    found = (
        f"the {areas.size} worms found are {'smaller' if share < 1 else 'larger'} than the "
        f"worms this model learnt (median {median:.0f} px against {learnt:.0f} px)"
    )
    if share < 1:
        return (
            f"{found}: unless the worms are that small, the image is not what the model "
            f"expects, {what}: it may be inverted or another channel (e.g. fluorescence); "
            "or the worms are imaged at another size: try Rescale"
        )
    return (
        f"{found}: if the worms are that large, try Rescale below 1 (0.5 for worms twice as "
        f"long); else the image may not be {what}"
    )
