"""RoIAlign whose backward pass is fast on the CPU: one sparse matrix product each way.

Why: torchvision's CPU ``roi_align`` backward scatters every sampling point's gradient in a
single thread; in a CPU training step of this project's ResNet-18 Mask R-CNN (batch 8, 256-px
crops) it took a third of the time (``benchmarks/roi_align_cpu.py``). Users fine-tune on laptop
CPUs, so that third matters.

How: RoIAlign is linear in the feature map. Every output bin is a fixed weighted sum of feature
pixels (``sampling_ratio``² points per bin, four bilinear corners each), so the whole op is
``out = M @ F`` with ``F`` the (N·H·W, C) channels-last features and ``M`` a sparse matrix with
at most 4·s² non-zeros per row. The backward is ``Mᵀ @ grad``, which torch's sparse kernels run
in parallel. ``M`` follows torchvision's sampling rules exactly (Mask R-CNN's ``aligned=False``
and the ``aligned=True`` half-pixel variant, samples clamped at the borders and zero beyond a
pixel outside), so the results agree with ``torchvision.ops.roi_align`` to float rounding; the
tests compare both values and gradients.

Without a backward to follow (inference), on the GPU, in reduced precision, or with an adaptive
sampling ratio (``sampling_ratio <= 0``) torchvision's kernel runs as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchvision
from torchvision.ops import roi_align as _tv_roi_align
from torchvision.ops.poolers import LevelMapper

__all__ = ["MultiScaleRoIAlign", "roi_align", "roi_align_sparse"]

# Below this many channels torchvision's backward is the faster one (building the sparse matrix
# costs more than the scatter saves: measured on 2 CPU threads, 16 channels break even); the
# embedding's 8-channel Φ takes torchvision's kernel, the FPN's 128-channel levels the sparse one.
SPARSE_MIN_CHANNELS = 24


def _axis_weights(
    start: torch.Tensor, size: torch.Tensor, bins: int, grid: int, extent: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel indices and bilinear weights along one axis: (K, bins, grid, 2) each.

    Sampling point g of bin b of RoI k sits at start + b·size/bins + (g + ½)·size/(bins·grid);
    a point more than one pixel outside the map weighs nothing; points in [-1, 0] clamp to 0 and
    points past the last pixel centre clamp to it (torchvision's bilinear_interpolate).
    """
    dtype, device = start.dtype, start.device
    bin_size = size / bins
    b = torch.arange(bins, device=device, dtype=dtype)[None, :, None]
    g = torch.arange(grid, device=device, dtype=dtype)[None, None, :]
    pos = start[:, None, None] + b * bin_size[:, None, None]
    pos = pos + (g + 0.5) * (bin_size / grid)[:, None, None]
    inside = ((pos >= -1.0) & (pos <= extent)).to(dtype)
    pos = pos.clamp(min=0.0)
    low = pos.floor().long()
    at_edge = low >= extent - 1
    low = torch.where(at_edge, torch.full_like(low, extent - 1), low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(pos), pos - low.to(dtype))
    weights = torch.stack([1.0 - frac, frac], dim=-1) * inside[..., None]
    return torch.stack([low, high], dim=-1), weights


def roi_align_sparse(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool = False,
) -> torch.Tensor:
    """RoIAlign as a sparse-dense product (see the module docstring); torchvision's signature.

    Args:
        features: (N, C, H, W) float32/float64.
        rois: (K, 5) rows of (batch index, x1, y1, x2, y2) in input pixels.
        output_size: (rows, cols) of bins per RoI.
        spatial_scale: feature-map pixels per input pixel.
        sampling_ratio: sampling points per bin along each axis (> 0).
        aligned: shift by half a pixel (``torchvision.ops.roi_align``'s ``aligned``).
    Returns:
        (K, C, rows, cols).
    """
    if sampling_ratio <= 0:
        raise ValueError(f"roi_align_sparse needs a fixed sampling_ratio > 0, got {sampling_ratio}")
    n, c, height, width = features.shape
    bins_y, bins_x = output_size
    k = rois.shape[0]
    rois = rois.to(features.dtype)
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:  # Mask R-CNN's original RoIAlign makes every RoI at least 1×1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    s = int(sampling_ratio)
    y_idx, y_w = _axis_weights(y1, roi_h, bins_y, s, height)
    x_idx, x_w = _axis_weights(x1, roi_w, bins_x, s, width)
    # the bilinear weight is separable: (row weight) × (column weight) for every corner pair
    y_idx, y_w = y_idx.reshape(k, bins_y, 1, 2 * s, 1), y_w.reshape(k, bins_y, 1, 2 * s, 1)
    x_idx, x_w = x_idx.reshape(k, 1, bins_x, 1, 2 * s), x_w.reshape(k, 1, bins_x, 1, 2 * s)
    image = rois[:, 0].long().view(k, 1, 1, 1, 1)
    cols = (image * height + y_idx) * width + x_idx
    values = (y_w * x_w) / float(s * s)
    rows = torch.arange(k * bins_y * bins_x, device=features.device)
    rows = rows.view(k, bins_y, bins_x, 1, 1).expand_as(cols)
    matrix = torch.sparse_coo_tensor(
        torch.stack([rows.reshape(-1), cols.reshape(-1)]),
        values.reshape(-1),
        (k * bins_y * bins_x, n * height * width),
        check_invariants=False,  # indices are in range by construction
    )
    flat = features.permute(0, 2, 3, 1).reshape(n * height * width, c)
    out = torch.sparse.mm(matrix, flat)
    return out.view(k, bins_y, bins_x, c).permute(0, 3, 1, 2)


def _to_rois(boxes: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    if isinstance(boxes, torch.Tensor):
        return boxes
    if not boxes:
        raise ValueError("roi_align needs at least one image's boxes")
    index = torch.cat(
        [torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)]
    )
    return torch.cat([index, torch.cat(list(boxes))], dim=1)


def roi_align(
    features: torch.Tensor,
    boxes: torch.Tensor | list[torch.Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """``torchvision.ops.roi_align``, with the sparse path when a CPU backward will follow.

    Forward-only (inference, or features that need no gradient) and for few channels
    torchvision's kernel is the faster of the two and runs; the results are the same either way.
    Half-precision features (bf16 autocast) are pooled in float32 and cast back, as
    torchvision's autocast wrapper does.
    """
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    rois = _to_rois(boxes)
    if (
        features.device.type == "cpu"
        and features.requires_grad
        and features.shape[1] >= SPARSE_MIN_CHANNELS
        and torch.is_grad_enabled()
        and features.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
        and sampling_ratio > 0
        and not torchvision._is_tracing()
    ):
        if features.dtype in (torch.float32, torch.float64):
            return roi_align_sparse(features, rois, size, spatial_scale, sampling_ratio, aligned)
        with torch.autocast("cpu", enabled=False):
            pooled = roi_align_sparse(
                features.float(), rois.float(), size, spatial_scale, sampling_ratio, aligned
            )
        return pooled.to(features.dtype)
    return _tv_roi_align(features, rois, size, spatial_scale, sampling_ratio, aligned)


class MultiScaleRoIAlign(torchvision.ops.MultiScaleRoIAlign):
    """torchvision's FPN RoI pooler (same levels, same level mapping) over :func:`roi_align`,
    with each level's scale fixed from the backbone's ``strides``.

    Why fixed: torchvision infers the scales from the first batch it sees (feature-map size
    over image size, rounded to a power of two) and keeps them for the model's life. An image
    whose side is far from a multiple of 32 (e.g. a 40-px first image, padded to 64) gives
    every level twice its true scale, and every later image of any size is then pooled from the
    wrong places: one worm found instead of 14 on a whole well.
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int,
        sampling_ratio: int,
        strides: Sequence[int],
    ) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio)
        if len(strides) != len(featmap_names):
            raise ValueError(f"{len(featmap_names)} feature maps but {len(strides)} strides")
        self.scales = [1.0 / s for s in strides]
        self.map_levels = LevelMapper(
            int(math.log2(strides[0])),
            int(math.log2(strides[-1])),
            canonical_scale=self.canonical_scale,
            canonical_level=self.canonical_level,
        )

    def forward(
        self,
        x: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        levels = [x[name] for name in self.featmap_names]
        rois = _to_rois(boxes)
        first = levels[0]
        if len(levels) == 1:
            return roi_align(first, rois, self.output_size, self.scales[0], self.sampling_ratio)
        which = self.map_levels(boxes)
        parts, order = [], []
        for level, (feature, scale) in enumerate(zip(levels, self.scales, strict=True)):
            index = torch.where(which == level)[0]
            pooled = roi_align(feature, rois[index], self.output_size, scale, self.sampling_ratio)
            # autocast may give levels different dtypes: the first level's for all
            parts.append(pooled.to(first.dtype))
            order.append(index)
        # back to the RoIs' order with one gather (writing each level into a zero tensor would
        # copy the whole result, and its gradient, once per level)
        position = torch.empty_like(which, dtype=torch.long)
        position[torch.cat(order)] = torch.arange(rois.shape[0], device=rois.device)
        return torch.cat(parts).index_select(0, position)
