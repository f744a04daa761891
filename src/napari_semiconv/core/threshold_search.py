"""Choosing a model's post-processing thresholds on annotated images.

The defaults of ``core.refine`` were chosen on the bundled models' own training wells. A model
fine-tuned on a lab's images, or the bundled ones on another microscope, may want others; as
StarDist optimises its probability and NMS thresholds on validation images and stores them with
the model, :func:`search_thresholds` runs the network once per image and mask threshold
(``core.inference.detect``), applies every score threshold and overlap limit to the same
detections exactly as ``segment`` would (``core.refine.refine_instances``, touching worms shared
out), and scores each setting (``core.evaluation.evaluate``: COCO mask AP, avS).
:func:`with_thresholds` records the best in the model card under ``"postprocess"``, where
``segment``, ``predict``, ``demo`` and the Segment widget find them
(``core.refine.postprocess_defaults_of``).

Choose on images the model was trained on or on images set aside for it, never on the images
the result will be judged on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from napari_semiconv.core.evaluation import evaluate
from napari_semiconv.core.inference import AUTO_TILE_SIZE, detect, worm_foreground
from napari_semiconv.core.model.run_modes import check_foreground_cut, foreground_cut
from napari_semiconv.core.refine import (
    FILL_MIN_COVER,
    POSTPROCESS_KEYS,
    SEARCH_GRID,
    refine_instances,
)

__all__ = [
    "METRICS",
    "best_setting",
    "search_thresholds",
    "with_thresholds",
]

#: what a setting can be chosen by (``core.evaluation`` summary keys)
METRICS = ("avS", "AP")
SCORE_THRESHOLDS, MASK_THRESHOLDS, MAX_OVERLAPS = SEARCH_GRID
_REPORTED = ("AP", "AP50", "AP75", "avS", "S50", "S90")


def _check_grid(name: str, values: Sequence[float]) -> list[float]:
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"{name}: give at least one value")
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"{name} must be in [0, 1], got {bad}")
    return sorted(set(values))


def search_thresholds(
    model: torch.nn.Module,
    samples: Sequence[Any],
    score_thresholds: Sequence[float] = SCORE_THRESHOLDS,
    mask_thresholds: Sequence[float] = MASK_THRESHOLDS,
    max_overlaps: Sequence[float] = MAX_OVERLAPS,
    fill_covers: Sequence[float] = (FILL_MIN_COVER,),
    divides: Sequence[bool] = (True,),
    use_foreground: bool = True,
    progress: Callable[[int, int], None] | None = None,
    foreground_cuts: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """Score every combination of the thresholds on ``samples``; one row each.

    Args:
        model: from ``load_model``.
        samples: ``core.training_data.read_samples`` samples (``.image`` normalised for the
            model's input mode, ``.masks`` (N, H, W) bool); images larger than 1024 px on a
            side are tiled as ``segment`` tiles them.
        fill_covers / divides / use_foreground: the clean-up steps of a model that sees a
            foreground (binary input, bright-field cascade); ignored for the others.
        progress: called with (images done, images in all) as the network runs.
        foreground_cuts: a bright-field cascade's U-Net cuts to try
            (``ModelConfig.foreground_threshold``; the network runs again for each, and the
            model's own cut is restored after); None: its own cut only.

    Returns:
        rows of {"score_threshold", "mask_threshold", "max_overlap", "fill_min_cover",
        "divide", "use_foreground", AP, AP50, AP75, avS, S50, S90, "n_pred", "n_true"}, and
        for a cascade "foreground_threshold".

    Raises:
        ValueError: no samples, a threshold outside [0, 1], a cut outside (0, 1), or cuts for
            a model without a foreground U-Net.
    """
    if not samples:
        raise ValueError("no annotated images to choose thresholds on")
    grids = (
        _check_grid("score thresholds", score_thresholds),
        _check_grid("mask thresholds", mask_thresholds),
        _check_grid("max overlaps", max_overlaps),
    )
    config = model.config
    cascade = bool(config.foreground_width)
    if foreground_cuts is None:
        cuts = [config.foreground_threshold]
    else:
        grid = _check_grid("foreground cuts", foreground_cuts)
        cuts = [check_foreground_cut(model, cut, "foreground cuts") for cut in grid]
    total = len(cuts) * len(grids[1]) * len(samples)
    rows: list[dict[str, Any]] = []
    for c, cut in enumerate(cuts):
        before = c * len(grids[1]) * len(samples)  # images segmented at earlier cuts
        step = None if progress is None else _offset(progress, before, total)
        with foreground_cut(model, cut if cascade else None):
            found = _search_at_cut(
                model, samples, *grids, fill_covers, divides, use_foreground, step
            )
        rows += [{**r, "foreground_threshold": cut} if cascade else r for r in found]
    return rows


def _offset(
    progress: Callable[[int, int], None], before: int, total: int
) -> Callable[[int, int], None]:
    """``progress`` for one cut's pass: its (done, of) counted on from ``before`` of ``total``."""
    return lambda done, _of: progress(before + done, total)


def _search_at_cut(
    model: torch.nn.Module,
    samples: Sequence[Any],
    scores: list[float],
    masks_at: list[float],
    overlaps: list[float],
    fill_covers: Sequence[float],
    divides: Sequence[bool],
    use_foreground: bool,
    progress: Callable[[int, int], None] | None,
) -> list[dict[str, Any]]:
    """:func:`search_thresholds`'s rows at the model's present cut."""
    truths = [s.masks for s in samples]
    rows: list[dict[str, Any]] = []
    total = len(masks_at) * len(samples)
    for m, mask_threshold in enumerate(masks_at):
        found = []
        for i, sample in enumerate(samples):
            found.append(detect(model, sample.image, min(scores), mask_threshold))
            if progress is not None:
                progress(m * len(samples) + i + 1, total)
        foregrounds = [
            worm_foreground(f, s.image, model.config) if use_foreground else None
            for (f, _), s in zip(found, samples, strict=True)
        ]
        by_score = _per_score(model, samples, found, scores, mask_threshold)
        clip = any(fg is not None for fg in foregrounds)
        settings = itertools.product(
            scores,
            overlaps,
            fill_covers if clip else [None],
            divides if clip else [False],
        )
        for score_threshold, max_overlap, min_cover, divide in settings:
            cover = FILL_MIN_COVER if min_cover is None else float(min_cover)
            preds = []
            for (f, soft), fg in zip(by_score(score_threshold), foregrounds, strict=True):
                keep = np.flatnonzero(f.scores >= score_threshold)
                kept_soft = [soft[i] for i in keep] if divide else None
                preds.append(
                    refine_instances(
                        f.masks[keep], f.scores[keep], fg, max_overlap, cover, soft=kept_soft
                    )
                )
            summary = evaluate(preds, truths, per_image_ap=False).summary
            rows.append(
                {
                    "score_threshold": score_threshold,
                    "mask_threshold": mask_threshold,
                    "max_overlap": max_overlap,
                    "fill_min_cover": min_cover,
                    "divide": bool(divide),
                    "use_foreground": clip,
                    **{k: summary.get(k) for k in _REPORTED},
                    "n_pred": int(sum(len(p[1]) for p in preds)),
                    "n_true": int(sum(len(t) for t in truths)),
                }
            )
    return rows


def _per_score(
    model: torch.nn.Module,
    samples: Sequence[Any],
    found: list[tuple[Any, list]],
    scores: list[float],
    mask_threshold: float,
) -> Callable[[float], list[tuple[Any, list]]]:
    """The detections to filter at each score threshold. An image of one tile: the one pass at
    the lowest threshold serves every threshold. A tiled image: pieces of worms cut by the tiles
    are merged among the detections kept, so filtering after merging would differ from
    ``segment``; it gets a pass of its own per threshold. Only the last threshold's pass is
    kept (the settings come score by score), so big images do not pile up in memory."""
    tiled = [max(s.image.shape) > AUTO_TILE_SIZE for s in samples]
    if not any(tiled):
        return lambda _score: found
    last: dict[float, list[tuple[Any, list]]] = {min(scores): found}

    def at(score: float) -> list[tuple[Any, list]]:
        if score not in last:
            passes = [
                detect(model, s.image, score, mask_threshold) if t else f
                for s, t, f in zip(samples, tiled, found, strict=True)
            ]
            last.clear()
            last[score] = passes
        return last[score]

    return at


def best_setting(rows: Sequence[dict[str, Any]], metric: str = "avS") -> dict[str, Any]:
    """The row with the highest ``metric`` (ties: the first, i.e. the lowest thresholds)."""
    if metric not in METRICS:
        raise ValueError(f"choose thresholds by one of {METRICS}, not {metric!r}")
    scored = [r for r in rows if r.get(metric) is not None]
    if not scored:
        raise ValueError(f"no setting has a {metric} (no worms in the annotations?)")
    return max(scored, key=lambda r: r[metric])


def with_thresholds(
    card: dict[str, Any], row: dict[str, Any], metric: str, images: Sequence[str]
) -> dict[str, Any]:
    """A copy of ``card`` recording ``row``'s thresholds as the model's own defaults."""
    new = dict(card)
    # a cascade's chosen cut goes into the model's config (the caller's job); noted here too
    cut = {k: float(row[k]) for k in ("foreground_threshold",) if k in row}
    new["postprocess"] = {
        **{k: float(row[k]) for k in POSTPROCESS_KEYS},
        **cut,
        "chosen_by": metric,
        "score": None if row.get(metric) is None else round(float(row[metric]), 4),
        "images": list(images),
    }
    return new
