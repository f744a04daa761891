"""Instance segmentation scores: COCO mask AP (the semi-conv paper's table) and PatchPerPix S/avS.

COCO mask AP (pycocotools): every instance is run-length encoded on its own
(``pycocotools.mask.encode``), so overlapping worms are kept on both sides; one category,
``iscrowd = 0``, areas = mask pixel counts. AP is the mean precision over IoU 0.50:0.05:0.95 and
101 recall points, AP50/AP75 at one IoU, APs/APm/APl for areas < 32², 32²–96², > 96² pixels. COCO
counts at most 100 detections per image (the highest scored); here the cap is raised to the largest
number of predictions in one image, so a dense plate's 150 correct worms score AP 1, not 0.66
(the same figures as COCO's wherever no image has more than 100). Where pycocotools reports −1
("no objects of that kind", e.g. APs when no worm is small) the summary holds ``None``.

PatchPerPix S (Hirsch et al., ECCV 2020, the BBBC010 benchmark's other anchor): per image,
predictions and truths are matched one-to-one and S(t) = TP / (TP + FP + FN), where a matched pair
counts as a true positive if its IoU >= t; S is averaged over images, and avS is the mean of S over
t = 0.5, 0.6, 0.7, 0.8, 0.9. The matching is the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``) on the IoU of the pairs eligible at t, with the number
of matches put first (weight = big constant + IoU), so no assignment with fewer true positives
can win by total IoU. An image with neither truths nor predictions scores S = 1 (nothing to find,
nothing found); with truths but no predictions, S = 0.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.optimize import linear_sum_assignment

__all__ = ["S_THRESHOLDS", "EvalResult", "evaluate", "iou_matrix", "match_score"]

S_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
_S_KEYS = tuple(f"S{round(t * 100)}" for t in S_THRESHOLDS)
_AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class EvalResult:
    """Scores of a set of images.

    ``summary``: AP AP50 AP75 APs APm APl (COCO mask AP; None where pycocotools gives −1) avS S50
    S60 S70 S80 S90 (PatchPerPix, averaged over images) n_images.
    ``per_image``: one dict per image: name, n_true, n_pred, S50..S90, avS, AP (COCO AP of that
    image alone; None when it has no truths).
    """

    summary: dict = field(default_factory=dict)
    per_image: list[dict] = field(default_factory=list)

    def format(self) -> str:
        """A short human-readable table of the summary."""
        parts = []
        for key in (*_AP_KEYS, "avS", *_S_KEYS):
            value = self.summary.get(key)
            parts.append(f"{key} {'n/a' if value is None else f'{value:.3f}'}")
        return f"{self.summary.get('n_images', 0)} images: " + ", ".join(parts)


def _check_masks(masks: np.ndarray, what: str) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"{what} must be an (N, H, W) mask stack, got shape {masks.shape}")
    if masks.dtype == bool:
        return masks
    if np.issubdtype(masks.dtype, np.floating):
        raise TypeError(f"{what} must be boolean masks, got {masks.dtype}; threshold them first")
    return masks != 0


def iou_matrix(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(N, M) IoU between N predicted and M true (…, H, W) boolean masks, as matrix products.

    Masks are flattened to rows and only the pixels covered by some mask are kept as columns
    (worms cover a few % of a frame), so the intersection counts are one small matrix product.
    """
    n, m = pred.shape[0], true.shape[0]
    if n == 0 or m == 0:
        return np.zeros((n, m), dtype=np.float64)
    p = pred.reshape(n, -1)
    t = true.reshape(m, -1)
    columns = np.flatnonzero(p.any(axis=0) | t.any(axis=0))
    # Integer counts: exact, and numpy's integer matmul does not go through a multi-threaded
    # BLAS, whose threads stall badly on a busy machine (measured: 0.003 s idle vs 1 s loaded).
    dtype = np.int32 if columns.size < 2**31 else np.int64
    p = p[:, columns].astype(dtype)
    t = t[:, columns].astype(dtype)
    inter = (p @ t.T).astype(np.float64)
    union = p.sum(1, dtype=np.float64)[:, None] + t.sum(1, dtype=np.float64)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_score(iou: np.ndarray, threshold: float) -> float:
    """PatchPerPix S = TP / (TP + FP + FN) for an (N pred, M true) IoU matrix at one threshold."""
    n, m = iou.shape
    if n + m == 0:
        return 1.0
    tp = 0
    eligible = iou >= threshold
    if eligible.any():
        # Count first, IoU second: any extra match outweighs any IoU gain (IoU <= 1).
        weight = np.where(eligible, (min(n, m) + 1.0) + iou, 0.0)
        rows, cols = linear_sum_assignment(weight, maximize=True)
        tp = int(eligible[rows, cols].sum())
    return tp / (n + m - tp)


def _coco_dataset(
    stacks: Sequence[np.ndarray], shapes: Sequence[tuple[int, int]], scores=None
) -> COCO:
    """An in-memory COCO object: one image per stack, one RLE annotation per mask."""
    images = [{"id": i + 1, "height": h, "width": w} for i, (h, w) in enumerate(shapes)]
    annotations = []
    for i, masks in enumerate(stacks):
        if masks.shape[0] == 0:
            continue
        rles = mask_utils.encode(np.asfortranarray(masks.view(np.uint8).transpose(1, 2, 0)))
        areas = masks.reshape(masks.shape[0], -1).sum(1)
        boxes = mask_utils.toBbox(rles)
        for k, rle in enumerate(rles):
            ann = {
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": 1,
                "segmentation": rle,
                "area": float(areas[k]),
                "bbox": [float(v) for v in boxes[k]],
                "iscrowd": 0,
            }
            if scores is not None:
                ann["score"] = float(scores[i][k])
            annotations.append(ann)
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _ap_from_precision(
    precision: np.ndarray, iou: int | None = None, area: int = 0
) -> float | None:
    """COCO's AP formula (summarize(): the mean of the defined precisions) at the largest cap.

    ``precision`` is ``accumulate()``'s [IoU, recall, category, area range, cap] array; ``iou``
    picks one IoU threshold (None: all ten), ``area`` the range (0 all, 1 small, 2 medium, 3 large).
    Computed here rather than by ``summarize()``, whose AP (unlike its AP50...) reads the cap 100
    whatever ``params.maxDets`` says.
    """
    values = precision[:, :, :, area, -1] if iou is None else precision[iou, :, :, area, -1]
    values = values[values > -1]
    return float(values.mean()) if values.size else None


def _single_image_ap(ev: COCOeval, index: int) -> float | None:
    """COCO AP of image ``index`` alone, reusing the per-image matching of ``ev.evaluate()``.

    ``accumulate(p)`` with a subset of image ids would pick entries by position in the subset
    rather than in the evaluated list, so instead a shallow copy of the evaluator is given only
    that image's entries (``evalImgs`` is ordered category, area range, image).
    """
    sub = copy.copy(ev)
    sub._paramsEval = copy.deepcopy(ev._paramsEval)
    n_img = len(ev._paramsEval.imgIds)
    n_area = len(ev._paramsEval.areaRng)
    n_cat = len(ev._paramsEval.catIds) if ev._paramsEval.useCats else 1
    sub._paramsEval.imgIds = [ev._paramsEval.imgIds[index]]
    sub.evalImgs = [
        ev.evalImgs[k * n_area * n_img + a * n_img + index]
        for k in range(n_cat)
        for a in range(n_area)
    ]
    sub.params = copy.deepcopy(sub._paramsEval)
    sub.accumulate()
    return _ap_from_precision(sub.eval["precision"])


def _coco_ap(pred_stacks, pred_scores, true_stacks, shapes, per_image: bool):
    gt = _coco_dataset(true_stacks, shapes)
    dt = _coco_dataset(pred_stacks, shapes, pred_scores)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, dt, iouType="segm")
        # COCO caps detections per image at 100; never fewer here than an image's predictions
        most = max((len(scores) for scores in pred_scores), default=0)
        ev.params.maxDets = [1, 10, max(100, most)]
        ev.evaluate()
        ev.accumulate()
        precision = ev.eval["precision"]
        iou = [float(t) for t in np.round(ev.params.iouThrs, 2)]
        where = {"AP": (None, 0), "AP50": (iou.index(0.5), 0), "AP75": (iou.index(0.75), 0)}
        where.update({"APs": (None, 1), "APm": (None, 2), "APl": (None, 3)})
        summary = {k: _ap_from_precision(precision, *where[k]) for k in _AP_KEYS}
        image_ap: list[float | None] = []
        if per_image:
            image_ap = [_single_image_ap(ev, i) for i in range(len(shapes))]
    return summary, image_ap


def evaluate(
    predictions: Sequence[tuple[np.ndarray, np.ndarray]],
    truths: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    per_image_ap: bool = True,
) -> EvalResult:
    """Score predicted instances against ground truth (see the module docstring).

    Args:
        predictions: per image, (masks (N, H, W) bool, scores (N,)) or an object with ``.masks``
            and ``.scores`` (``Instances``); N may be 0.
        truths: per image, masks (M, H, W) bool; overlaps allowed.
        names: per image names for ``per_image`` (default ``image_0``, ``image_1``, ...).
        per_image_ap: also compute each image's own COCO AP (one extra accumulate per image).

    Raises:
        ValueError: empty lists, mismatched lengths or shapes, or no true instance in any image
            (AP is undefined then; check that the ground truth was read from the right place).
    """
    if len(predictions) == 0 or len(truths) == 0:
        raise ValueError("nothing to evaluate: predictions and truths must each list >= 1 image")
    if len(predictions) != len(truths):
        raise ValueError(
            f"got predictions for {len(predictions)} image(s) but truths for {len(truths)}; "
            "give one (masks, scores) pair per ground-truth image, in the same order"
        )
    if names is None:
        names = [f"image_{i}" for i in range(len(truths))]
    elif len(names) != len(truths):
        raise ValueError(f"got {len(names)} names for {len(truths)} images")

    pred_stacks, pred_scores, true_stacks, shapes = [], [], [], []
    for i, (pred, true) in enumerate(zip(predictions, truths, strict=True)):
        if hasattr(pred, "masks") and hasattr(pred, "scores"):  # an Instances record
            masks, scores = pred.masks, pred.scores
        elif isinstance(pred, tuple | list) and len(pred) == 2:
            masks, scores = pred
        else:
            raise TypeError(
                f"prediction {i} ({names[i]}) must be a (masks, scores) pair or have "
                f".masks and .scores, got {type(pred).__name__}"
            )
        true = _check_masks(true, f"truth {i} ({names[i]})")
        masks = np.asarray(masks)
        if masks.size == 0:
            masks = np.zeros((0, *true.shape[1:]), dtype=bool)
        masks = _check_masks(masks, f"prediction {i} ({names[i]})")
        if masks.shape[1:] != true.shape[1:]:
            raise ValueError(
                f"image {i} ({names[i]}): predicted masks are {masks.shape[1:]} but the truth is "
                f"{true.shape[1:]}; predictions must be at the ground truth's size"
            )
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != masks.shape[0]:
            raise ValueError(
                f"image {i} ({names[i]}): {masks.shape[0]} predicted masks "
                f"but {scores.shape[0]} scores"
            )
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"image {i} ({names[i]}): scores contain NaN or inf")
        pred_stacks.append(masks)
        pred_scores.append(scores)
        true_stacks.append(true)
        shapes.append(tuple(int(s) for s in true.shape[1:]))
    if sum(t.shape[0] for t in true_stacks) == 0:
        raise ValueError(
            "no ground-truth instance in any image, so AP is undefined; "
            "check that the ground truth was read from the right place"
        )

    summary, image_ap = _coco_ap(pred_stacks, pred_scores, true_stacks, shapes, per_image_ap)

    per_image = []
    for i in range(len(true_stacks)):
        iou = iou_matrix(pred_stacks[i], true_stacks[i])
        s_values = [match_score(iou, t) for t in S_THRESHOLDS]
        row = {
            "name": str(names[i]),
            "n_true": int(true_stacks[i].shape[0]),
            "n_pred": int(pred_stacks[i].shape[0]),
            **dict(zip(_S_KEYS, s_values, strict=True)),
            "avS": float(np.mean(s_values)),
        }
        if per_image_ap:
            row["AP"] = image_ap[i]
        per_image.append(row)

    for key in (*_S_KEYS, "avS"):
        summary[key] = float(np.mean([row[key] for row in per_image]))
    summary["n_images"] = len(per_image)
    order = (*_AP_KEYS, "avS", *_S_KEYS, "n_images")
    return EvalResult(summary={k: summary[k] for k in order}, per_image=per_image)
