"""Instance clean-up after the network, and its defaults per input mode.

Mask R-CNN's non-maximum suppression compares *boxes*. Worms are long, thin and curved, so two
detections of one worm can have boxes that overlap less than the box NMS threshold while their
masks are nearly the same pixels, and two different crossing worms can have boxes that overlap a
lot. Comparing the *masks* (:func:`suppress_overlaps`) removes the duplicates without merging the
crossing worms, which is what the matching scores (avS) and a user counting worms need.

In the binary input mode the image *is* the foreground (the paper's protocol), so no worm pixel
can lie outside it: :func:`clip_to_foreground` removes the pixels that the coarse 28×28 mask
grid, pasted onto the box, spills over a worm's outline. And a worm that lies alone in its
foreground blob *is* that blob: :func:`fill_lone_worms` gives such a worm the whole connected
component, where the pasted mask would miss its thin tail or head. Blobs that hold several
detections (touching or crossing worms, the case the network is for) are left as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_semiconv.core.divide import Blobs, blob_owners, divide_shared_blobs, label_blobs
from napari_semiconv.core.tiling import SoftMask

__all__ = [
    "DEFAULT_SCORE_THRESHOLD",
    "FILL_MIN_COVER",
    "FOREGROUND_CUT_GRID",
    "POSTPROCESS_DEFAULTS",
    "POSTPROCESS_KEYS",
    "SEARCH_GRID",
    "clip_to_foreground",
    "fill_lone_worms",
    "mask_boxes",
    "postprocess_defaults",
    "postprocess_defaults_of",
    "refine_instances",
    "resolve_thresholds",
    "suppress_overlaps",
]

# Post-processing defaults of `core.inference.segment_steps`, shared by the CLI, the demo and the
# napari widget (this module imports no torch, so the CLI can read them cheaply). Chosen per
# kind of model on the bundled models' own training wells, never on held-out wells
# (benchmarks/postprocess_sweep.py, docs/benchmarks.md "Post-processing"): at 0.5 the 28×28 mask
# grid under-covers thin worms (the binary model, whose masks are clipped to the foreground
# anyway, gains most from going lower), and mask-overlap suppression removes the duplicate
# detections that box NMS lets through. A bright-field cascade's detector sees the U-Net's map,
# whose one-pixel edge noise its weaker detections follow: it keeps only detections scoring 0.7
# (the eighth session's sweep on the 40 training wells: avS 0.662 -> 0.674).
DEFAULT_SCORE_THRESHOLD = 0.5
POSTPROCESS_DEFAULTS: dict[str, dict[str, float]] = {
    "binary": {"score_threshold": 0.5, "mask_threshold": 0.3, "max_overlap": 0.3},
    "brightfield": {"score_threshold": 0.5, "mask_threshold": 0.4, "max_overlap": 0.2},
    "cascade": {"score_threshold": 0.7, "mask_threshold": 0.4, "max_overlap": 0.3},
}
POSTPROCESS_KEYS = ("score_threshold", "mask_threshold", "max_overlap")
#: the values ``core.threshold_search`` tries by default, in POSTPROCESS_KEYS order: around
#: every kind's defaults above
SEARCH_GRID = ((0.3, 0.4, 0.5, 0.6, 0.7), (0.3, 0.4, 0.5), (0.2, 0.3, 0.5))
#: the U-Net cuts (``ModelConfig.foreground_threshold``) a cascade's search tries besides its
#: own: worms-brightfield's 0.6 was chosen from 0.3-0.7 on its training wells
FOREGROUND_CUT_GRID = (0.4, 0.5, 0.6, 0.7)
#: fill_lone_worms's min_cover in `segment` (binary input), chosen on the same training wells.
FILL_MIN_COVER = 0.5


def postprocess_defaults(kind: str) -> dict[str, float]:
    """{"score_threshold", "mask_threshold", "max_overlap"} for a kind of model: "binary",
    "brightfield" (the input mode) or "cascade" (``ModelConfig.postprocess_kind``).

    Raises:
        ValueError: an unknown kind.
    """
    if kind not in POSTPROCESS_DEFAULTS:
        raise ValueError(
            f"unknown model kind {kind!r}; choose one of {sorted(POSTPROCESS_DEFAULTS)}"
        )
    return dict(POSTPROCESS_DEFAULTS[kind])


def postprocess_defaults_of(kind: str, card: dict | None) -> dict[str, float]:
    """A model's own defaults: the thresholds its card records under "postprocess" (chosen on
    annotated images, ``core.threshold_search``), else those of its kind. A card entry that is
    not three numbers in [0, 1] is ignored (the kind's defaults are used)."""
    defaults = postprocess_defaults(kind)
    own = (card or {}).get("postprocess")
    if isinstance(own, dict):
        values = {k: own.get(k) for k in POSTPROCESS_KEYS}
        if all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0
            for v in values.values()
        ):
            defaults.update({k: float(v) for k, v in values.items()})
    return defaults


def resolve_thresholds(
    kind: str,
    card: dict | None,
    score_threshold: float | None,
    mask_threshold: float | None,
    max_overlap: float | None,
) -> tuple[float, float, float]:
    """(score threshold, mask threshold, max overlap): the given values, the model's own
    defaults (:func:`postprocess_defaults_of`) where None.

    Raises:
        ValueError: a value outside [0, 1], named.
    """
    defaults = postprocess_defaults_of(kind, card)
    given = dict(zip(POSTPROCESS_KEYS, (score_threshold, mask_threshold, max_overlap), strict=True))
    values = tuple(defaults[k] if v is None else float(v) for k, v in given.items())
    for name, value in zip(given, values, strict=True):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    return values


def clip_to_foreground(
    masks: np.ndarray, foreground: np.ndarray, inplace: bool = False
) -> np.ndarray:
    """``masks & foreground`` for every instance (written into ``masks`` when ``inplace``).

    Args:
        masks: (N, H, W) bool.
        foreground: (H, W) bool.
    Raises:
        ValueError: the shapes differ.
    """
    if masks.shape[1:] != foreground.shape:
        raise ValueError(
            f"clip_to_foreground: masks are {masks.shape[1:]} but the foreground is "
            f"{foreground.shape}"
        )
    return np.logical_and(masks, foreground[None].astype(bool), out=masks if inplace else None)


def refine_instances(
    masks: np.ndarray,
    scores: np.ndarray,
    foreground: np.ndarray | None,
    max_overlap: float,
    min_cover: float = FILL_MIN_COVER,
    inplace: bool = False,
    soft: Sequence[SoftMask | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """What `segment` does after the network: clip to ``foreground`` (when given), drop
    duplicates (:func:`suppress_overlaps`), fill lone worms (:func:`fill_lone_worms`), then,
    when the mask probabilities ``soft`` are given (one per mask), share out the pixels of
    blobs of touching worms (``core.divide.divide_shared_blobs``).

    Duplicates go before the filling: a duplicate would make a lone worm look shared.
    ``inplace`` reuses the buffer of ``masks`` (a 3000×3000 image with 100 worms holds 900 MB
    of masks: no second copy); the result is then a view of it.
    Returns (masks, scores) in decreasing score order.
    """
    scores = np.asarray(scores)
    if soft is not None and len(soft) != masks.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks but {len(soft)} probabilities")
    if foreground is not None:
        masks = clip_to_foreground(masks, foreground, inplace=inplace)
    keep = suppress_overlaps(masks, scores, max_overlap)
    if inplace and np.all(np.diff(keep) > 0):
        # masks already in decreasing score order (as segment makes them): move the kept ones
        # to the front; slot <= k, so no mask is overwritten before it is moved
        for slot, k in enumerate(keep):
            if slot != k:
                masks[slot] = masks[k]
        masks = masks[: len(keep)]
    else:
        masks = masks[keep]
    scores = scores[keep]
    if foreground is not None:
        blobs = label_blobs(foreground)  # both steps read the same blobs
        masks = fill_lone_worms(masks, foreground, min_cover, inplace=inplace, blobs=blobs)
        if soft is not None:
            kept_soft = [soft[int(k)] for k in keep]
            masks = divide_shared_blobs(masks, foreground, kept_soft, inplace, blobs)
            alive = masks.any(axis=(1, 2))
            if not alive.all():  # a worm whose every pixel went to its neighbours is no worm
                masks, scores = masks[alive], scores[alive]
    return masks, scores


def fill_lone_worms(
    masks: np.ndarray,
    foreground: np.ndarray,
    min_cover: float,
    inplace: bool = False,
    blobs: Blobs | None = None,
) -> np.ndarray:
    """Give a worm that is alone in its foreground component the whole component.

    Each worm belongs to the 8-connected foreground component holding most of its pixels. A
    component that exactly one worm belongs to, and that this worm already covers by at least
    ``min_cover`` of its pixels, replaces that worm's mask; the cover condition keeps a blob of
    two touching worms, of which only one was detected, from being handed to that one.

    Args:
        masks: (N, H, W) bool, already clipped to ``foreground``.
        foreground: (H, W) bool.
        min_cover: in (0, 1]; above 1 nothing is filled.
        inplace: write into ``masks`` instead of a copy.
        blobs: ``core.divide.label_blobs(foreground)``, when the caller has it already.
    Returns:
        (N, H, W) bool: a new array, or ``masks`` itself when ``inplace``.
    """
    if masks.shape[1:] != foreground.shape:
        raise ValueError(
            f"fill_lone_worms: masks are {masks.shape[1:]} but the foreground is {foreground.shape}"
        )
    if not 0.0 < float(min_cover):
        raise ValueError(f"min_cover must be > 0, got {min_cover}")
    out = masks if inplace else masks.copy()
    if masks.shape[0] == 0 or min_cover > 1.0:
        return out
    blobs = label_blobs(foreground) if blobs is None else blobs
    components, n = blobs.labels, blobs.count
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    owner, inside = blob_owners(masks, components, n)  # owner 0: no foreground pixel
    residents = np.bincount(owner[owner > 0], minlength=n + 1)
    for k in range(masks.shape[0]):
        c = owner[k]
        if c > 0 and residents[c] == 1 and inside[k] >= min_cover * sizes[c]:
            box = blobs.boxes[c - 1]  # compare within each blob's box, not the image
            out[k] = False
            out[k][box] = components[box] == c
    return out


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) int boxes y0, y1, x0, x1 (end-exclusive) of each mask; empty masks get 0, 0, 0, 0."""
    boxes = np.zeros((masks.shape[0], 4), dtype=np.int64)
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    for k in range(masks.shape[0]):
        if not rows[k].any():
            continue
        boxes[k] = (
            np.argmax(rows[k]),
            rows.shape[1] - np.argmax(rows[k][::-1]),
            np.argmax(cols[k]),
            cols.shape[1] - np.argmax(cols[k][::-1]),
        )
    return boxes


def suppress_overlaps(masks: np.ndarray, scores: np.ndarray, max_iou: float) -> np.ndarray:
    """Indices of the worms kept by greedy mask NMS, in decreasing score order.

    A worm is dropped when its mask's IoU with an already kept (higher-scoring) worm's mask
    exceeds ``max_iou``; empty masks are always dropped. ``max_iou >= 1`` keeps every non-empty
    mask. Only pairs whose mask boxes overlap are compared, on the overlap of their boxes.

    Args:
        masks: (N, H, W) bool.
        scores: (N,) detection scores.
        max_iou: in [0, 1].
    """
    if not 0.0 <= float(max_iou) <= 1.0:
        raise ValueError(f"max_iou must be in [0, 1], got {max_iou}")
    scores = np.asarray(scores).reshape(-1)
    if scores.shape[0] != masks.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks but {scores.shape[0]} scores")
    areas = np.count_nonzero(masks, axis=(1, 2))  # (1, 2), not reshape(n, -1): n may be 0
    order = [int(i) for i in np.argsort(-scores, kind="stable") if areas[i] > 0]
    if max_iou >= 1.0:
        return np.asarray(order, dtype=np.int64)
    boxes = mask_boxes(masks)
    kept: list[int] = []
    for i in order:
        y0, y1, x0, x1 = boxes[i]
        duplicate = False
        for j in kept:
            oy0, oy1 = max(y0, boxes[j, 0]), min(y1, boxes[j, 1])
            ox0, ox1 = max(x0, boxes[j, 2]), min(x1, boxes[j, 3])
            if oy0 >= oy1 or ox0 >= ox1:
                continue
            inter = np.count_nonzero(masks[i, oy0:oy1, ox0:ox1] & masks[j, oy0:oy1, ox0:ox1])
            if inter / (areas[i] + areas[j] - inter) > max_iou:
                duplicate = True
                break
        if not duplicate:
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)
