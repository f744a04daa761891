"""Checking what a user picked to fine-tune on: an image, its worm labels, rectangles.

:func:`check_pair` refuses annotations that would teach the model nonsense (no worms, shapes
that differ, a yes/no mask or one label over several worms or most of the image: a foreground
mask, not one label per worm) and crops a pair to its rectangles of interest
(:func:`roi_from_points`, :func:`check_roi`). Without a rectangle the whole image counts as
annotated: every unlabelled pixel is taught as background. ``core.finetune`` builds the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_semiconv.core.data.arrays import (
    PIECE_MIN_AREA,
    SCATTERED_PIECES,
    check_one_label_per_worm,
)

__all__ = [
    "GIANT_FRACTION",
    "MIN_SIDE",
    "PIECE_MIN_AREA",
    "SCATTERED_PIECES",
    "AnnotatedPair",
    "Roi",
    "check_pair",
    "check_roi",
    "roi_from_points",
]

#: a label covering more than this fraction of its image is refused (a foreground mask)
GIANT_FRACTION = 0.5
#: smallest image (or rectangle) side accepted for training, in pixels (the trainer's crop floor)
MIN_SIDE = 32

Roi = tuple[int, int, int, int]  # (row0, col0, row1, col1), ends exclusive


@dataclass
class AnnotatedPair:
    """One training image with its worm labels, as picked in the viewer.

    ``image``: (H, W) grey or (H, W, 3|4) RGB(A), any numeric dtype, raw (normalised later for
    the base model's input mode). ``labels``: (H, W) integers, 0 = background, one id per worm.
    ``rois``: rectangles (row0, col0, row1, col1) to train on; empty = the whole image.
    """

    image: np.ndarray
    labels: np.ndarray
    image_name: str
    labels_name: str
    rois: list[Roi] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.image_name} / {self.labels_name}"


def roi_from_points(points: Any, shape: tuple[int, int]) -> Roi:
    """The bounding box of a rectangle's corners (K, 2) in image pixels (row, col), rounded
    outwards and clipped to an image of ``shape``.

    Raises:
        ValueError: the rectangle lies outside the image or is under ``MIN_SIDE`` px on a side.
    """
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] < 2 or len(pts) < 2 or not np.isfinite(pts).all():
        raise ValueError(f"a rectangle needs corner points (K, 2), got an array of {pts.shape}")
    pts = pts[:, -2:]  # (…, row, col): leading axes of an N-D shape layer are dropped
    height, width = int(shape[0]), int(shape[1])
    r0, c0 = np.floor(pts.min(axis=0)).astype(int)
    r1, c1 = np.ceil(pts.max(axis=0)).astype(int)
    roi = int(max(r0, 0)), int(max(c0, 0)), int(min(r1, height)), int(min(c1, width))
    check_roi(roi, (height, width))
    return roi


def check_roi(roi: Roi, shape: tuple[int, int]) -> None:
    """Refuse a rectangle that is not inside an image of ``shape`` or under ``MIN_SIDE`` px."""
    r0, c0, r1, c1 = (int(v) for v in roi)
    if not (0 <= r0 < r1 <= shape[0] and 0 <= c0 < c1 <= shape[1]):
        raise ValueError(
            f"the rectangle lies outside the {shape[0]}x{shape[1]} image; draw it over the image"
        )
    if min(r1 - r0, c1 - c0) < MIN_SIDE:
        raise ValueError(
            f"the rectangle is {r1 - r0}x{c1 - c0} px inside the image; draw one at least "
            f"{MIN_SIDE} px on a side around the worms you checked"
        )


def _plane_shape(image: np.ndarray, what: str) -> tuple[int, int]:
    if image.ndim == 2:
        return image.shape
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return image.shape[:2]
    raise ValueError(
        f"{what} has shape {image.shape}; fine-tuning takes 2-D images (H, W) or RGB (H, W, 3): "
        "for a stack, pick one plane (in napari: right-click the layer > Split Stack)"
    )


def check_pair(pair: AnnotatedPair) -> list[tuple[np.ndarray, np.ndarray, Roi | None]]:
    """Validate ``pair``; return its training crops ``[(image, labels, roi or None)]``.

    Raises:
        TypeError: labels that are not integers.
        ValueError: naming the pair and the problem: a non-2-D image, image and labels of
            different shapes, an image under ``MIN_SIDE`` px, no labelled worm (in a
            rectangle), negative labels, a yes/no (bool) mask, a rectangle outside the image or
            under ``MIN_SIDE`` px, or one label covering more than ``GIANT_FRACTION`` of the
            image (almost certainly a foreground mask, not one label per worm).
    """
    image, labels = np.asarray(pair.image), np.asarray(pair.labels)
    where = f"pair {pair.name!r}"
    shape = _plane_shape(image, f"{where}: image {pair.image_name!r}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise TypeError(
            f"{where}: labels {pair.labels_name!r} hold {labels.dtype} values; pick a Labels "
            "layer (integer ids, 0 = background)"
        )
    if labels.dtype == bool:
        # a yes/no mask would train every worm in it as one: refused, whatever its size
        raise ValueError(
            f"{where}: labels {pair.labels_name!r} are a yes/no mask, not one label per worm; "
            "give every worm its own label (e.g. start from the Segment widget's result with "
            "'Correct this result')"
        )
    if labels.shape != shape:
        raise ValueError(
            f"{where}: image {pair.image_name!r} is {shape[0]}x{shape[1]} but labels "
            f"{pair.labels_name!r} are {'x'.join(map(str, labels.shape))}; pick the labels drawn "
            "on this image"
        )
    if min(shape) < MIN_SIDE:
        raise ValueError(f"{where}: the image is {shape}, under {MIN_SIDE} px on a side")
    if labels.size and int(labels.min()) < 0:
        raise ValueError(f"{where}: labels {pair.labels_name!r} hold negative ids")
    check_one_label_per_worm(labels, where, pair.labels_name)
    for roi in pair.rois:
        try:
            check_roi(roi, shape)
        except ValueError as exc:
            raise ValueError(f"{where}, rectangle {list(roi)}: {exc}") from None
    crops = []
    for roi in pair.rois or [None]:
        win = (slice(roi[0], roi[2]), slice(roi[1], roi[3])) if roi else (slice(None),) * 2
        crop_labels = labels[win].astype(np.int64)
        inside = f" inside the rectangle {list(roi)}" if roi else ""
        ids, counts = np.unique(crop_labels[crop_labels > 0], return_counts=True)
        if ids.size == 0:
            raise ValueError(
                f"{where}: labels {pair.labels_name!r} have no labelled worm{inside}; paint the "
                "worms (one label per worm) or remove the pair"
            )
        biggest = int(np.argmax(counts))
        fraction = counts[biggest] / crop_labels.size
        if fraction > GIANT_FRACTION:
            raise ValueError(
                f"{where}: label {int(ids[biggest])} of {pair.labels_name!r} covers "
                f"{100 * fraction:.0f}% of the image{inside}. A single object that large is "
                "almost certainly a foreground mask, not a worm: give every worm its own label "
                "(e.g. start from the Segment widget's result with 'Correct this result')"
            )
        crops.append((image[win], crop_labels, roi))
    return crops
