"""Per-worm measurements and conversions between instance stacks and label images.

Instances are an (N, H, W) boolean stack (overlaps kept) with scores (N,); instance ``k`` carries
label ``k + 1`` everywhere in this project (label image, instance TIFF plane order, CSV rows).

Measurements (one dict per instance, keys in :data:`MEASUREMENT_COLUMNS` order):

- ``area``: pixel count.
- ``length``: worm length in pixels, along the mask's centre line (``core.centre_line``: the
  longest trail along its skeleton, holes under the worm's thickness squared filled first, so
  spurs shorter than the body stay off it and a worm touching or crossing itself is walked round
  its loop), measured along the line's pixels smoothed by a moving average over 7 points (ends
  fixed): the pixel staircase of a straight worm at an angle to the grid is not its length. The
  skeleton stops about half a body width short of each tip, so the Euclidean distance transform
  at each end that is a skeleton end is added:
  ``length = centre line length + (edt(end_a) - 0.5) + (edt(end_b) - 0.5)`` (the 0.5: the path
  joins pixel centres, the edt reaches the centre of the first background pixel). A straight
  w-wide, L-long bar thus measures close to L. No tip correction is added where the line ends at
  a junction (a "6" walked from its tail round the loop) or on a closed ring.
  Disconnected fragments: only the piece holding the longest line counts.
- ``width``: mean width = area / length (a worm is modelled as a band of that length), where the
  area is that of the mask's piece (8-connected) holding the measured centre line: a speck or a
  second piece beside the worm would otherwise widen it (two 50 x 6 pieces: width 12, not 6).
- ``pieces``: the number of 8-connected pieces of the mask: 1 for a whole worm; more means a
  fragmented mask, whose length and width are those of its main piece (``area`` counts all).
- ``straightness``: straight-line distance between the two path ends / length of the smoothed
  centre line, both on the skeleton itself (no tip correction), so about 1.0 for a straight worm
  at any angle (0.97 or more for bars of width 3-10) and clearly
  below 1 for a bent one. A skeleton of a single pixel (a blob) has straightness 1.0.
- ``centroid_y``, ``centroid_x``: mean pixel coordinates (rows, columns).
- ``bbox_y0, bbox_x0, bbox_y1, bbox_x1``: bounding box, start inclusive and end exclusive
  (numpy slice convention: ``mask[y0:y1, x0:x1]``).

An empty mask (area 0) cannot be measured: it gets length 0, width 0, straightness NaN, centroid
NaN and bbox 0 0 0 0, and a warning names it.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from napari_semiconv.core.centre_line import centre_line, fill_small_holes
from napari_semiconv.core.refine import mask_boxes

__all__ = [
    "MEASUREMENT_COLUMNS",
    "as_instance_stack",
    "instances_from_labels",
    "label_dtype",
    "labels_from_instances",
    "measure_instances",
    "measure_mask",
]

MEASUREMENT_COLUMNS: tuple[str, ...] = (
    "label",
    "score",
    "area",
    "length",
    "width",
    "straightness",
    "pieces",
    "centroid_y",
    "centroid_x",
    "bbox_y0",
    "bbox_x0",
    "bbox_y1",
    "bbox_x1",
)


def as_instance_stack(masks: np.ndarray, scores: np.ndarray | None = None):
    """Validate an (N, H, W) instance stack and its scores; return (bool masks, float64 scores).

    ``scores=None`` gives every instance score 1.0 (e.g. ground truth), so ties resolve by order.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(
            f"instance masks must be an (N, H, W) stack, got shape {masks.shape}; "
            "use instances_from_labels() to convert a 2-D label image"
        )
    if masks.dtype != bool:
        if np.issubdtype(masks.dtype, np.floating):
            raise TypeError(
                f"instance masks must be boolean or integer 0/1, got {masks.dtype}; "
                "threshold probabilities first (e.g. masks > 0.5)"
            )
        masks = masks != 0
    n = masks.shape[0]
    if scores is None:
        scores = np.ones(n, dtype=np.float64)
    else:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != n:
            raise ValueError(f"got {n} masks but {scores.shape[0]} scores; give one score per mask")
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"scores contain {int(np.sum(~np.isfinite(scores)))} NaN/inf values")
    return masks, scores


def label_dtype(max_label: int) -> np.dtype:
    """Smallest of uint16/uint32/uint64 that holds ``max_label`` (the project's label dtype)."""
    for dtype in (np.uint16, np.uint32, np.uint64):
        if max_label <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{max_label} labels do not fit in uint64")


def labels_from_instances(masks: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """(H, W) label image from an (N, H, W) stack: instance k -> label k + 1, 0 = background.

    Where instances overlap the higher score wins; equal scores: the lower index wins.
    dtype uint16 when N fits (N <= 65535), else uint32.
    """
    masks, scores = as_instance_stack(masks, scores)
    n, height, width = masks.shape
    labels = np.zeros((height, width), dtype=label_dtype(n))
    # Paint from lowest to highest priority so the winner is painted last. Stable sort on -score
    # puts lower indices first among ties; reversed, they are painted last and so win.
    order = np.argsort(-scores, kind="stable")[::-1]
    for k in order:
        sl = _bbox_slices(masks[k])
        if sl is None:
            continue
        region = labels[sl]
        region[masks[k][sl]] = k + 1
    return labels


def instances_from_labels(labels: np.ndarray, return_ids: bool = False):
    """(N, H, W) bool stack from a label image, one plane per distinct non-zero label, ascending.

    Labels need not be consecutive (1, 5, 9 gives 3 planes); ``return_ids=True`` also returns the
    (N,) label values so plane k can be traced back to its label.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label image must be 2-D (H, W), got shape {labels.shape}")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError("a label image must hold whole numbers; got non-integer values")
        labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"label images cannot hold negative labels (found {labels.min()})")
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if ids.size and ids[0] == 0:
        ids = ids[1:]
    else:
        inverse = inverse + 1  # no background: compact index 0 is already a label
    stack = np.zeros((ids.size, *labels.shape), dtype=bool)
    for k, sl in enumerate(ndimage.find_objects(inverse.astype(np.int64))):
        if sl is not None:
            stack[k][sl] = inverse[sl] == k + 1
    return (stack, ids) if return_ids else stack


def _bbox_slices(mask: np.ndarray) -> tuple[slice, slice] | None:
    y0, y1, x0, x1 = (int(v) for v in mask_boxes(mask[None])[0])
    return None if y1 == y0 else (slice(y0, y1), slice(x0, x1))


# Half-window (in path points) of the moving average that turns the skeleton's pixel staircase
# into a centre line: a straight bar at 22.5° measured 9 % long (steps of 1 and sqrt(2)) and
# straightness 0.90 before; with it, within about 2 % and above 0.97 at every angle.
_SMOOTH_HALF = 3


def _centre_line_length(points: np.ndarray) -> float:
    """Length of the path's points smoothed by a moving average whose window shrinks towards the
    two ends (so the ends stay where they are)."""
    n = len(points)
    if n < 2:
        return 0.0
    total = np.vstack([np.zeros((1, 2)), np.cumsum(points, axis=0)])
    half = np.minimum(np.minimum(np.arange(n), np.arange(n)[::-1]), _SMOOTH_HALF)
    index = np.arange(n)
    smooth = (total[index + half + 1] - total[index - half]) / (2 * half + 1)[:, None]
    return float(np.sum(np.hypot(*np.diff(smooth, axis=0).T)))


def measure_mask(mask: np.ndarray) -> dict[str, float]:
    """Measurements of one (H, W) boolean mask (all keys of :data:`MEASUREMENT_COLUMNS` except
    ``label`` and ``score``); see the module docstring for the definitions.

    Any non-zero pixel is worm (a 0/255 PNG or one label's pixels of a label image), as for
    :func:`measure_instances`; probabilities are refused (threshold them first).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a worm mask must be 2-D (H, W), got shape {mask.shape}")
    mask = as_instance_stack(mask[None])[0][0]  # bool; float probabilities refused
    sl = _bbox_slices(mask)
    if sl is None:
        nan = float("nan")
        return dict(area=0, length=0.0, width=0.0, straightness=nan, pieces=0, centroid_y=nan,
                    centroid_x=nan, bbox_y0=0, bbox_x0=0, bbox_y1=0, bbox_x1=0)  # fmt: skip
    y0, x0 = sl[0].start, sl[1].start
    # One pixel of background padding so the skeleton and distance transform see the border.
    crop = np.pad(mask[sl], 1)
    area = int(crop.sum())
    ys, xs = np.nonzero(crop)
    filled = fill_small_holes(crop)
    line = centre_line(filled)
    path_len = _centre_line_length(line.points)
    # Tip correction only at skeleton ends, not where a trail stops at a junction. The edt is
    # the distance from the end pixel's centre to the nearest background pixel's centre; the body
    # edge lies half a pixel before that, and the path runs between pixel centres, so a 1-px-wide
    # bar of L pixels measures (L - 1) + 0.5 + 0.5 = L. A one-pixel skeleton counts both tips.
    background = np.argwhere(~filled)  # never empty: the crop is padded
    pa, pb = line.points[0], line.points[-1]
    length = path_len
    for tip, p in zip(line.tips, (pa, pb), strict=True):
        if tip:
            edt = np.sqrt(np.min(np.sum((background - p) ** 2, axis=1)))
            length += float(edt) - 0.5
    chord = float(np.hypot(*(pa - pb)))
    # the width is the measured piece's (its area in the mask, holes not filled): the line of an
    # 8-connected piece stays inside it
    eight = np.ones((3, 3), dtype=bool)
    n_pieces = ndimage.label(crop, structure=eight)[1]
    pieces = ndimage.label(filled, structure=eight)[0]
    piece = pieces == pieces[int(pa[0]), int(pa[1])]
    piece_area = int(np.count_nonzero(piece & crop))
    straightness = chord / path_len if path_len > 0 else 1.0
    return dict(
        area=area,
        length=float(length),
        width=float(piece_area / length) if length > 0 else 0.0,
        straightness=float(min(straightness, 1.0)),
        pieces=int(n_pieces),
        centroid_y=float(ys.mean() - 1 + y0),
        centroid_x=float(xs.mean() - 1 + x0),
        bbox_y0=int(y0),
        bbox_x0=int(x0),
        bbox_y1=int(sl[0].stop),
        bbox_x1=int(sl[1].stop),
    )


def measure_instances(masks: np.ndarray, scores: np.ndarray | None = None) -> list[dict]:
    """One dict per instance with keys :data:`MEASUREMENT_COLUMNS` (label = k + 1).

    Args:
        masks: (N, H, W) boolean stack (overlaps kept; each worm measured on its own full mask).
        scores: (N,) detection scores; None gives 1.0 to every instance (e.g. ground truth).
    """
    masks, scores = as_instance_stack(masks, scores)
    rows = []
    empty = []
    for k in range(masks.shape[0]):
        values = measure_mask(masks[k])
        if values["area"] == 0:
            empty.append(k + 1)
        rows.append({"label": k + 1, "score": float(scores[k]), **values})
    if empty:
        warnings.warn(
            f"instances with empty masks (labels {empty}) have NaN straightness and centroid",
            stacklevel=2,
        )
    return [{key: row[key] for key in MEASUREMENT_COLUMNS} for row in rows]
