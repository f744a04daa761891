"""The semi-convolutional embedding head of sec. 3.5 and the dense tensors built from it.

Units (one convention for the whole model):

- û and Φ are in *embedding units* of ``unit`` input pixels, where "input" is the image after
  torchvision's resize (``GeneralizedRCNNTransform``). With ``unit = 16`` a worm's half length
  (~75 px) is ~5 units, so the head's outputs stay O(1) at initialisation and during training.
- The dense Φ lives on the finest FPN level, '0', stride 4: cell (i, j) sits at input pixel
  (4i, 4j), so û there is (4i/unit, 4j/unit, 0, ..., 0) (eq. 6). Any constant offset between
  conventions cancels in ‖Ψ_u − Ψ_v‖.
- σ of the Laplacian kernel (eq. 10) is in embedding units too.
- The ``displacement`` a model returns is Φ[:2] in *pixels of the original image* (rows, cols):
  ``unit`` times Φ, rescaled by the inverse of the transform's resize (:func:`displacement_map`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_semiconv.core.operators import embedding_loss, pixel_coordinates

#: Stride of the FPN level the dense embedding is computed on ('0', after ResNet's layer1).
EMBED_STRIDE = 4


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient flowing back into ``x`` by ``scale``.

    ``x.detach() + s * (x - x.detach())`` has the value of ``x`` exactly (the bracket is 0) and
    derivative ``s``: sec. 3.5 scales the gradients the embedding head sends into the FPN by 0.1
    because the RPN is sensitive to perturbations of the shared features.
    """
    if scale == 1.0:
        return x
    base = x.detach()
    return base + scale * (x - base)


class EmbeddingHead(nn.Module):
    """1×1 conv (``hidden`` = 256) → ReLU → 3×3 conv → D channels (sec. 3.5).

    The same weights serve any FPN level (the paper shares the head across levels); this model
    applies it to level '0' (stride 4), whose Φ feeds both the dense eq. 5 loss and the RoI
    pooling, because BBBC010 worms are thin (10-25 px) and the finest level resolves them best.
    The output is Φ in embedding units (see the module docstring).
    """

    def __init__(
        self, in_channels: int, embed_dim: int = 8, hidden: int = 256, grad_scale: float = 0.1
    ) -> None:
        super().__init__()
        self.grad_scale = float(grad_scale)
        self.reduce = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.predict = nn.Conv2d(hidden, embed_dim, kernel_size=3, padding=1)
        nn.init.kaiming_normal_(self.reduce.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.reduce.bias)
        # A small last layer starts Φ near 0, so Ψ ≈ û: the kernel K_σ begins as a purely spatial
        # Laplacian around the seed and the network learns the displacement from there.
        nn.init.normal_(self.predict.weight, std=0.01)
        nn.init.zeros_(self.predict.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) FPN features -> (B, D, h, w) Φ in embedding units."""
        x = scale_gradient(features, self.grad_scale)
        return self.predict(self.relu(self.reduce(x)))


def downsample_masks(masks: torch.Tensor, size: tuple[int, int], stride: int) -> torch.Tensor:
    """(N, h, w) instance masks at input resolution -> (N, *size) bool masks on the stride grid.

    The masks are zero-padded to ``size * stride`` (the batch padding of the transform) and a cell
    belongs to an instance when at least half of its ``stride × stride`` pixels do.
    """
    n = masks.shape[0]
    out_h, out_w = size
    if n == 0:
        return torch.zeros(0, out_h, out_w, dtype=torch.bool, device=masks.device)
    m = masks[:, : out_h * stride, : out_w * stride].float()
    m = F.pad(m, (0, out_w * stride - m.shape[-1], 0, out_h * stride - m.shape[-2]))
    return F.avg_pool2d(m[:, None], stride)[:, 0] >= 0.5


def dense_embedding_loss(
    phi: torch.Tensor, masks: list[torch.Tensor], unit: float, stride: int = EMBED_STRIDE
) -> torch.Tensor:
    """Eq. 5 on the dense Ψ = Φ + û of each image, averaged over images.

    Args:
        phi: (B, D, h, w) head output (embedding units) on the stride-``stride`` grid.
        masks: B stacks of (N, H, W) ground-truth masks at the transformed (resized) resolution.
        unit: input pixels per embedding unit.

    The per-image loss is the *mean* over instances of eq. 5's per-instance term (the paper sums):
    with 1-30 worms per image a sum would weigh crowded images up to 30 times more and dwarf the
    Mask R-CNN losses, which are means. Overlap pixels are excluded (eq. 5 has no target there);
    instances that vanish on the stride grid are skipped.
    """
    b, d, h, w = phi.shape
    # float32: the norms of eq. 5 are imprecise in bf16/fp16 under autocast
    phi = phi.float()
    coords = pixel_coordinates(h, w, d, device=phi.device, dtype=phi.dtype, scale=stride / unit)
    grid_masks = [downsample_masks(m, (h, w), stride) for m in masks]
    return embedding_loss(phi + coords, grid_masks, reduction="mean", allow_empty=True)


def displacement_map(
    phi: torch.Tensor,
    resized_size: tuple[int, int],
    original_size: tuple[int, int],
    unit: float,
    stride: int = EMBED_STRIDE,
) -> torch.Tensor:
    """Φ's first two dims as a (2, H0, W0) float32 field in pixels of the original image.

    Args:
        phi: (D, h, w) head output for one image, on the padded batch grid of stride ``stride``.
        resized_size: (h_r, w_r) of the image after the transform's resize (before padding).
        original_size: (H0, W0) of the image the caller passed in.
        unit: input pixels per embedding unit.

    Channel 0 is the row displacement, channel 1 the column displacement: pixel u is moved to
    u + displacement[:, u], the point its instance votes for (eq. 4).
    """
    h_r, w_r = resized_size
    h0, w0 = original_size
    field = phi[:2].float()[None] * unit  # pixels of the resized input
    h, w = field.shape[-2:]
    field = F.interpolate(
        field, size=(h * stride, w * stride), mode="bilinear", align_corners=False
    )
    field = field[..., :h_r, :w_r]
    if (h_r, w_r) != (h0, w0):
        field = F.interpolate(field, size=(h0, w0), mode="bilinear", align_corners=False)
        ratio = torch.tensor([h0 / h_r, w0 / w_r], dtype=field.dtype, device=field.device)
        field = field * ratio[None, :, None, None]
    return field[0].contiguous()
