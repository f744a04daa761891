"""Segment worms in an image with a trained model: `segment_steps`, `segment`, `Instances`.

The model runs at the image's own pixel scale (see :func:`native_scale`): worms are as many
pixels wide in a tile as they were in the training crops, whatever the image size. Images larger
than ``tile_size`` are cut into overlapping tiles (``core.tiling``) whose instances are merged
and whose displacement fields Φ (eq. 4/6) are stitched.

Models are found by :func:`load_model` (``core.model_store``, re-exported here).
"""

from __future__ import annotations

import platform
import warnings
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_semiconv.core.detections import collect_candidates
from napari_semiconv.core.measurements import labels_from_instances
from napari_semiconv.core.model.foreground import FOREGROUND_THRESHOLD
from napari_semiconv.core.model.run_modes import detection_threshold, native_scale
from napari_semiconv.core.model_store import list_models, load_model, model_source
from napari_semiconv.core.preprocess import normalise, to_grey
from napari_semiconv.core.refine import (
    DEFAULT_SCORE_THRESHOLD,
    postprocess_defaults_of,
    refine_instances,
)
from napari_semiconv.core.tiling import Candidate, SoftMask, merge_candidates_soft, tile_grid

__all__ = [
    "Instances",
    "SegmentProgress",
    "AUTO_TILE_SIZE",
    "detect",
    "worm_foreground",
    "DEFAULT_SCORE_THRESHOLD",
    "list_models",
    "load_model",
    "native_scale",
    "run_info",
    "segment",
    "segment_steps",
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
    """A step of :func:`segment_steps`: ``done`` of ``total`` tiles processed."""

    done: int
    total: int
    message: str


def _check_image(image: Any) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"image must be a numpy array (H, W) or (H, W, 3/4), got {type(image).__name__}"
        )
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.number)):
        raise TypeError(f"image must hold numbers, got dtype {image.dtype}")
    grey = to_grey(image)
    if min(grey.shape) < 16:
        raise ValueError(
            f"image of {grey.shape[0]}x{grey.shape[1]} pixels is too small to segment "
            "(at least 16 pixels on a side)"
        )
    return grey


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def segment_steps(
    model: torch.nn.Module,
    image: np.ndarray,
    score_threshold: float | None = None,
    mask_threshold: float | None = None,
    tile_size: int | None = None,
    overlap: int = 64,
    batch_size: int = 1,
    preprocessed: bool = False,
    max_overlap: float | None = None,
    use_foreground: bool = True,
    divide_touching: bool = True,
) -> Generator[SegmentProgress, None, Instances]:
    """Segment ``image``, yielding progress per batch of tiles; the Instances are the return value.

    Cancel by no longer iterating (or ``.close()``): nothing is left running. ``segment`` runs
    the generator to the end.

    Args:
        model: from :func:`load_model` (or ``build_model``); its card's input mode decides the
            preprocessing: ``core.preprocess.to_grey`` then ``normalise(.., config.input_mode)``.
        image: (H, W) grey, or (H, W, 3) RGB / (H, W, 4) RGBA (alpha ignored), any numeric dtype.
        score_threshold: keep detections scoring at least this; None: the model's own default
            (``core.refine.postprocess_defaults_of``: its card's, else its kind's).
        mask_threshold: a pixel belongs to a worm where its mask probability exceeds this;
            None: the model's own default.
        tile_size: side of a tile in pixels; None = tile only images larger than
            ``AUTO_TILE_SIZE`` on a side.
        overlap: overlap of neighbouring tiles in pixels (make it at least a worm's width).
        batch_size: tiles per forward pass.
        preprocessed: ``image`` is already a normalised (H, W) float32 (the trainer's samples).
        max_overlap: of two worms whose masks overlap with an IoU above this, only the higher
            scoring is kept (``core.refine.suppress_overlaps``); 1 keeps both; None: the
            model's own default.
        use_foreground: binary-input models and bright-field cascades: clip each worm to the
            foreground (the input, or the cascade's U-Net map), and give a worm alone in its
            foreground blob the whole blob (``core.refine``).
        divide_touching: with ``use_foreground``, give each pixel of a blob of touching worms
            that several worms or none claim to one worm, by mask probability
            (``core.divide``); False keeps the thresholded masks as they are there.

    Memory: one batch of tiles through the network at a time; worms found so far are kept as
    crops to their RoI boxes (a bool mask and a uint8 probability each); the result holds N·H·W
    bytes of masks plus 8·H·W bytes of Φ, and the clean-up (``core.refine``) works in the masks'
    own buffer (binary input: plus 5·H·W bytes for the foreground and its connected components;
    sharing out a blob of touching worms: a few bytes per pixel of that blob's box and worm).

    Raises:
        TypeError: image is not a numeric array.
        ValueError: wrong shape, NaN/inf pixels, smaller than 16 px, or bad thresholds.
        RuntimeError: out of memory even with 32-px tiles. Before that, out-of-memory errors
            make it retry with half the tile side, with a RuntimeWarning and a progress message.
    """
    score_threshold, mask_threshold, max_overlap = _resolve(
        model, score_threshold, mask_threshold, max_overlap
    )
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if preprocessed:
        grey = np.asarray(image, dtype=np.float32)
        if grey.ndim != 2:
            raise ValueError(f"a preprocessed image must be (H, W), got {grey.shape}")
    else:
        grey = normalise(_check_image(image), model.config.input_mode, _device_of(model))
    height, width = grey.shape
    tile_size, overlap = _tile_side(height, width, tile_size), int(overlap)
    tile_grid(height, width, tile_size, overlap)  # bad tile settings fail before any work
    if float(grey.max()) == float(grey.min()):
        # a constant image carries nothing to segment; an untrained or weak detector could
        # still fire on it, so it is not shown to the network at all
        yield SegmentProgress(1, 1, "blank image: nothing to segment")
        return _no_worms(model, height, width)
    while True:
        try:
            keep_prob = _divides(model, divide_touching, use_foreground)
            found, soft = yield from _segment_tiles(
                model, grey, tile_size, overlap, batch_size, score_threshold, mask_threshold,
                keep_prob,
            )  # fmt: skip
            return _refine(
                found,
                soft if keep_prob else None,
                grey,
                model.config.input_mode,
                max_overlap,
                use_foreground,
            )
        except torch.OutOfMemoryError as exc:
            # out of memory: free what the failed pass held and retry with half the tile side
            # (and one tile per pass); below the 32-px floor there is nothing left to try
            if _device_of(model).type == "cuda":
                torch.cuda.empty_cache()
            smaller = min(tile_size, max(height, width)) // 2
            if smaller < 32:
                raise RuntimeError(
                    f"out of memory even with {tile_size}-px tiles; choose a smaller tile size, "
                    "the cpu device, or close other programs using the GPU"
                ) from exc
            message = (
                f"out of memory with {tile_size}-px tiles on {_device_of(model)}; "
                f"retrying with {smaller}-px tiles (set the tile size to avoid this)"
            )
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            yield SegmentProgress(0, 0, message)
            tile_size, overlap, batch_size = smaller, min(overlap, smaller // 4), 1


def _resolve(
    model: torch.nn.Module,
    score_threshold: float | None,
    mask_threshold: float | None,
    max_overlap: float | None,
) -> tuple[float, float, float]:
    """The given thresholds, or the model's own defaults where None (its card's, else its
    kind's: ``core.refine.postprocess_defaults_of``)."""
    defaults = postprocess_defaults_of(model.config.postprocess_kind, getattr(model, "card", None))
    given = {
        "score_threshold": score_threshold,
        "mask_threshold": mask_threshold,
        "max_overlap": max_overlap,
    }
    values = tuple(defaults[k] if v is None else float(v) for k, v in given.items())
    for name, value in zip(given, values, strict=True):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    return values


def _divides(model: torch.nn.Module, divide_touching: bool, use_foreground: bool) -> bool:
    """Whether :func:`_refine` will share out touching worms (it needs a foreground: a binary
    input or a cascade's U-Net), so the masks' probabilities are worth copying off the device."""
    config = model.config
    has_foreground = bool(config.foreground_width) or config.input_mode == "binary"
    return divide_touching and use_foreground and has_foreground


def _refine(
    found: Instances,
    soft: list[SoftMask | None] | None,
    grey: np.ndarray,
    input_mode: str,
    max_overlap: float,
    use_foreground: bool,
) -> Instances:
    """``core.refine.refine_instances`` with the foreground the detector saw, if it saw one
    (and then the masks' probabilities ``soft``, when given, share out the blobs of touching
    worms).

    A binary input's foreground is its non-zero pixels; a cascade's is its U-Net's map above
    ``FOREGROUND_THRESHOLD`` (exactly the binary image its detector was given).
    """
    foreground = worm_foreground(found, grey, input_mode) if use_foreground else None
    # the masks were made here for this call: refine them in their own buffer
    masks, scores = refine_instances(
        found.masks, found.scores, foreground, max_overlap, inplace=True, soft=soft
    )
    return Instances(masks, scores, found.displacement, found.foreground)


def worm_foreground(found: Instances, grey: np.ndarray, input_mode: str) -> np.ndarray | None:
    """The foreground the detector saw (bool (H, W)), or None: a cascade's U-Net map above
    ``FOREGROUND_THRESHOLD``, a binary input's non-zero pixels of the normalised ``grey``."""
    if found.foreground is not None:
        return found.foreground > FOREGROUND_THRESHOLD
    if input_mode == "binary":
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
    RoI box): what :func:`segment` refines. For choosing the clean-up's settings
    (``core.threshold_search``): one pass, then ``core.refine.refine_instances`` with any score
    threshold at or above ``score_threshold``, overlap limit and sharing out.

    ``grey``: the normalised (H, W) float32 image (``preprocessed=True`` in :func:`segment`);
    ``tile_size`` and ``overlap`` as in :func:`segment_steps`. A constant image gives no worms,
    as in :func:`segment`.
    """
    grey = np.asarray(grey, dtype=np.float32)
    if grey.ndim != 2:
        raise ValueError(f"detect takes a normalised (H, W) image, got shape {grey.shape}")
    score_threshold, mask_threshold, _ = _resolve(model, score_threshold, mask_threshold, None)
    height, width = grey.shape
    if float(grey.max()) == float(grey.min()):
        return _no_worms(model, height, width), []
    tile_size = _tile_side(height, width, tile_size)
    tile_grid(height, width, tile_size, int(overlap))  # bad tile settings fail here
    return _run_to_end(
        _segment_tiles(
            model, grey, tile_size, int(overlap), 1, score_threshold, mask_threshold, True
        )
    )


def _no_worms(model: torch.nn.Module, height: int, width: int) -> Instances:
    """The Instances of a constant image (never shown to the network)."""
    fg = np.zeros((height, width), np.float32) if model.config.foreground_width else None
    return Instances(
        np.zeros((0, height, width), bool),
        np.zeros(0, np.float32),
        np.zeros((2, height, width), np.float32),
        fg,
    )


def _tile_side(height: int, width: int, tile_size: int | None) -> int:
    """The tile side: ``tile_size``, or for None one tile for ordinary images (at least
    tile_grid's 32-px floor: tiny images fit in it) and ``AUTO_TILE_SIZE`` tiles beyond."""
    if tile_size is not None:
        return int(tile_size)
    side = max(height, width)
    return AUTO_TILE_SIZE if side > AUTO_TILE_SIZE else max(32, side)


def _segment_tiles(
    model: torch.nn.Module,
    grey: np.ndarray,
    tile_size: int,
    overlap: int,
    batch_size: int,
    score_threshold: float,
    mask_threshold: float,
    keep_prob: bool,
) -> Generator[SegmentProgress, None, tuple[Instances, list[SoftMask | None]]]:
    """One pass over the tiles of ``grey`` (see :func:`segment_steps`)."""
    height, width = grey.shape
    tiles = tile_grid(height, width, tile_size, overlap)
    displacement = np.zeros((2, height, width), dtype=np.float32)
    foreground = np.zeros((height, width), np.float32) if model.config.foreground_width else None
    device = _device_of(model)
    candidates: list[Candidate] = []
    yield SegmentProgress(0, len(tiles), f"segmenting {len(tiles)} tile(s)")
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
    masks, scores, soft = merge_candidates_soft(candidates, tiles, height, width)
    return Instances(masks, scores, displacement, foreground), soft


def segment(model: torch.nn.Module, image: np.ndarray, **kwargs: Any) -> Instances:
    """Segment ``image`` in one call; the arguments are :func:`segment_steps`'s."""
    return _run_to_end(segment_steps(model, image, **kwargs))


def _run_to_end(steps: Generator[SegmentProgress, None, Any]) -> Any:
    """Run a progress generator to its end and return its value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def segment_batch(
    model: torch.nn.Module,
    images: list[np.ndarray],
    score_threshold: float | None = None,
    mask_threshold: float | None = None,
    max_overlap: float | None = None,
    divide_touching: bool = True,
) -> list[Instances]:
    """Segment several images in one forward pass (throughput on a GPU); one Instances each.

    Each image must fit one tile (at most ``AUTO_TILE_SIZE`` on a side); larger images go
    through :func:`segment`, which tiles them. Preprocessing is :func:`segment`'s.
    """
    score_threshold, mask_threshold, max_overlap = _resolve(
        model, score_threshold, mask_threshold, max_overlap
    )
    keep_prob = _divides(model, divide_touching, True)
    device = _device_of(model)
    greys = [normalise(_check_image(im), model.config.input_mode, device) for im in images]
    for i, grey in enumerate(greys):
        if max(grey.shape) > AUTO_TILE_SIZE:
            raise ValueError(
                f"image {i} is {grey.shape[0]}×{grey.shape[1]}, larger than one tile "
                f"({AUTO_TILE_SIZE} px); segment it with segment(), which tiles it"
            )
    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            native_scale(model),
            detection_threshold(model, score_threshold),
        ):
            outputs = model(
                [torch.from_numpy(np.ascontiguousarray(g))[None].to(device) for g in greys]
            )
    finally:
        model.train(was_training)
    results = []
    for grey, out in zip(greys, outputs, strict=True):
        height, width = grey.shape
        tiles = tile_grid(height, width, max(height, width), 0)
        candidates: list[Candidate] = []
        collect_candidates(candidates, 0, tiles[0], out, score_threshold, mask_threshold, keep_prob)
        masks, scores, soft = merge_candidates_soft(candidates, tiles, height, width)
        phi = out["displacement"].float().cpu().numpy()
        fg = out["foreground"].float().cpu().numpy() if "foreground" in out else None
        found = Instances(masks, scores, phi, fg)
        soft = soft if keep_prob else None
        results.append(_refine(found, soft, grey, model.config.input_mode, max_overlap, True))
    return results


def run_info(
    model: torch.nn.Module, settings: dict[str, Any], device: str | torch.device | None = None
) -> dict[str, Any]:
    """Everything needed to replay a run: model (name, path, sha256), settings, versions, device.

    ``predict --from-run RUN.json`` and the napari widget read the same record back.
    """
    import torchvision

    from napari_semiconv import __version__

    if device is None:
        device = _device_of(model)
    card = getattr(model, "card", {}) or {}
    return {
        "model": {
            **model_source(model),
            "input_mode": model.config.input_mode,
            "card_name": card.get("name"),
        },
        "settings": dict(settings),
        "versions": {
            "napari_semiconv": __version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "device": str(device),
    }
