"""A small U-Net that turns a normalised bright-field image into a worm-foreground probability.

Why it exists: the binary-input model (the paper's protocol, sec. 4.2) separates worms far better
than one trained on raw bright-field (held-out fold 0: AP 0.70 vs 0.41), because the binary
image already says which pixels are worm and the network only has to split them. Bright-field
users do not have that mask; this network makes it (``core.cascade`` runs the two in a row). Telling
worm from well, debris and shadow is a local, semantic task that a small fully convolutional
network learns in minutes on a CPU, unlike instance separation.

Shape contract: (B, 1, H, W) float32 in [0, 1] (``normalise(.., "brightfield")``) → (B, 1, H, W)
logits; any H, W (the input is reflect-padded to a multiple of ``2**depth`` and the output
cropped back).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from napari_semiconv.core.model.config import FOREGROUND_THRESHOLD

__all__ = [
    "FOREGROUND_THRESHOLD",
    "ForegroundConfig",
    "ForegroundNet",
    "build_foreground_net",
    "foreground_loss",
    "foreground_stage",
]


@dataclass(frozen=True)
class ForegroundConfig:
    """Architecture of the U-Net, stored in a checkpoint beside its weights.

    Attributes:
        width: channels of the first level; each level below doubles them.
        depth: number of 2× poolings (receptive field grows with it: depth 4 sees ~100 px,
            a worm's length, which is what tells a worm from a dark stretch of the well's rim).
        max_width: cap on a level's channels; keeps the deep levels (and the file) small, since
            the bundled cascade must stay under 30 MB beside the detector.
    """

    width: int = 8
    depth: int = 4
    max_width: int = 64

    def __post_init__(self) -> None:
        for name in ("width", "depth", "max_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"foreground net {name} must be a positive integer, got {value!r}")
        if self.depth > 6:
            raise ValueError(f"foreground net depth must be at most 6, got {self.depth}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> ForegroundConfig:
        """Rebuild from ``to_dict``'s output; unknown keys mean a newer file."""
        if not isinstance(d, dict):
            raise TypeError(f"a foreground net config must be a dict, got {type(d).__name__}")
        unknown = sorted(set(d) - {"width", "depth", "max_width"})
        if unknown:
            raise ValueError(
                f"unknown foreground net config keys {unknown}: the file was probably written "
                "by a newer napari-semiconv; upgrade it"
            )
        return cls(**d)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3×3 conv → BatchNorm → ReLU (the U-Net's unit)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ForegroundNet(nn.Module):
    """U-Net: ``depth`` poolings, channel widths ``width · 2**level``, bilinear upsampling."""

    def __init__(self, config: ForegroundConfig) -> None:
        super().__init__()
        self.config = config
        widths = [
            min(config.width * 2**level, max(config.max_width, config.width))
            for level in range(config.depth + 1)
        ]
        pairs = zip(widths[:-1], widths[1:], strict=True)
        self.down = nn.ModuleList([_block(1, widths[0])] + [_block(a, b) for a, b in pairs])
        self.up = nn.ModuleList(
            [_block(widths[i] + widths[i + 1], widths[i]) for i in range(config.depth)]
        )
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) normalised image → (B, 1, H, W) foreground logits."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected a (B, 1, H, W) image batch, got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        step = 2**self.config.depth
        pad_h, pad_w = -height % step, -width % step
        if pad_h or pad_w:
            # reflect needs pad < size; replicate covers images smaller than the padding
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for level in reversed(range(self.config.depth)):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.up[level](torch.cat([skip, x], dim=1))
        return self.head(x)[..., :height, :width]


def build_foreground_net(config: ForegroundConfig | None = None) -> ForegroundNet:
    """A freshly initialised U-Net (the head's bias starts at the prior of ~15 % foreground)."""
    net = ForegroundNet(config or ForegroundConfig())
    with torch.no_grad():
        net.head.bias.fill_(-1.7)  # sigmoid(-1.7) ≈ 0.15: BBBC010's worms cover ~5-20 %
    return net


def foreground_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice (1 - 2|P∩T| / (|P| + |T|)) over the whole batch.

    Dice keeps the thin worm ends, a few per cent of the pixels, from being traded for the easy
    background. ``logits`` and ``target`` have the same shape; computed in float32.
    """
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = 1.0 - (2.0 * (prob * target).sum() + 1.0) / (prob.sum() + target.sum() + 1.0)
    return bce + dice


def foreground_stage(
    net: ForegroundNet, images: list[torch.Tensor], threshold: float = FOREGROUND_THRESHOLD
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(1, H, W) bright-field images → ((1, H, W) logits, (1, H, W) binary maps), per image.

    The binary map (1.0 where the probability exceeds ``threshold``) is what the
    detector of a cascade sees; it carries no gradient (the detector is not trained through the
    threshold; the U-Net learns from its own loss). Equal-sized images go through in one batch.
    """
    if len({tuple(img.shape) for img in images}) == 1:
        logits = list(net(torch.stack(images)))
    else:
        logits = [net(img[None])[0] for img in images]
    cut = math.log(threshold / (1.0 - threshold))  # logit of the threshold
    binary = [(lg.detach() > cut).to(img.dtype) for lg, img in zip(logits, images, strict=True)]
    return logits, binary
