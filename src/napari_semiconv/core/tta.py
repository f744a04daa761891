"""Test-time augmentation: the detector run on flipped (and transposed) views of an image, and
the worms of all views fused into one set (``core.inference.segment_steps(..., views=4)``).

Why: a Mask R-CNN's boxes, scores and masks change with the orientation of its input (its
anchors, RoI pooling and mask grid are not symmetric), so averaging over views smooths each
worm's outline and lowers the score of a detection that only one view makes. Cost: one pass of
the network per view.

A view flips the image left-right, then up-down, then transposes it, each optionally
(:data:`VIEW_SETS`). Fusion, after the tiles of each view are merged (``core.detections``):

1. every view's worms are mapped back to the image's frame, with their mask probabilities;
2. in order of score, a worm joins the group of the first worm before it whose mask it overlaps
   with IoU >= :data:`FUSE_IOU` and whose group holds no worm of its view yet; else it starts a
   group;
3. a group's score is the sum of its members' scores over the number of views (a view that
   missed the worm counts 0), its probability the mean over the views, its mask where that mean
   exceeds the mask threshold. A group scoring under the score threshold is dropped.

The displacement field Φ and a cascade's foreground map are the means of the views' fields,
each mapped back (Φ's components change sign with a flip and swap with a transpose).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import torch

from napari_semiconv.core.detections import Instances, SegmentProgress, detect_steps
from napari_semiconv.core.tiling import SoftMask

__all__ = ["FUSE_IOU", "VIEW_SETS", "View", "ViewFusion", "detect_views_steps", "fuse_views"]


@dataclass(frozen=True)
class View:
    """Flip left-right, then up-down, then transpose, each if set."""

    flip_x: bool = False
    flip_y: bool = False
    transpose: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The (H, W) image as this view shows it (a contiguous copy)."""
        if self.flip_x:
            image = image[:, ::-1]
        if self.flip_y:
            image = image[::-1]
        if self.transpose:
            image = image.T
        return np.ascontiguousarray(image)

    def undo(self, planes: np.ndarray) -> np.ndarray:
        """(..., h, w) planes in this view's frame back in the image's frame (a view)."""
        if self.transpose:
            planes = np.swapaxes(planes, -1, -2)
        if self.flip_y:
            planes = planes[..., ::-1, :]
        if self.flip_x:
            planes = planes[..., ::-1]
        return planes

    def undo_crop(self, y0: int, x0: int, crop: np.ndarray, shape: tuple[int, int]) -> SoftMask:
        """A crop at (y0, x0) of this view, as a crop of the image of ``shape`` (H, W)."""
        if self.transpose:
            y0, x0, crop = x0, y0, crop.T
        height, width = shape
        if self.flip_y:
            y0, crop = height - y0 - crop.shape[0], crop[::-1]
        if self.flip_x:
            x0, crop = width - x0 - crop.shape[1], crop[:, ::-1]
        return SoftMask(int(y0), int(x0), np.ascontiguousarray(crop))

    def undo_displacement(self, phi: np.ndarray) -> np.ndarray:
        """Φ (2, h, w) of this view in the image's frame: each pixel of a worm still points to
        its centre (a flip negates that axis' component, a transpose swaps them)."""
        if self.transpose:
            phi = np.swapaxes(phi, -1, -2)[::-1]
        if self.flip_y:
            phi = phi[:, ::-1, :] * np.array([-1.0, 1.0], np.float32)[:, None, None]
        if self.flip_x:
            phi = phi[:, :, ::-1] * np.array([1.0, -1.0], np.float32)[:, None, None]
        return phi


_FLIPS = (View(), View(flip_x=True), View(flip_y=True), View(flip_x=True, flip_y=True))
#: The views for each allowed number: 1 (none), 2 (left-right), 4 (all flips), 8 (the flips of
#: the image and of its transpose: the symmetries of a square).
VIEW_SETS: dict[int, tuple[View, ...]] = {
    1: _FLIPS[:1],
    2: _FLIPS[:2],
    4: _FLIPS,
    8: _FLIPS + tuple(View(v.flip_x, v.flip_y, True) for v in _FLIPS),
}

#: Two views' worms whose masks overlap with at least this IoU are one worm.
FUSE_IOU = 0.5

#: Each view keeps detections scoring at least this fraction of the score threshold, so that a
#: view less sure of a worm still votes for it with its score (the fused score must reach the
#: full threshold).
VIEW_SCORE_FRACTION = 1.0


def views_of(count: int) -> tuple[View, ...]:
    """The :data:`VIEW_SETS` entry for ``count``; a clear error for any other number."""
    if isinstance(count, bool) or count not in VIEW_SETS:
        raise ValueError(f"views must be one of {sorted(VIEW_SETS)}, got {count!r}")
    return VIEW_SETS[count]


@dataclass
class _Worm:
    """One view's worm in the image's frame: its mask on its box, and its probability."""

    view: int
    score: float
    y0: int
    x0: int
    mask: np.ndarray  # (h, w) bool on the box (y0, x0)
    prob: SoftMask
    area: int = field(init=False)

    def __post_init__(self) -> None:
        self.area = int(np.count_nonzero(self.mask))

    def iou(self, other: _Worm) -> float:
        (h, w), (oh, ow) = self.mask.shape, other.mask.shape
        ya, yb = max(self.y0, other.y0), min(self.y0 + h, other.y0 + oh)
        xa, xb = max(self.x0, other.x0), min(self.x0 + w, other.x0 + ow)
        if ya >= yb or xa >= xb:
            return 0.0
        a = self.mask[ya - self.y0 : yb - self.y0, xa - self.x0 : xb - self.x0]
        b = other.mask[ya - other.y0 : yb - other.y0, xa - other.x0 : xb - other.x0]
        inter = int(np.count_nonzero(a & b))
        union = self.area + other.area - inter
        return inter / union if union else 0.0


def _worms_of(
    index: int, view: View, found: Instances, soft: list[SoftMask | None], shape: tuple[int, int]
) -> list[_Worm]:
    """A view's worms in the image's frame, each mask cropped to its probability's box (which
    holds the whole mask: ``core.tiling`` pastes each worm from crops on those boxes)."""
    masks = view.undo(found.masks)
    worms = []
    for k, piece in enumerate(soft):
        if piece is None:  # detect_steps(keep_prob=True) gives every worm its probability
            raise ValueError("test-time augmentation needs every worm's mask probability")
        prob = view.undo_crop(piece.y0, piece.x0, piece.prob, shape)
        h, w = prob.prob.shape
        mask = np.ascontiguousarray(masks[k, prob.y0 : prob.y0 + h, prob.x0 : prob.x0 + w])
        if mask.any():
            worms.append(_Worm(index, float(found.scores[k]), prob.y0, prob.x0, mask, prob))
    return worms


def _fused_prob(members: list[_Worm], n_views: int) -> SoftMask:
    """The members' probabilities averaged over ``n_views`` (0 where a view has none)."""
    y0 = min(w.prob.y0 for w in members)
    x0 = min(w.prob.x0 for w in members)
    y1 = max(w.prob.y0 + w.prob.prob.shape[0] for w in members)
    x1 = max(w.prob.x0 + w.prob.prob.shape[1] for w in members)
    total = np.zeros((y1 - y0, x1 - x0), np.float32)
    for w in members:
        top, left = w.prob.y0 - y0, w.prob.x0 - x0
        h, wd = w.prob.prob.shape
        total[top : top + h, left : left + wd] += w.prob.prob
    return SoftMask(y0, x0, np.rint(total / n_views).astype(np.uint8))


class ViewFusion:
    """Worms of the views of one image, added view by view (each view's full-size masks can go
    as soon as it is added: only crops are kept), then fused (:meth:`result`)."""

    def __init__(self, n_views: int, shape: tuple[int, int]) -> None:
        self.n_views, self.shape = n_views, shape
        self.worms: list[_Worm] = []
        self.displacement = np.zeros((2, *shape), np.float32)
        self.foreground: np.ndarray | None = None
        self.added = 0

    def add(self, index: int, view: View, found: Instances, soft: list[SoftMask | None]) -> None:
        """View ``index``'s worms (``detect_steps``' result, in the view's frame)."""
        self.worms.extend(_worms_of(index, view, found, soft, self.shape))
        self.displacement += view.undo_displacement(found.displacement)
        if found.foreground is not None:
            if self.foreground is None:
                self.foreground = np.zeros(self.shape, np.float32)
            self.foreground += view.undo(found.foreground)
        self.added += 1

    def result(
        self, score_threshold: float, mask_threshold: float
    ) -> tuple[Instances, list[SoftMask]]:
        """The fused worms by decreasing score, and their fused probabilities."""
        if self.added != self.n_views:
            raise ValueError(f"{self.added} of {self.n_views} views were added")
        groups: list[list[_Worm]] = []
        for worm in sorted(self.worms, key=lambda w: -w.score):
            for group in groups:
                if all(m.view != worm.view for m in group) and group[0].iou(worm) >= FUSE_IOU:
                    group.append(worm)
                    break
            else:
                groups.append([worm])
        cut = mask_threshold * 255.0  # on the uint8 probabilities
        kept: list[tuple[float, SoftMask]] = []
        for group in groups:
            score = sum(m.score for m in group) / self.n_views
            if score < score_threshold:
                continue
            prob = _fused_prob(group, self.n_views)
            if np.any(prob.prob > cut):
                kept.append((score, prob))
        kept.sort(key=lambda item: -item[0])
        masks = np.zeros((len(kept), *self.shape), bool)
        for k, (_, prob) in enumerate(kept):
            h, w = prob.prob.shape
            masks[k, prob.y0 : prob.y0 + h, prob.x0 : prob.x0 + w] = prob.prob > cut
        scores = np.array([score for score, _ in kept], np.float32)
        fg = None if self.foreground is None else self.foreground / self.n_views
        found = Instances(masks, scores, self.displacement / self.n_views, fg)
        return found, [prob for _, prob in kept]


def fuse_views(
    found: list[tuple[Instances, list[SoftMask | None]]],
    views: tuple[View, ...],
    shape: tuple[int, int],
    score_threshold: float,
    mask_threshold: float,
) -> tuple[Instances, list[SoftMask]]:
    """The worms of every view (``detect_steps``' results, in each view's frame) fused into one
    set in the image's frame of ``shape`` (module docstring): :class:`ViewFusion` at once."""
    fusion = ViewFusion(len(views), shape)
    for i, (view, (instances, soft)) in enumerate(zip(views, found, strict=True)):
        fusion.add(i, view, instances, soft)
    return fusion.result(score_threshold, mask_threshold)


def detect_views_steps(
    model: torch.nn.Module,
    grey: np.ndarray,
    views: int,
    tile_size: int,
    overlap: int,
    batch_size: int,
    score_threshold: float,
    mask_threshold: float,
) -> Generator[SegmentProgress, None, tuple[Instances, list[SoftMask]]]:
    """``core.detections.detect_steps`` on each of the ``views`` views of ``grey`` (progress
    counts the tiles of all views), then :func:`fuse_views`."""
    chosen = views_of(views)
    fusion = ViewFusion(len(chosen), grey.shape)
    for i, view in enumerate(chosen):
        steps = detect_steps(
            model, view.apply(grey), tile_size, overlap, batch_size,
            score_threshold * VIEW_SCORE_FRACTION, mask_threshold, True,
        )  # fmt: skip
        try:
            while True:
                try:
                    step = next(steps)
                except StopIteration as stop:
                    fusion.add(i, view, *stop.value)  # its full-size masks go here
                    break
                yield SegmentProgress(
                    i * step.total + step.done,
                    len(chosen) * step.total,
                    # a warning keeps its words (and its flag), so each view's is one note
                    step.message if step.warning else f"view {i + 1}/{len(chosen)}: {step.message}",
                    warning=step.warning,
                )
        finally:
            steps.close()  # cancelled mid-view: the detector is put back as it was at once
    return fusion.result(score_threshold, mask_threshold)
