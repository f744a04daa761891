"""What the Segment widget shows, computed without napari: arrows, votes, feature tables, stacks.

The semi-convolutional embedding's first two dimensions are a displacement field Φ (eq. 3/6):
every pixel u of worm k is moved to u + Φ_u, ideally one point c_k per worm (eq. 4, the link to
Hough voting). Two views make that visible:

* **arrows** from u to u + Φ_u on the segmented (foreground) pixels, subsampled by a stride so
  the viewer stays fast (napari Vectors data: (N, 2, D) rows of [start, projection]);
* **votes**: the density of the points u + Φ_u over the foreground, a Hough accumulator whose
  peaks are the worm centres c_k.

Stacks (Z or T, or both) are segmented plane by plane; the helpers here pick the planes out of
a layer's data and stack the per-plane results back to the same leading shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

#: columns of the per-worm table shown on hover in napari (besides ``index`` and plane columns)
FEATURE_COLUMNS = ("score", "area", "length", "width", "straightness", "pieces")


class InstancesLike(Protocol):
    """What this module reads from ``core.inference.Instances``."""

    masks: np.ndarray  # (N, H, W) bool, overlaps kept
    scores: np.ndarray  # (N,) float32
    displacement: np.ndarray  # (2, H, W) float32, Φ (rows, cols) in pixels

    def labels(self) -> np.ndarray: ...


# --------------------------------------------------------------------------- displacement views
def _check_field(displacement: np.ndarray, foreground: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    disp = np.asarray(displacement, dtype=np.float32)
    fg = np.asarray(foreground, dtype=bool)
    if disp.ndim != 3 or disp.shape[0] != 2:
        raise ValueError(f"displacement must have shape (2, H, W) (rows, cols), got {disp.shape}")
    if fg.shape != disp.shape[1:]:
        raise ValueError(
            f"foreground shape {fg.shape} does not match displacement shape {disp.shape[1:]}"
        )
    bad = int((~np.isfinite(disp[:, fg])).any(axis=0).sum())
    if bad:
        raise ValueError(f"displacement has {bad} non-finite foreground pixels; check the model")
    return disp, fg


def foreground(masks: np.ndarray) -> np.ndarray:
    """Union of instance masks (N, H, W) -> (H, W) bool: the pixels that carry a vote."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {masks.shape}")
    return masks.any(axis=0)


def displacement_vectors(
    displacement: np.ndarray, foreground: np.ndarray, stride: int = 4
) -> np.ndarray:
    """Arrows u → u + Φ_u on foreground pixels of a (stride × stride) grid.

    Returns napari Vectors data, float32 (N, 2, 2): ``[:, 0]`` the start u = (row, col), ``[:, 1]``
    the projection Φ_u, so the arrow tip is the pixel's vote u + Φ_u (eq. 4). Only pixels whose
    row and column are multiples of ``stride`` are kept: thousands of arrows draw fast,
    hundreds of thousands do not.
    """
    if int(stride) < 1:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    stride = int(stride)
    disp, fg = _check_field(displacement, foreground)
    grid = np.zeros_like(fg)
    grid[::stride, ::stride] = True
    rows, cols = np.nonzero(fg & grid)
    out = np.empty((rows.size, 2, 2), dtype=np.float32)
    out[:, 0, 0] = rows
    out[:, 0, 1] = cols
    out[:, 1, 0] = disp[0, rows, cols]
    out[:, 1, 1] = disp[1, rows, cols]
    return out


def vote_image(displacement: np.ndarray, foreground: np.ndarray, sigma: float = 0.0) -> np.ndarray:
    """Hough accumulator: how many foreground pixels u vote for each pixel u + Φ_u.

    Votes are rounded to the nearest pixel and clipped to the image, so without blur the image
    sums to the number of foreground pixels. ``sigma > 0`` smooths with a Gaussian (pixels), which
    keeps the total except for what spills over the border; peaks sit on the worm centres c_k.
    """
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    disp, fg = _check_field(displacement, foreground)
    height, width = fg.shape
    rows, cols = np.nonzero(fg)
    vr = np.clip(np.rint(rows + disp[0, rows, cols]), 0, height - 1).astype(np.intp)
    vc = np.clip(np.rint(cols + disp[1, rows, cols]), 0, width - 1).astype(np.intp)
    votes = np.bincount(vr * width + vc, minlength=height * width).astype(np.float32)
    votes = votes.reshape(height, width)
    if sigma > 0:
        from scipy.ndimage import gaussian_filter

        votes = gaussian_filter(votes, sigma=float(sigma), mode="constant").astype(np.float32)
    return votes


# --------------------------------------------------------------------------- feature table
def features_table(
    masks: np.ndarray, scores: np.ndarray, label_offset: int = 0
) -> dict[str, np.ndarray]:
    """Per-worm table for a napari Labels layer: ``index`` (label value) + FEATURE_COLUMNS.

    Rows follow ``core.measurements.measure_instances``; ``label_offset`` shifts the label values
    (stacks number their worms consecutively across planes).
    """
    from .measurements import measure_instances

    rows = measure_instances(np.asarray(masks, dtype=bool), np.asarray(scores, dtype=np.float32))
    table: dict[str, np.ndarray] = {
        "index": np.array([int(r["label"]) + label_offset for r in rows], dtype=np.int64)
    }
    for col in FEATURE_COLUMNS:
        table[col] = np.array([float(r[col]) for r in rows], dtype=np.float64)
    return table


# --------------------------------------------------------------------------- stacks
def channel_axis_candidate(shape: Sequence[int], rgb: bool = False) -> int | None:
    """The axis of a multi-channel (not RGB) image that should be asked about, or None.

    Rule: a non-RGB image with 3+ axes whose **last** axis has 2-4 entries is channel-last
    (no real image is 2-4 pixels wide); otherwise a **first** axis of 2-4 entries may be channels
    or a short stack, so the user is asked (the widget also offers "all planes").
    """
    shape = tuple(int(s) for s in shape)
    if rgb or len(shape) < 3:
        return None
    if 2 <= shape[-1] <= 4:
        return len(shape) - 1
    if 2 <= shape[0] <= 4:
        return 0
    return None


def select_channel(data: Any, axis: int | None, channel: int | None) -> Any:
    """``data`` with one entry of ``axis`` taken (lazily for dask/zarr); unchanged when None."""
    if axis is None or channel is None:
        return data
    size = data.shape[axis]
    if not 0 <= int(channel) < size:
        raise ValueError(f"channel {channel} out of range: axis {axis} has {size} entries")
    index: list[Any] = [slice(None)] * len(data.shape)
    index[axis] = int(channel)
    return data[tuple(index)]


def leading_shape(shape: Sequence[int], rgb: bool = False) -> tuple[int, ...]:
    """Shape of the stack axes in front of the (H, W) plane (and the RGB axis)."""
    shape = tuple(int(s) for s in shape)
    spatial = 3 if rgb else 2
    if len(shape) < spatial:
        kind = "an RGB image (H, W, 3|4)" if rgb else "an image with at least 2 axes (H, W)"
        raise ValueError(f"expected {kind}, got shape {shape}")
    if rgb and shape[-1] not in (3, 4):
        raise ValueError(f"an RGB image must end with 3 or 4 channels, got shape {shape}")
    if min(shape[len(shape) - spatial : len(shape) - spatial + 2]) < 1:
        raise ValueError(f"the image is empty (shape {shape})")
    return shape[: len(shape) - spatial]


def iter_planes(data: Any, rgb: bool = False) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Yield ``(index, plane)`` over the leading axes; plane is (H, W) or (H, W, 3|4) for RGB.

    Planes are read one at a time so a lazily loaded stack is never pulled into memory whole.
    """
    for index in np.ndindex(*leading_shape(data.shape, rgb)):
        yield index, np.asarray(data[index])


@dataclass
class LayerViews:
    """Arrays for the three output layers, stacked to the image's leading shape."""

    labels: np.ndarray  # (*leading, H, W) uint32, overlaps resolved by score
    features: dict[str, np.ndarray]  # index, [plane_k], score, area, length, width, straightness
    vectors: np.ndarray  # (N, 2, D) float32, D = len(leading) + 2
    votes: np.ndarray  # (*leading, H, W) float32


def build_views(
    planes: Sequence[tuple[tuple[int, ...], InstancesLike]],
    leading: Sequence[int] = (),
    stride: int = 4,
    vote_sigma: float = 1.0,
) -> LayerViews:
    """Stack per-plane results into the arrays the widget shows.

    Worm ids are numbered consecutively across planes (plane 0 has 1..n0, plane 1 continues at
    n0 + 1, ...) so each id maps to one row of the feature table; ``plane_k`` columns give the
    plane index along leading axis k.
    """
    leading = tuple(int(s) for s in leading)
    expected = int(np.prod(leading)) if leading else 1
    if len(planes) != expected:
        raise ValueError(
            f"expected {expected} planes for leading shape {leading}, got {len(planes)}"
        )
    if not planes:
        raise ValueError("no planes to show")
    height, width = planes[0][1].displacement.shape[1:]
    labels = np.zeros(leading + (height, width), dtype=np.uint32)
    votes = np.zeros(leading + (height, width), dtype=np.float32)
    tables: list[dict[str, np.ndarray]] = []
    arrows: list[np.ndarray] = []
    offset = 0
    for index, inst in planes:
        index = tuple(int(i) for i in index)
        if len(index) != len(leading):
            raise ValueError(f"plane index {index} does not match leading shape {leading}")
        plane_labels = np.asarray(inst.labels()).astype(np.uint32)
        labels[index] = np.where(plane_labels > 0, plane_labels + offset, 0)
        fg = foreground(inst.masks)  # an empty (0, H, W) stack gives an all-False plane
        votes[index] = vote_image(inst.displacement, fg, sigma=vote_sigma)
        vec = displacement_vectors(inst.displacement, fg, stride=stride)
        # the leading coordinates: start at the plane, no displacement along stack axes
        full = np.zeros((len(vec), 2, len(leading) + 2), dtype=np.float32)
        full[:, 0, : len(leading)] = index
        full[:, :, len(leading) :] = vec
        arrows.append(full)
        table = features_table(inst.masks, inst.scores, label_offset=offset)
        for k, i in enumerate(index):
            table[f"plane_{k}"] = np.full(len(table["index"]), i, dtype=np.int64)
        tables.append(table)
        offset += len(inst.scores)
    columns = ["index"] + [f"plane_{k}" for k in range(len(leading))] + list(FEATURE_COLUMNS)
    features = {c: np.concatenate([t[c] for t in tables]) for c in columns}
    return LayerViews(labels=labels, features=features, vectors=np.concatenate(arrows), votes=votes)
