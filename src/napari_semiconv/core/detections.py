"""The network's worms before the clean-up: passes over an image's tiles, and the records.

:func:`detect_steps` runs the detector over the tiles of a normalised image (the model at the
image's own pixel scale, ``core.model.run_modes.native_scale``) and merges the worms of the tiles
(``core.tiling``); :func:`collect_candidates` turns one tile's outputs into crops in image
coordinates. :func:`detect` is that pass for choosing the clean-up's settings
(``core.threshold_search``); ``core.inference.segment_steps`` runs it and refines the result
(``core.refine``). :class:`Instances` is what both return.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_semiconv.core.measurements import labels_from_instances
from napari_semiconv.core.model.config import ModelConfig
from napari_semiconv.core.model.run_modes import (
    active_foreground_threshold,
    detection_threshold,
    native_scale,
)
from napari_semiconv.core.refine import mask_boxes, resolve_thresholds
from napari_semiconv.core.tiling import (
    Candidate,
    SoftMask,
    Tile,
    merge_candidates_soft,
    tile_grid,
)

__all__ = [
    "AUTO_TILE_SIZE",
    "Instances",
    "SegmentProgress",
    "collect_candidates",
    "detect",
    "detect_steps",
    "model_thresholds",
    "worm_foreground",
]

#: With ``tile_size=None`` images larger than this on a side are tiled with tiles of this size.
AUTO_TILE_SIZE = 1024


@dataclass
class Instances:
    """Worms found in one image.

    Attributes:
        masks: (N, H, W) bool, one mask per worm; masks may overlap.
        scores: (N,) float32 detection scores, decreasing.
        displacement: (2, H, W) float32, Φ's first two dims (rows, cols) in pixels: every pixel
            of worm k points to its centre c_k = u + Φ_u (eq. 4). Zeros for a baseline model.
        foreground: (H, W) float32 worm probability of a bright-field cascade's U-Net (the map
            its detector segmented), or None for a model without one.
    """

    masks: np.ndarray
    scores: np.ndarray
    displacement: np.ndarray
    foreground: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def labels(self) -> np.ndarray:
        """(H, W) label image (uint16; uint32 beyond 65535 worms); overlaps: higher score wins."""
        return labels_from_instances(self.masks, self.scores)


@dataclass
class SegmentProgress:
    """A step of :func:`segment_steps`: ``done`` of ``total`` tiles processed. ``warning``: the
    message is one the user must see after the run too (also raised as a RuntimeWarning)."""

    done: int
    total: int
    message: str
    warning: bool = False


_caller = threading.local()  # .warns: a one-call API above raises the warnings itself


@contextlib.contextmanager
def caller_warns() -> Iterator[None]:
    """Within it, :func:`warning_step` only makes the step: the one-call function driving the
    steps (``core.inference.segment``) raises each warning itself, so that the warning points at
    its caller's line and not into this library. For this thread only."""
    before = getattr(_caller, "warns", False)
    _caller.warns = True
    try:
        yield
    finally:
        _caller.warns = before


def warning_step(message: str, done: int = 0, total: int = 0) -> SegmentProgress:
    """A progress step the user must see after the run (``warning=True``), raised as a
    RuntimeWarning too unless the caller does it (:func:`caller_warns`)."""
    if not getattr(_caller, "warns", False):
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return SegmentProgress(done, total, message, warning=True)


def device_of(model: torch.nn.Module) -> torch.device:
    """The device the model's weights are on."""
    return next(model.parameters()).device


def model_thresholds(
    model: torch.nn.Module,
    score_threshold: float | None,
    mask_threshold: float | None,
    max_overlap: float | None,
) -> tuple[float, float, float]:
    """The given thresholds, or the model's own defaults where None (its card's, else its
    kind's: ``core.refine.resolve_thresholds``)."""
    card = getattr(model, "card", None)
    return resolve_thresholds(
        model.config.postprocess_kind, card, score_threshold, mask_threshold, max_overlap
    )


def worm_foreground(found: Instances, grey: np.ndarray, config: ModelConfig) -> np.ndarray | None:
    """The foreground the detector saw (bool (H, W)), or None: a cascade's U-Net map above
    its cut (``config.foreground_threshold``, or the run's ``foreground_cut``), a binary
    input's non-zero pixels of the normalised ``grey``."""
    if found.foreground is not None:
        return found.foreground > active_foreground_threshold(config)
    if config.input_mode == "binary":
        return grey > 0.5
    return None


def detect(
    model: torch.nn.Module,
    grey: np.ndarray,
    score_threshold: float = 0.05,
    mask_threshold: float | None = None,
    tile_size: int | None = None,
    overlap: int = 64,
) -> tuple[Instances, list[SoftMask | None]]:
    """The network's worms before the clean-up, with each worm's mask probability (uint8 on its
    RoI box): what ``segment`` refines. For choosing the clean-up's settings
    (``core.threshold_search``): one pass, then ``core.refine.refine_instances`` with any score
    threshold at or above ``score_threshold``, overlap limit and sharing out.

    ``grey``: the normalised (H, W) float32 image (``preprocessed=True`` in ``segment``);
    ``tile_size`` and ``overlap`` as in ``core.inference.segment_steps``. A constant image gives
    no worms, as in ``segment``.
    """
    grey = np.asarray(grey, dtype=np.float32)
    if grey.ndim != 2:
        raise ValueError(f"detect takes a normalised (H, W) image, got shape {grey.shape}")
    score_threshold, mask_threshold, _ = model_thresholds(
        model, score_threshold, mask_threshold, None
    )
    height, width = grey.shape
    if float(grey.max()) == float(grey.min()):
        return no_worms(model, height, width), []
    tile_size = tile_side(height, width, tile_size)
    tile_grid(height, width, tile_size, int(overlap))  # bad tile settings fail here
    return run_to_end(
        detect_steps(model, grey, tile_size, int(overlap), 1, score_threshold, mask_threshold, True)
    )


def no_worms(model: torch.nn.Module, height: int, width: int) -> Instances:
    """The Instances of a constant image (never shown to the network)."""
    fg = np.zeros((height, width), np.float32) if model.config.foreground_width else None
    return Instances(
        np.zeros((0, height, width), bool),
        np.zeros(0, np.float32),
        np.zeros((2, height, width), np.float32),
        fg,
    )


def tile_side(height: int, width: int, tile_size: int | None) -> int:
    """The tile side: ``tile_size``, or for None one tile for ordinary images (at least
    tile_grid's 32-px floor: tiny images fit in it) and ``AUTO_TILE_SIZE`` tiles beyond."""
    if tile_size is not None:
        return int(tile_size)
    side = max(height, width)
    return AUTO_TILE_SIZE if side > AUTO_TILE_SIZE else max(32, side)


def detect_steps(
    model: torch.nn.Module,
    grey: np.ndarray,
    tile_size: int,
    overlap: int,
    batch_size: int,
    score_threshold: float,
    mask_threshold: float,
    keep_prob: bool,
) -> Generator[SegmentProgress, None, tuple[Instances, list[SoftMask | None]]]:
    """One pass of the network over the tiles of ``grey``, yielding progress per batch of tiles;
    returns the worms above the thresholds, merged across tiles, and (with ``keep_prob``) their
    mask probabilities (``core.inference.segment_steps`` refines them)."""
    height, width = grey.shape
    tiles = tile_grid(height, width, tile_size, overlap)
    displacement = np.zeros((2, height, width), dtype=np.float32)
    foreground = np.zeros((height, width), np.float32) if model.config.foreground_width else None
    device = device_of(model)
    candidates: list[Candidate] = []
    yield SegmentProgress(0, len(tiles), f"segmenting {len(tiles)} tile(s)")
    # the detector keeps at most this many worms per tile (torchvision's detections_per_img)
    cap = getattr(getattr(model, "roi_heads", None), "detections_per_img", None)
    capped = False
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(tiles), batch_size):
            batch = tiles[start : start + batch_size]
            inputs = [
                torch.from_numpy(np.ascontiguousarray(grey[t.y0 : t.y1, t.x0 : t.x1]))[None].to(
                    device
                )
                for t in batch
            ]
            with (
                torch.inference_mode(),
                native_scale(model),
                detection_threshold(model, score_threshold),
            ):
                outputs = model(inputs)
            for offset, (tile, out) in enumerate(zip(batch, outputs, strict=True)):
                capped = capped or (cap is not None and len(out["scores"]) >= cap)
                collect_candidates(
                    candidates, start + offset, tile, out, score_threshold, mask_threshold,
                    keep_prob,
                )  # fmt: skip
                core = (
                    slice(tile.cy0 - tile.y0, tile.cy1 - tile.y0),
                    slice(tile.cx0 - tile.x0, tile.cx1 - tile.x0),
                )
                phi = out["displacement"].float().cpu().numpy()
                displacement[:, tile.cy0 : tile.cy1, tile.cx0 : tile.cx1] = phi[:, core[0], core[1]]
                if foreground is not None:
                    fg = out["foreground"].float().cpu().numpy()
                    foreground[tile.cy0 : tile.cy1, tile.cx0 : tile.cx1] = fg[core]
            done = min(start + batch_size, len(tiles))
            yield SegmentProgress(done, len(tiles), f"tile {done}/{len(tiles)}")
    finally:
        model.train(was_training)
    if capped:
        # a dense plate: the worms past the limit are lost without a word otherwise
        message = (
            f"a tile held {cap} worms, the model's limit per tile, so some worms may be "
            "missing: segment with smaller tiles (e.g. a tile size of 512)"
        )
        yield warning_step(message, len(tiles), len(tiles))
    masks, scores, soft = merge_candidates_soft(candidates, tiles, height, width)
    return Instances(masks, scores, displacement, foreground), soft


def run_to_end(steps: Generator[SegmentProgress, None, Any]) -> Any:
    """Run a progress generator to its end and return its value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def collect_candidates(
    candidates: list[Candidate],
    index: int,
    tile: Tile,
    out: dict[str, torch.Tensor],
    score_threshold: float,
    mask_threshold: float,
    keep_prob: bool,
) -> None:
    """Append the tile's detections above the thresholds, as crops in image coordinates: the
    thresholded mask and, with ``keep_prob``, the uint8 mask probability, on the box where the
    probability is not 0 (the pasted RoI), which ``core.divide`` reads to share out touching
    worms' pixels. ``index`` is the tile's place in the grid, ``out`` the model's output dict
    for it (``scores``, ``masks`` pasted at the tile's size).

    All masks are thresholded on the model's device and copied to the host in one transfer each
    (a copy per detection costs a GPU sync each).
    """
    keep = out["scores"] >= score_threshold
    scores = out["scores"][keep].float().cpu().numpy()
    prob = out["masks"][keep][:, 0].float()
    masks = (prob > mask_threshold).cpu().numpy()  # (N, H, W) bool
    # the RoI's reach: where the uint8 probability is not 0 (x * 255 rounds to 0 up to 0.5);
    # with the probabilities on the host already, read it from them (no second device pass)
    prob8 = (prob * 255.0).round_().to(torch.uint8).cpu().numpy() if keep_prob else None
    reach = prob8 > 0 if prob8 is not None else (prob * 255.0 > 0.5).cpu().numpy()
    for k, (y0, y1, x0, x1) in enumerate(mask_boxes(reach)):
        if not masks[k, y0:y1, x0:x1].any():
            continue  # a box whose mask is empty at this threshold is no worm
        candidates.append(
            Candidate(
                index,
                tile.y0 + int(y0),
                tile.x0 + int(x0),
                masks[k, y0:y1, x0:x1].copy(),
                float(scores[k]),
                None if prob8 is None else prob8[k, y0:y1, x0:x1].copy(),
            )
        )
