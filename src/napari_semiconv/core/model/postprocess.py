"""Mask R-CNN's inference post-processing without a Python loop over detections.

torchvision pastes each detection's 28×28 mask into the image one at a time
(``paste_masks_in_image``: an interpolation, an allocation and a copy per detection). On a GPU
those are a few kernel launches each, and with tens of worms per image they cost more than the
network. Bilinear resizing is separable, so the paste of all N masks is two batched matrix
products: ``Ry[n] @ mask[n] @ Rx[n]ᵀ``, with ``Ry`` (N, H, M) and ``Rx`` (N, W, M) the
interpolation weights of each image row / column, zero outside the detection's box.

The weights follow torchvision's paste exactly: the mask padded by one pixel on every side, its
box scaled by (M + 2)/M about the centre and truncated to whole pixels, the mask resized to the
box's (h, w) = (y1 − y0 + 1, x1 − x0 + 1) with ``F.interpolate(mode="bilinear",
align_corners=False)`` and pasted with its top-left corner at (y0, x0), clipped to the image. The
tests compare the result with torchvision's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection.transform import resize_boxes

__all__ = ["paste_masks", "postprocess_detections"]


def _resize_weights(start: torch.Tensor, length: torch.Tensor, source: int, extent: int):
    """(N, extent, source) weights: image pixel i of detection n from mask pixels 0..source-1.

    Pixel i lies in the box when start ≤ i < start + length; there it samples the mask at
    (i − start + ½)·source/length − ½ (align_corners=False), clamped at 0 like F.interpolate.
    """
    dtype, device = torch.float32, start.device
    i = torch.arange(extent, device=device)[None, :]
    inside = (i >= start[:, None]) & (i < (start + length)[:, None])
    scale = source / length.to(dtype)
    pos = ((i - start[:, None]).to(dtype) + 0.5) * scale[:, None] - 0.5
    pos = pos.clamp(min=0.0)
    low = pos.floor().long().clamp(max=source - 1)
    high = (low + 1).clamp(max=source - 1)
    frac = pos - low.to(dtype)
    weights = torch.zeros((start.shape[0], extent, source), dtype=dtype, device=device)
    mask = inside.to(dtype)
    weights.scatter_add_(2, low[..., None], ((1.0 - frac) * mask)[..., None])
    weights.scatter_add_(2, high[..., None], (frac * mask)[..., None])
    return weights


def paste_masks(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """Paste (N, 1, M, M) mask probabilities into (N, 1, H, W) images at their xyxy boxes.

    The same values as ``torchvision.models.detection.roi_heads.paste_masks_in_image`` (to float
    rounding), computed for all detections at once.
    """
    height, width = int(image_size[0]), int(image_size[1])
    n = masks.shape[0]
    if n == 0:
        return masks.new_zeros((0, 1, height, width))
    m = masks.shape[-1]
    padded = F.pad(masks[:, 0].float(), (1, 1, 1, 1))
    scale = (m + 2) / m
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    # whole pixels, truncated towards zero as torchvision's .to(torch.int64) does
    x0, x1 = (x_c - half_w).to(torch.int64), (x_c + half_w).to(torch.int64)
    y0, y1 = (y_c - half_h).to(torch.int64), (y_c + half_h).to(torch.int64)
    w = (x1 - x0 + 1).clamp(min=1)
    h = (y1 - y0 + 1).clamp(min=1)
    rows = _resize_weights(y0, h, m + 2, height)  # (N, H, M+2)
    cols = _resize_weights(x0, w, m + 2, width)  # (N, W, M+2)
    pasted = torch.bmm(torch.bmm(rows, padded), cols.transpose(1, 2))
    return pasted[:, None].to(masks.dtype)


def postprocess_detections(
    detections: list[dict[str, torch.Tensor]],
    image_sizes: list[tuple[int, int]],
    original_sizes: list[tuple[int, int]],
) -> list[dict[str, torch.Tensor]]:
    """``GeneralizedRCNNTransform.postprocess`` for boxes and masks, with the batched paste."""
    for det, size, original in zip(detections, image_sizes, original_sizes, strict=True):
        det["boxes"] = resize_boxes(det["boxes"], size, original)
        if "masks" in det:
            det["masks"] = paste_masks(det["masks"], det["boxes"], original)
    return detections
