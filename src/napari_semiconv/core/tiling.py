"""Tiling of large images and merging of the instances found in overlapping tiles.

A tile is a window of at most ``tile_size`` pixels on a side; neighbouring tiles overlap by
``overlap`` pixels. Each tile owns a *core*: the part of the image closer to its centre than to
any neighbour's (cut at the middle of each overlap), so the cores partition the image. The
displacement field Φ (eq. 4/6: a per-pixel vector, translation-equivariant) is stitched by
copying each tile's core.

A candidate with no pixel in its own tile's core is dropped first: every one of its pixels
belongs to another tile's core, and that tile sees them away from its border, with context on
all sides. Such candidates are slivers a tile sees at its edge of a worm its neighbour holds
whole (a 12-px "worm" scoring 0.997 beside the real one, at a 512-px tile seam); the owning tile
always holds its own piece of each worm, so no worm pixel is lost.

Instances are merged across tiles by their agreement *inside the shared overlap*: two candidates
from different tiles are the same worm when the IoU of their masks restricted to the pixels both
tiles see exceeds 0.5. A merged worm is assembled from its pieces, so a worm longer than one tile
(cut by every tile border) is reassembled: in the core of each tile that holds a piece, that
tile's piece decides the pixels (it sees them away from its border); elsewhere the union of the
pieces stands. (On 10 training wells tiled at 512 px, against the plain union: worms-brightfield
AP 0.602 -> 0.611, avS 0.623 -> 0.625; worms-binary AP 0.737 -> 0.747, avS 0.705 -> 0.707.)
Candidates of one tile are never merged with each other, not even through pieces of other
tiles: the detector's own output keeps overlapping worms apart, and its duplicates are left to
the mask-overlap suppression that follows, as on an untiled image. Pairs are joined best
agreement first, and a join that would put two pieces of one tile in a worm is refused: chained
through a tile's duplicates, touching worms were fused (worms-binary on 10 training wells tiled
at 256 px: AP 0.594, now 0.703; 0.738 untiled). Suppressing each tile's duplicates before the
merge as well was measured and not kept: +0.019 AP at 256 px, -0.010 at 512 px, and as much
lost as won by worms-brightfield (docs/benchmarks.md, "Tiled images").

Candidates are stored as crops to their bounding box, so memory grows with the worms, not with
the number of tiles. A candidate may carry its mask *probability* (uint8, 255 = 1) on the same
crop; a merged worm's probability is the maximum of its pieces' (:class:`SoftMask`), which
``core.divide`` uses to share out the pixels of touching worms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "MERGE_IOU",
    "Candidate",
    "SoftMask",
    "Tile",
    "DEFAULT_OVERLAP",
    "MIN_TILE_SIZE",
    "check_tiling",
    "crop_on_window",
    "default_overlap",
    "merge_candidates",
    "merge_candidates_soft",
    "tile_grid",
]

#: Overlap-restricted IoU above which two pieces from different tiles are one worm.
MERGE_IOU = 0.5


@dataclass(frozen=True)
class Tile:
    """A window ``[y0:y1, x0:x1]`` and its core ``[cy0:cy1, cx0:cx1]`` (image coordinates)."""

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int


@dataclass
class Candidate:
    """One instance found in one tile: a bool mask cropped to its box (image coordinates), and
    optionally its mask probability on the same crop (uint8, 255 = 1)."""

    tile: int
    y0: int
    x0: int
    mask: np.ndarray  # (h, w) bool, the crop at (y0, x0)
    score: float
    prob: np.ndarray | None = None  # (h, w) uint8 or None

    def __post_init__(self) -> None:
        if self.prob is not None and self.prob.shape != self.mask.shape:
            raise ValueError(
                f"a candidate's probability crop {self.prob.shape} must match its mask "
                f"{self.mask.shape}"
            )

    @property
    def y1(self) -> int:
        return self.y0 + self.mask.shape[0]

    @property
    def x1(self) -> int:
        return self.x0 + self.mask.shape[1]


@dataclass(frozen=True)
class SoftMask:
    """A worm's mask probability on a crop at (y0, x0) of the image: (h, w) uint8, 255 = 1.

    Pixels outside the crop have probability 0 (the detector's RoI did not reach them).
    """

    y0: int
    x0: int
    prob: np.ndarray


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts on one axis: stride ``tile - overlap``, the last window flush with the end."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _cores(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """Core of each window: cut halfway through the overlap with each neighbour."""
    cores = []
    for i, s in enumerate(starts):
        lo = 0 if i == 0 else (s + starts[i - 1] + tile) // 2
        hi = length if i == len(starts) - 1 else (starts[i + 1] + s + tile) // 2
        cores.append((lo, hi))
    return cores


#: the smallest tile side in pixels (a worm is ~10 px wide, and the network downsamples by 32)
MIN_TILE_SIZE = 32
#: overlap of neighbouring tiles in pixels (at least a worm's width; recorded in a run's JSON)
DEFAULT_OVERLAP = 64


def default_overlap(tile_size: int | None) -> int:
    """The overlap for a tile size: DEFAULT_OVERLAP, less for tiles under 130 px, since
    :func:`tile_grid` needs overlap < tile_size / 2 (the widget has no overlap field, and
    ``predict --tile-size 100`` alone failed on "overlap must be in [0, 50)")."""
    if tile_size is None:
        return DEFAULT_OVERLAP
    return max(0, min(DEFAULT_OVERLAP, (int(tile_size) - 1) // 2))


def check_tiling(
    tile_size: int | None,
    overlap: int,
    tile_name: str = "tile_size",
    overlap_name: str = "overlap",
) -> None:
    """Refuse a tile size or overlap that :func:`tile_grid` would refuse, before any image is read.

    ``tile_name`` / ``overlap_name`` are how the caller's user knows the settings (a flag such as
    ``--tile-size``, or a run record's key), so every tier words the refusal alike. The overlap is
    checked even without a tile size: an image only needs it once it is tiled, and a bad one
    should not wait for the first large image.

    Raises:
        ValueError: ``tile_size`` under 32, ``overlap`` negative, or not under half the tile.
    """
    if tile_size is not None and int(tile_size) < MIN_TILE_SIZE:
        raise ValueError(f"{tile_name} must be at least {MIN_TILE_SIZE} pixels, got {tile_size}")
    if int(overlap) < 0:
        raise ValueError(f"{overlap_name} must be 0 or more pixels, got {overlap}")
    if tile_size is not None and int(overlap) >= int(tile_size) / 2:
        raise ValueError(
            f"{overlap_name} must be under half the tile size ({tile_name} {tile_size}), "
            f"got {overlap}"
        )


def tile_grid(height: int, width: int, tile_size: int, overlap: int) -> list[Tile]:
    """Windows covering an image, row-major; a single window when the image fits in one.

    Raises:
        ValueError: ``tile_size`` < 32 or ``overlap`` not in [0, tile_size / 2).
    """
    if tile_size < MIN_TILE_SIZE:
        raise ValueError(f"tile_size must be at least {MIN_TILE_SIZE} pixels, got {tile_size}")
    if height <= tile_size and width <= tile_size:
        return [Tile(0, height, 0, width, 0, height, 0, width)]  # one tile: no overlap needed
    if not 0 <= overlap < tile_size / 2:
        raise ValueError(
            f"overlap must be in [0, tile_size / 2) = [0, {tile_size / 2:g}), got {overlap}"
        )
    ys, xs = _starts(height, tile_size, overlap), _starts(width, tile_size, overlap)
    ycores, xcores = _cores(ys, tile_size, height), _cores(xs, tile_size, width)
    tiles = []
    for y, (cy0, cy1) in zip(ys, ycores, strict=True):
        for x, (cx0, cx1) in zip(xs, xcores, strict=True):
            tiles.append(
                Tile(
                    y, min(y + tile_size, height), x, min(x + tile_size, width), cy0, cy1, cx0, cx1
                )
            )
    return tiles


def _shared_window(a: Tile, b: Tile) -> tuple[int, int, int, int] | None:
    y0, y1 = max(a.y0, b.y0), min(a.y1, b.y1)
    x0, x1 = max(a.x0, b.x0), min(a.x1, b.x1)
    if y0 >= y1 or x0 >= x1:
        return None
    return y0, y1, x0, x1


def crop_on_window(
    values: np.ndarray, top: int, left: int, rows: tuple[int, int], cols: tuple[int, int]
) -> np.ndarray:
    """A crop ``values`` lying at (top, left) of the image, seen on the image window
    [rows[0]:rows[1], cols[0]:cols[1]]: zeros (of its dtype) where the crop does not reach."""
    (y0, y1), (x0, x1) = rows, cols
    out = np.zeros((y1 - y0, x1 - x0), dtype=values.dtype)
    sy0, sy1 = max(y0, top), min(y1, top + values.shape[0])
    sx0, sx1 = max(x0, left), min(x1, left + values.shape[1])
    if sy0 < sy1 and sx0 < sx1:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = values[
            sy0 - top : sy1 - top, sx0 - left : sx1 - left
        ]
    return out


def _core_part(c: Candidate, tile: Tile) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Where ``c``'s crop meets its tile's core: (image slices, crop slices); empty slices if
    nowhere."""
    y0, y1 = max(c.y0, tile.cy0), min(c.y1, tile.cy1)
    x0, x1 = max(c.x0, tile.cx0), min(c.x1, tile.cx1)
    y1, x1 = max(y0, y1), max(x0, x1)
    image = (slice(y0, y1), slice(x0, x1))
    return image, (slice(y0 - c.y0, y1 - c.y0), slice(x0 - c.x0, x1 - c.x0))


def _reaches_core(c: Candidate, tile: Tile) -> bool:
    """Whether any pixel of ``c``'s mask lies in its tile's core."""
    return bool(c.mask[_core_part(c, tile)[1]].any())


def _agreement(a: Candidate, b: Candidate, tiles: list[Tile]) -> float:
    """IoU of two candidates' masks on the pixels both their tiles see (0 if none)."""
    window = _shared_window(tiles[a.tile], tiles[b.tile])
    if window is None:
        return 0.0
    y0, y1, x0, x1 = window
    ma = crop_on_window(a.mask, a.y0, a.x0, (y0, y1), (x0, x1))
    mb = crop_on_window(b.mask, b.y0, b.x0, (y0, y1), (x0, x1))
    union = np.count_nonzero(ma | mb)
    return np.count_nonzero(ma & mb) / union if union else 0.0


def merge_candidates(
    candidates: list[Candidate], tiles: list[Tile], height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge pieces of one worm found in several tiles (see the module docstring).

    Returns:
        masks (N, height, width) bool and scores (N,) float32 (a merged worm keeps its best
        piece's score), ordered by decreasing score.
    """
    masks, scores, _ = merge_candidates_soft(candidates, tiles, height, width)
    return masks, scores


def merge_candidates_soft(
    candidates: list[Candidate], tiles: list[Tile], height: int, width: int
) -> tuple[np.ndarray, np.ndarray, list[SoftMask | None]]:
    """:func:`merge_candidates`, plus each merged worm's probability: a :class:`SoftMask` on the
    box of its pieces, the maximum where pieces overlap (None when a piece carries none)."""
    if len(tiles) > 1:
        candidates = [c for c in candidates if _reaches_core(c, tiles[c.tile])]
    n = len(candidates)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n > 1:
        boxes = np.array([(c.y0, c.y1, c.x0, c.x1) for c in candidates])
        tile_of = np.array([c.tile for c in candidates])
        pairs = []
        for i in range(n):
            # only pieces from other tiles whose boxes touch this one can be the same worm
            near = np.nonzero(
                (tile_of[i + 1 :] != tile_of[i])
                & (boxes[i + 1 :, 0] < boxes[i, 1])
                & (boxes[i + 1 :, 1] > boxes[i, 0])
                & (boxes[i + 1 :, 2] < boxes[i, 3])
                & (boxes[i + 1 :, 3] > boxes[i, 2])
            )[0]
            for j in near + i + 1:
                agreement = _agreement(candidates[i], candidates[j], tiles)
                if agreement > MERGE_IOU:
                    pairs.append((agreement, int(i), int(j)))
        # Best-agreeing pairs first, and never two pieces of one tile in a worm: a tile's
        # duplicates (a worm found twice, or a candidate spanning two touching worms) would
        # otherwise chain different worms into one through a neighbour's piece.
        tiles_in = {i: {int(tile_of[i])} for i in range(n)}
        for _, i, j in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
            a, b = find(i), find(j)
            if a != b and not tiles_in[a] & tiles_in[b]:
                parent[b] = a
                tiles_in[a] |= tiles_in.pop(b)

    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    merged = sorted(groups.values(), key=lambda g: -max(candidates[i].score for i in g))
    masks = np.zeros((len(merged), height, width), dtype=bool)
    scores = np.zeros(len(merged), dtype=np.float32)
    soft: list[SoftMask | None] = []
    for k, group in enumerate(merged):
        for i in group:
            c = candidates[i]
            masks[k, c.y0 : c.y1, c.x0 : c.x1] |= c.mask
        if len({candidates[i].tile for i in group}) > 1:
            _decide_by_owner(masks[k], [candidates[i] for i in group], tiles)
        scores[k] = max(candidates[i].score for i in group)
        soft.append(_merged_prob([candidates[i] for i in group]))
    return masks, scores, soft


def _decide_by_owner(mask: np.ndarray, pieces: list[Candidate], tiles: list[Tile]) -> None:
    """In each core of a tile that holds a piece of this worm, keep the worm's pixels as that
    tile's piece has them (it sees them away from its border); elsewhere the union stays."""
    for tile_index in {c.tile for c in pieces}:
        t = tiles[tile_index]
        mask[t.cy0 : t.cy1, t.cx0 : t.cx1] = False
        for c in pieces:
            if c.tile == tile_index:
                image, crop = _core_part(c, t)
                mask[image] |= c.mask[crop]


def _merged_prob(pieces: list[Candidate]) -> SoftMask | None:
    """The pieces' probabilities on the box around them all (maximum where they overlap)."""
    if any(c.prob is None for c in pieces):
        return None
    y0, x0 = min(c.y0 for c in pieces), min(c.x0 for c in pieces)
    y1, x1 = max(c.y1 for c in pieces), max(c.x1 for c in pieces)
    prob = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    for c in pieces:
        window = prob[c.y0 - y0 : c.y1 - y0, c.x0 - x0 : c.x1 - x0]
        np.maximum(window, c.prob, out=window)
    return SoftMask(y0, x0, prob)
