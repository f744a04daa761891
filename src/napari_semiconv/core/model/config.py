"""The architecture of a semi-convolutional Mask R-CNN, as a plain, serialisable record.

A `ModelConfig` is everything `build_model` needs to rebuild the same network; a checkpoint stores
it (via `to_dict`) beside the weights, so `from_dict` must reject anything it cannot rebuild.

Defaults are sized for BBBC010 (696×520 images, worms ~10-25 px wide and up to ~150 px long) and
for a bundled resnet18 file of at most 30 MB at fp16: the FPN, box head and mask head are slimmer
than torchvision's 256/1024/256 (set ``fpn_channels=256, box_head_width=1024, mask_head_width=256``
for torchvision's widths).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
INPUT_MODES = ("binary", "brightfield")
NORMS = ("batch", "group")
#: A new U-Net's cut: a pixel is worm where its probability exceeds this (the detector's binary
#: input). A cascade keeps its own in ``ModelConfig.foreground_threshold`` (worms-brightfield:
#: 0.6, chosen on its training wells, since its U-Net's edges run a little wide at 0.5).
FOREGROUND_THRESHOLD = 0.5


def detector_input_mode(config: dict[str, Any]) -> str:
    """The input mode a config dict's detector sees: "binary" behind a foreground U-Net (a
    bright-field cascade), else the config's input mode."""
    return "binary" if config.get("foreground_width") else str(config.get("input_mode", ""))


def postprocess_kind(config: dict[str, Any]) -> str:
    """Which post-processing defaults a config dict's model gets (``core.refine``): "cascade"
    for a bright-field cascade (its detector sees the U-Net's map), else its input mode."""
    return "cascade" if config.get("foreground_width") else detector_input_mode(config)


@dataclass
class ModelConfig:
    """Architecture of the network (see docs/architecture.md for the contract).

    Attributes beyond the contract's first ten:
        trainable_layers: ResNet stages left trainable, 0-5 (5 = all, the default: from scratch).
        zero_init_residual: start each residual block as the identity (its last norm's weight 0),
            which keeps a deep from-scratch ResNet's activations O(1) at initialisation.
        fpn_channels: FPN width (torchvision: 256).
        box_head_width: width of the two-layer box MLP (torchvision: 1024).
        mask_head_width: width of the four 3×3 convs of the mask head (torchvision: 256).
        embed_hidden: channels of the embedding head's 1×1 conv (paper sec. 3.5: 256).
        embed_unit_px: input pixels (after the transform's resize) per embedding unit. The network
            predicts Φ in these units so its outputs stay O(1); Ψ = Φ + û/unit (eq. 6) and σ
            (eq. 10) are in the same units. ``displacement`` outputs are converted back to pixels.
        anchor_sizes: one anchor size (pixels) per FPN level '0', '1', '2', '3', 'pool'.
        aspect_ratios: anchor aspect ratios (height/width), the same on every level; worms lying
            along an axis make boxes up to ~1:8.
        image_mean, image_std: the single input channel is normalised as (x - mean) / std.
        box_score_thresh, box_nms_thresh: detection post-processing (torchvision's defaults).
        embedding_loss_weight, kernel_loss_weight: weights of "loss_embedding" (eq. 5) and
            "loss_kernel" (BCE between K_σ and the RoI mask) in the total.
        foreground_width: 0, or the first-level width of a foreground U-Net
            (``core.model.foreground``) run before the detector: the bright-field cascade. The
            U-Net turns the bright-field image into a worm-foreground map and the detector sees
            that map as a binary input (the paper's protocol). Needs ``input_mode="brightfield"``.
        foreground_depth, foreground_max_width: the U-Net's depth and channel cap.
        foreground_threshold: a pixel is worm where the U-Net's probability exceeds this, both
            for the detector's binary input and for the clean-up's foreground. A property of
            the U-Net's weights (how its loss placed the edges), so it travels with them in the
            checkpoint: worms-brightfield's was chosen on its training wells (0.6).
    """

    backbone: str = "resnet18"
    semiconv: bool = True
    embed_dim: int = 8
    norm: str = "batch"
    input_mode: str = "binary"
    min_size: int = 520
    max_size: int = 704
    fpn_grad_scale: float = 0.1
    init_sigma: float = 2.0
    detections_per_img: int = 100
    trainable_layers: int = 5
    zero_init_residual: bool = True
    fpn_channels: int = 128
    box_head_width: int = 256
    mask_head_width: int = 128
    embed_hidden: int = 256
    embed_unit_px: float = 16.0
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    aspect_ratios: tuple[float, ...] = field(default=(0.25, 0.5, 1.0, 2.0, 4.0))
    image_mean: float = 0.5
    image_std: float = 0.5
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    embedding_loss_weight: float = 1.0
    kernel_loss_weight: float = 1.0
    foreground_width: int = 0
    foreground_depth: int = 4
    foreground_max_width: int = 64
    foreground_threshold: float = FOREGROUND_THRESHOLD

    @property
    def detector_input_mode(self) -> str:
        """What the detector itself sees: "binary" behind a foreground U-Net, else input_mode."""
        return detector_input_mode(self.to_dict())

    @property
    def postprocess_kind(self) -> str:
        """ "cascade", "binary" or "brightfield": whose post-processing defaults apply."""
        return postprocess_kind(self.to_dict())

    def __post_init__(self) -> None:
        self.anchor_sizes = tuple(int(s) for s in self.anchor_sizes)
        self.aspect_ratios = tuple(float(r) for r in self.aspect_ratios)
        self._validate()

    def _validate(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {BACKBONES}")
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"unknown input_mode {self.input_mode!r}; choose one of {INPUT_MODES}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {NORMS}")
        for name in ("semiconv", "zero_init_residual"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.embed_dim < 2:
            raise ValueError(
                f"embed_dim must be >= 2 (the first two dims are the displacement), "
                f"got {self.embed_dim}"
            )
        for name in ("min_size", "max_size", "detections_per_img", "fpn_channels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("box_head_width", "mask_head_width", "embed_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0 <= self.trainable_layers <= 5:
            raise ValueError(f"trainable_layers must be in 0..5, got {self.trainable_layers}")
        if not 0.0 <= self.fpn_grad_scale <= 1.0:
            raise ValueError(f"fpn_grad_scale must be in [0, 1], got {self.fpn_grad_scale}")
        for name in ("init_sigma", "embed_unit_px", "image_std"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if len(self.anchor_sizes) != 5 or min(self.anchor_sizes) < 1:
            raise ValueError(
                "anchor_sizes needs one positive size per FPN level (5: '0'-'3', 'pool'), "
                f"got {self.anchor_sizes}"
            )
        if not self.aspect_ratios or min(self.aspect_ratios) <= 0:
            raise ValueError(f"aspect_ratios must be positive, got {self.aspect_ratios}")
        if self.embedding_loss_weight < 0 or self.kernel_loss_weight < 0:
            raise ValueError("loss weights must be >= 0")
        if self.foreground_width < 0:
            raise ValueError(f"foreground_width must be >= 0, got {self.foreground_width}")
        threshold = self.foreground_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"foreground_threshold must be a number, got {threshold!r}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"foreground_threshold must be in (0, 1), got {threshold}")
        if self.foreground_width and self.input_mode != "brightfield":
            raise ValueError(
                "a foreground U-Net (foreground_width > 0) makes a binary map from bright-field "
                f"input; it needs input_mode='brightfield', got {self.input_mode!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of str/int/float/bool/list (JSON- and weights_only-safe)."""
        d = dataclasses.asdict(self)
        d["anchor_sizes"] = list(self.anchor_sizes)
        d["aspect_ratios"] = list(self.aspect_ratios)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Rebuild a config; missing keys take their defaults (older files).

        Raises:
            TypeError: ``d`` is not a dict.
            ValueError: unknown keys (a file from a newer version) or invalid values.
        """
        if not isinstance(d, dict):
            raise TypeError(f"a model config must be a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown model config keys {unknown}: the file was probably written by a newer "
                "napari-semiconv; upgrade it"
            )
        return cls(**d)


# how a message names the type a setting's text must have
_NAMES = {int: "integer", float: "number"}


def setting_names() -> list[str]:
    """The names of a ModelConfig's settings, sorted (what ``KEY=VALUE`` options may set)."""
    return sorted(f.name for f in dataclasses.fields(ModelConfig))


def setting_from_text(key: str, text: str) -> Any:
    """The value of setting ``key`` written as ``text`` (a command line's ``KEY=VALUE``), of
    the setting's type: ``256``, ``0.1``, ``true``, ``group``, ``16,32,64,128,256``.

    Only the type is checked here; ``ModelConfig`` checks the range.

    Raises:
        ValueError: ``key`` is no setting, or ``text`` is not of its type (the message says
            which type was expected, for the caller to prefix with where ``text`` came from).
    """
    if key not in setting_names():
        raise ValueError(f"no such model setting; valid keys: {', '.join(setting_names())}")
    kind = typing.get_type_hints(ModelConfig)[key]
    text = text.strip()
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() == "true"
    if kind in (int, float):
        return _number(text, kind)
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        # a JSON list or plain commas: "[16, 32]" and "16,32" alike
        parts = [p for p in text.strip("[]()").split(",") if p.strip()]
        if not parts:
            raise ValueError(f"expected {_NAMES[item]}s separated by commas, got {text!r}")
        return tuple(_number(p.strip(), item, plural=True) for p in parts)
    try:  # a string, quoted or bare: "group" and group alike
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, str) else text


def _number(text: str, kind: type, plural: bool = False) -> int | float:
    try:
        return kind(text)
    except ValueError:
        article = "" if plural else ("an " if kind is int else "a ")
        expected = f"{_NAMES[kind]}s separated by commas" if plural else _NAMES[kind]
        raise ValueError(f"expected {article}{expected}, got {text!r}") from None
