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
from typing import Any, cast

import numpy as np
import torch

from napari_semiconv.core.detections import (
    AUTO_TILE_SIZE,
    Instances,
    SegmentProgress,
    caller_warns,
    collect_candidates,
    detect,
    detect_steps,
    device_of,
    model_thresholds,
    no_worms,
    tile_side,
    warning_step,
    worm_foreground,
)
from napari_semiconv.core.model.config import ModelConfig
from napari_semiconv.core.model.run_modes import (
    check_foreground_cut,
    detection_threshold,
    foreground_cut,
    native_scale,
)
from napari_semiconv.core.model_store import list_models, load_model, model_source
from napari_semiconv.core.preprocess import normalise
from napari_semiconv.core.refine import DEFAULT_SCORE_THRESHOLD, refine_instances
from napari_semiconv.core.rescale import check_rescale, instances_at_size, rescaled_input
from napari_semiconv.core.tiling import (
    Candidate,
    SoftMask,
    check_tiling,
    merge_candidates_soft,
    tile_grid,
)
from napari_semiconv.core.tta import detect_views_steps, views_of
from napari_semiconv.core.worm_size import learnt_worm_area, size_warning

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


def _model_input(image: Any, input_mode: str, device: object = None) -> np.ndarray:
    """``image`` checked and normalised for ``input_mode``: (H, W) float32.

    The caller's own array reaches ``normalise`` (not a float grey copy), so an integer label
    image given to a binary-input model is read as labels (every id is foreground), as the
    training data is, instead of being cut at half its largest id.
    """
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
    grey = normalise(image, input_mode, device)
    if min(grey.shape) < 16:
        raise ValueError(
            f"image of {grey.shape[0]}x{grey.shape[1]} pixels is too small to segment "
            "(at least 16 pixels on a side)"
        )
    return grey


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
    views: int = 1,
    foreground_threshold: float | None = None,
    rescale: float = 1.0,
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
        views: test-time augmentation: run the network on this many flipped/transposed views
            of the image (1, 2, 4 or 8) and fuse their worms (``core.tta``); costs one pass
            per view.
        foreground_threshold: a bright-field cascade's U-Net cut: a pixel is worm (for the
            detector's input and the clean-up) where the map exceeds it; None: the model's own
            (``ModelConfig.foreground_threshold``). Refused for other models.
        rescale: resize the image by this factor before the network, for worms imaged larger
            or smaller than the model's training images (0.5 for worms twice as large;
            ``core.rescale``); the worms come back at the image's size. ``tile_size`` and
            ``overlap`` are then in the resized image's pixels.

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
    score_threshold, mask_threshold, max_overlap = model_thresholds(
        model, score_threshold, mask_threshold, max_overlap
    )
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    views_of(views)  # a bad number of views fails before any work
    check_foreground_cut(model, foreground_threshold)  # and so does a bad cut
    # and a bad overlap, though only an image large enough to be tiled would use it
    check_tiling(tile_size, overlap)
    rescale = check_rescale(rescale)
    last: list[SegmentProgress] = []  # the latest progress step, for a warning after the work
    if preprocessed:
        grey = np.asarray(image, dtype=np.float32)
        if grey.ndim != 2:
            raise ValueError(f"a preprocessed image must be (H, W), got {grey.shape}")
    else:
        grey = _model_input(image, model.config.input_mode, device_of(model))
    if rescale != 1.0:
        found = yield from _tracked(segment_steps(
            model, rescaled_input(grey, rescale, model.config.input_mode), score_threshold,
            mask_threshold, tile_size, overlap, batch_size, True, max_overlap, use_foreground,
            divide_touching, views, foreground_threshold,
        ), last)  # fmt: skip
        if not preprocessed:
            yield from _size_steps(model, found, last)  # the sizes the network saw
        return instances_at_size(found, grey.shape, rescale)
    height, width = grey.shape
    tile_size, overlap = tile_side(height, width, tile_size), int(overlap)
    tile_grid(height, width, tile_size, overlap)  # bad tile settings fail before any work
    if float(grey.max()) == float(grey.min()):
        # a constant image carries nothing to segment; an untrained or weak detector could
        # still fire on it, so it is not shown to the network at all
        yield SegmentProgress(1, 1, "blank image: nothing to segment")
        return no_worms(model, height, width)
    with foreground_cut(model, foreground_threshold):
        while True:
            try:
                keep_prob = _divides(model, divide_touching, use_foreground)
                if views == 1:
                    found, soft = yield from _tracked(detect_steps(
                        model, grey, tile_size, overlap, batch_size, score_threshold,
                        mask_threshold, keep_prob,
                    ), last)  # fmt: skip
                else:
                    found, soft = yield from _tracked(detect_views_steps(
                        model, grey, views, tile_size, overlap, batch_size, score_threshold,
                        mask_threshold,
                    ), last)  # fmt: skip
                found = _refine(
                    found,
                    soft if keep_prob else None,
                    grey,
                    model.config,
                    max_overlap,
                    use_foreground,
                )
                break
            except torch.OutOfMemoryError as exc:
                # out of memory: free what the failed pass held and retry with half the tile side
                # (and one tile per pass); below the 32-px floor there is nothing left to try
                if device_of(model).type == "cuda":
                    torch.cuda.empty_cache()
                smaller = min(tile_size, max(height, width)) // 2
                if smaller < 32:
                    raise RuntimeError(
                        f"out of memory even with {tile_size}-px tiles; choose a smaller tile "
                        "size, the cpu device, or close other programs using the GPU"
                    ) from exc
                message = (
                    f"out of memory with {tile_size}-px tiles on {device_of(model)}; "
                    f"retrying with {smaller}-px tiles (set the tile size to avoid this)"
                )
                yield warning_step(message)
                tile_size, overlap, batch_size = smaller, min(overlap, smaller // 4), 1
    if not preprocessed:  # a user's image (a trainer's own samples need no word)
        yield from _size_steps(model, found, last)
    return found


def _tracked(
    steps: Generator[SegmentProgress, None, Any], last: list[SegmentProgress]
) -> Generator[SegmentProgress, None, Any]:
    """``yield from steps``, keeping its latest step in ``last`` (one item); closing this
    closes ``steps`` (cancel leaves nothing running)."""
    try:
        while True:
            try:
                step = next(steps)
            except StopIteration as stop:
                return stop.value
            last[:] = [step]
            yield step
    finally:
        steps.close()


def _size_steps(
    model: torch.nn.Module, found: Instances, last: list[SegmentProgress]
) -> Generator[SegmentProgress]:
    """A warning (RuntimeWarning and a progress step, as far on as the ``last`` one) when the
    worms found are far smaller or larger than those the model learnt (``core.worm_size``): a
    wrong channel, an inverted image, or another magnification."""
    message = _size_message(model, found)
    if message:
        done, total = (last[0].done, last[0].total) if last else (0, 0)
        yield warning_step(message, done, total)


def _size_message(model: torch.nn.Module, found: Instances) -> str | None:
    areas = found.masks.sum(axis=(1, 2))  # (0,) when no worm was found
    card = getattr(model, "card", None)
    return size_warning(areas, learnt_worm_area(card), model.config.input_mode)


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
    config: ModelConfig,
    max_overlap: float,
    use_foreground: bool,
) -> Instances:
    """``core.refine.refine_instances`` with the foreground the detector saw, if it saw one
    (and then the masks' probabilities ``soft``, when given, share out the blobs of touching
    worms).

    A binary input's foreground is its non-zero pixels; a cascade's is its U-Net's map above
    ``config.foreground_threshold`` (exactly the binary image its detector was given).
    """
    foreground = worm_foreground(found, grey, config) if use_foreground else None
    # the masks were made here for this call: refine them in their own buffer
    masks, scores = refine_instances(
        found.masks, found.scores, foreground, max_overlap, inplace=True, soft=soft
    )
    return Instances(masks, scores, found.displacement, found.foreground)


def segment(model: torch.nn.Module, image: np.ndarray, **kwargs: Any) -> Instances:
    """Segment ``image`` in one call; the arguments are :func:`segment_steps`'s.

    What :func:`segment_steps` reports as warning steps (a tile at the model's worm limit, worms
    far from the model's size, an out-of-memory retry) is raised as RuntimeWarnings pointing at
    the caller's line, each message once.
    """
    steps = segment_steps(model, image, **kwargs)
    notes: list[str] = []
    with caller_warns():
        while True:
            try:
                step = next(steps)
            except StopIteration as stop:
                found = stop.value
                break
            if step.warning and step.message not in notes:
                notes.append(step.message)
    for message in notes:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return found


def segment_batch(
    model: torch.nn.Module,
    images: list[np.ndarray],
    score_threshold: float | None = None,
    mask_threshold: float | None = None,
    max_overlap: float | None = None,
    divide_touching: bool = True,
    foreground_threshold: float | None = None,
) -> list[Instances]:
    """Segment several images in batched forward passes (throughput on a GPU); one Instances
    each, the worms :func:`segment` finds in that image alone.

    Images of one size share a pass; images of other sizes go in passes of their own, since a
    batch pads every image to the largest and the padding (grey after normalisation) changes
    the worms near a smaller image's edges. A constant image is not shown to the network, as
    in :func:`segment`. Each image must fit one tile (at most ``AUTO_TILE_SIZE`` on a side);
    larger images go through :func:`segment`, which tiles them. Preprocessing and the
    arguments are :func:`segment`'s.
    """
    score_threshold, mask_threshold, max_overlap = model_thresholds(
        model, score_threshold, mask_threshold, max_overlap
    )
    check_foreground_cut(model, foreground_threshold)
    keep_prob = _divides(model, divide_touching, True)
    device = device_of(model)
    greys = [_model_input(im, model.config.input_mode, device) for im in images]
    for i, grey in enumerate(greys):
        if max(grey.shape) > AUTO_TILE_SIZE:
            raise ValueError(
                f"image {i} is {grey.shape[0]}×{grey.shape[1]}, larger than one tile "
                f"({AUTO_TILE_SIZE} px); segment it with segment(), which tiles it"
            )
    results: list[Instances | None] = [None] * len(greys)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, grey in enumerate(greys):
        if float(grey.max()) == float(grey.min()):  # blank: nothing to segment
            results[i] = no_worms(model, *grey.shape)
        else:
            by_size.setdefault(grey.shape, []).append(i)
    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            native_scale(model),
            detection_threshold(model, score_threshold),
            foreground_cut(model, foreground_threshold),
        ):
            for members in by_size.values():
                batch = [torch.from_numpy(np.ascontiguousarray(greys[i]))[None] for i in members]
                outputs = model([t.to(device) for t in batch])
                for i, out in zip(members, outputs, strict=True):
                    results[i] = _segment_one(
                        model, greys[i], out, score_threshold, mask_threshold, keep_prob,
                        max_overlap,
                    )  # fmt: skip
    finally:
        model.train(was_training)
    for i, found in enumerate(results):
        message = _size_message(model, cast(Instances, found))
        if message:
            warnings.warn(f"image {i}: {message}", RuntimeWarning, stacklevel=2)
    return cast(list[Instances], results)  # every image got one: blank or from its pass


def _segment_one(
    model: torch.nn.Module,
    grey: np.ndarray,
    out: dict[str, torch.Tensor],
    score_threshold: float,
    mask_threshold: float,
    keep_prob: bool,
    max_overlap: float,
) -> Instances:
    """One image's worms from its share of :func:`segment_batch`'s forward pass, cleaned up
    (run under the pass's foreground cut: the clean-up reads it too)."""
    height, width = grey.shape
    tiles = tile_grid(height, width, tile_side(height, width, None), 0)
    candidates: list[Candidate] = []
    collect_candidates(candidates, 0, tiles[0], out, score_threshold, mask_threshold, keep_prob)
    masks, scores, soft = merge_candidates_soft(candidates, tiles, height, width)
    phi = out["displacement"].float().cpu().numpy()
    fg = out["foreground"].float().cpu().numpy() if "foreground" in out else None
    found = Instances(masks, scores, phi, fg)
    return _refine(found, soft if keep_prob else None, grey, model.config, max_overlap, True)


def run_info(
    model: torch.nn.Module, settings: dict[str, Any], device: str | torch.device | None = None
) -> dict[str, Any]:
    """Everything needed to replay a run: model (name, path, sha256), settings, versions, device.

    ``predict --from-run RUN.json`` and the napari widget read the same record back.
    """
    import torchvision

    from napari_semiconv import __version__

    if device is None:
        device = device_of(model)
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
