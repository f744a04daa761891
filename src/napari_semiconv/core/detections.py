"""From the detector's outputs for one tile to :class:`~napari_semiconv.core.tiling.Candidate`
crops in image coordinates, which ``core.tiling`` merges across tiles.

The network pastes every mask at the full tile size; what is kept of each detection is its box
where the probability is not 0 (the pasted RoI): the thresholded mask and, when touching worms
will be divided (``core.divide``), the uint8 probability.
"""

from __future__ import annotations

import torch

from napari_semiconv.core.refine import mask_boxes
from napari_semiconv.core.tiling import Candidate, Tile

__all__ = ["collect_candidates"]


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
