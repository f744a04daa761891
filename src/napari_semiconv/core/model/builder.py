"""Build the semi-convolutional Mask R-CNN (sec. 3.5) from a `ModelConfig`.

The network is torchvision's ``MaskRCNN`` with:

- a ResNet-FPN backbone built from scratch (``weights=None``: nothing is downloaded) with a
  trainable norm (BatchNorm2d or GroupNorm; never FrozenBatchNorm2d, an identity at random
  init) and a one-channel conv1, since the input is a single grey/binary channel;
- anchors sized for worms (``config.anchor_sizes`` per level, elongated aspect ratios);
- :class:`SemiConvRoIHeads` in place of ``RoIHeads`` and, when ``config.semiconv``, the shared
  :class:`EmbeddingHead` on FPN level '0' (stride 4).

``semiconv=False`` gives the plain Mask R-CNN baseline with everything else identical.
``foreground_width > 0`` puts a foreground U-Net (``core.model.foreground``) in front: the
bright-field cascade, whose detector sees the U-Net's binary worm map (the paper's input).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torchvision
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from napari_semiconv.core.model.config import ModelConfig
from napari_semiconv.core.model.embedding import (
    EMBED_STRIDE,
    EmbeddingHead,
    dense_embedding_loss,
    displacement_map,
)
from napari_semiconv.core.model.foreground import (
    ForegroundConfig,
    ForegroundNet,
    build_foreground_net,
    foreground_loss,
    foreground_stage,
)
from napari_semiconv.core.model.postprocess import postprocess_detections
from napari_semiconv.core.model.roi_align import MultiScaleRoIAlign
from napari_semiconv.core.model.roi_heads import SemiConvRoIHeads
from napari_semiconv.core.model.run_modes import active_foreground_threshold

__all__ = ["SemiConvMaskRCNN", "build_model", "load_baseline_weights", "NUM_CLASSES"]

#: Background + worm.
NUM_CLASSES = 2

# torchvision's box-branch defaults, passed both to MaskRCNN and to the replacement RoI heads.
# the FPN levels RoIs are pooled from (stride 4 to 32); 'pool' (stride 64) is for the RPN only
_FPN_LEVELS = ["0", "1", "2", "3"]
_FPN_STRIDES = [4, 8, 16, 32]  # ResNet layer1..layer4 (conv1 and the max pool halve twice)

_BOX_TRAINING = {
    "fg_iou_thresh": 0.5,
    "bg_iou_thresh": 0.5,
    "batch_size_per_image": 512,
    "positive_fraction": 0.25,
    "bbox_reg_weights": None,
}
_RESNET_STAGES = ["layer4", "layer3", "layer2", "layer1", "conv1"]


def _group_norm(num_channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (fewer for narrow layers): batch-size independent."""
    return nn.GroupNorm(min(32, num_channels), num_channels)


def _resnet_fpn(config: ModelConfig) -> BackboneWithFPN:
    norm_layer = nn.BatchNorm2d if config.norm == "batch" else _group_norm
    resnet = getattr(torchvision.models, config.backbone)(
        weights=None, norm_layer=norm_layer, zero_init_residual=config.zero_init_residual
    )
    # one input channel: binary foreground or normalised bright-field intensity
    resnet.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(resnet.conv1.weight, mode="fan_out", nonlinearity="relu")
    trainable = _RESNET_STAGES[: config.trainable_layers]
    if config.trainable_layers == 5:
        trainable.append("bn1")
    for name, param in resnet.named_parameters():
        if not any(name.startswith(stage) for stage in trainable):
            param.requires_grad_(False)
    stage_channels = resnet.inplanes // 8  # layer1's output width: 64 (basic) or 256 (bottleneck)
    return BackboneWithFPN(
        resnet,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[stage_channels * 2**i for i in range(4)],
        out_channels=config.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def _mask_predictor(width: int) -> MaskRCNNPredictor:
    predictor = MaskRCNNPredictor(width, width, NUM_CLASSES)
    # torchvision's Kaiming init of the 1×1 logits conv gives initial mask logits of tens (loss
    # ~5-25 from scratch); a small init (as Detectron2's) starts them near 0 for both models.
    nn.init.normal_(predictor.mask_fcn_logits.weight, std=0.001)
    nn.init.zeros_(predictor.mask_fcn_logits.bias)
    return predictor


class SemiConvMaskRCNN(MaskRCNN):
    """torchvision ``MaskRCNN`` with the semi-convolutional embedding (sec. 3.5).

    Train mode: ``model(images, targets)`` -> dict of losses, torchvision's plus, when
    ``config.semiconv``, "loss_embedding" (eq. 5 on the dense Ψ) and "loss_kernel", and with a
    foreground U-Net "loss_foreground" (against the union of the target masks).
    Eval mode: ``model(images)`` -> one dict per image with torchvision's "boxes", "labels",
    "scores", "masks" (N, 1, H, W) and "displacement" (2, H, W) float32: Φ's rows/cols in pixels
    of the image as passed in (zeros for the baseline, which has no embedding); with a
    foreground U-Net also "foreground" (H, W), its worm probability.

    Images are (1, H, W) float tensors, normalised for ``config.input_mode``.
    """

    def __init__(self, config: ModelConfig) -> None:
        backbone = _resnet_fpn(config)
        channels = backbone.out_channels
        anchors = AnchorGenerator(
            sizes=tuple((s,) for s in config.anchor_sizes),
            aspect_ratios=(config.aspect_ratios,) * len(config.anchor_sizes),
        )
        box_head = TwoMLPHead(channels * 7 * 7, config.box_head_width)
        width = config.mask_head_width
        super().__init__(
            backbone,
            num_classes=None,
            min_size=config.min_size,
            max_size=config.max_size,
            image_mean=[config.image_mean],
            image_std=[config.image_std],
            rpn_anchor_generator=anchors,
            rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
            # torchvision's pooler settings, over the RoIAlign with a fast CPU backward
            box_roi_pool=MultiScaleRoIAlign(_FPN_LEVELS, 7, 2, _FPN_STRIDES),
            box_head=box_head,
            box_predictor=FastRCNNPredictor(config.box_head_width, NUM_CLASSES),
            box_score_thresh=config.box_score_thresh,
            box_nms_thresh=config.box_nms_thresh,
            box_detections_per_img=config.detections_per_img,
            mask_roi_pool=MultiScaleRoIAlign(_FPN_LEVELS, 14, 2, _FPN_STRIDES),
            mask_head=MaskRCNNHeads(channels, [width] * 4, 1),
            mask_predictor=_mask_predictor(width),
            box_fg_iou_thresh=_BOX_TRAINING["fg_iou_thresh"],
            box_bg_iou_thresh=_BOX_TRAINING["bg_iou_thresh"],
            box_batch_size_per_image=_BOX_TRAINING["batch_size_per_image"],
            box_positive_fraction=_BOX_TRAINING["positive_fraction"],
            bbox_reg_weights=_BOX_TRAINING["bbox_reg_weights"],
        )
        # MaskRCNN built torchvision's RoIHeads; hand its modules to the subclass (same settings)
        plain = self.roi_heads
        self.roi_heads = SemiConvRoIHeads(
            plain.box_roi_pool,
            plain.box_head,
            plain.box_predictor,
            _BOX_TRAINING["fg_iou_thresh"],
            _BOX_TRAINING["bg_iou_thresh"],
            _BOX_TRAINING["batch_size_per_image"],
            _BOX_TRAINING["positive_fraction"],
            _BOX_TRAINING["bbox_reg_weights"],
            config.box_score_thresh,
            config.box_nms_thresh,
            config.detections_per_img,
            mask_roi_pool=plain.mask_roi_pool,
            mask_head=plain.mask_head,
            mask_predictor=plain.mask_predictor,
            semiconv=config.semiconv,
            init_sigma=config.init_sigma,
            embed_unit_px=config.embed_unit_px,
            kernel_loss_weight=config.kernel_loss_weight,
        )
        self.embedding_head: EmbeddingHead | None = None
        if config.semiconv:
            self.embedding_head = EmbeddingHead(
                channels, config.embed_dim, config.embed_hidden, config.fpn_grad_scale
            )
        self.foreground: ForegroundNet | None = None
        if config.foreground_width:
            self.foreground = build_foreground_net(
                ForegroundConfig(
                    config.foreground_width, config.foreground_depth, config.foreground_max_width
                )
            )
        self.config = config
        self.card: dict = {}

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        """See the class docstring; the steps are ``GeneralizedRCNN.forward``'s plus Φ."""
        if self.training and targets is None:
            raise ValueError("training mode needs targets; call model.eval() for inference")
        _check_images(images)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        fg_logits = None
        if self.foreground is not None:
            fg_logits, images = foreground_stage(
                self.foreground, list(images), active_foreground_threshold(self.config)
            )
        image_list, targets = self.transform(images, targets)
        if targets is not None:
            _check_boxes(targets)
        features = self.backbone(image_list.tensors)
        phi = None
        if self.embedding_head is not None:
            phi = self.embedding_head(features["0"])
            if image_list.tensors.shape[-1] != phi.shape[-1] * EMBED_STRIDE:
                raise RuntimeError("FPN level '0' is expected at stride 4")
        proposals, proposal_losses = self.rpn(image_list, features, targets)
        detections, detector_losses = self.roi_heads(
            features, proposals, image_list.image_sizes, targets, embedding=phi
        )
        if self.training:
            losses = {**detector_losses, **proposal_losses}
            if phi is not None:
                masks = [t["masks"] for t in targets]
                losses["loss_embedding"] = self.config.embedding_loss_weight * (
                    dense_embedding_loss(phi, masks, self.config.embed_unit_px)
                )
            if fg_logits is not None:
                losses["loss_foreground"] = _foreground_loss(fg_logits, targets, original_sizes)
            return losses
        # torchvision's transform.postprocess, but pasting all masks at once (a loop there)
        detections = postprocess_detections(detections, image_list.image_sizes, original_sizes)
        for i, det in enumerate(detections):
            if phi is None:
                det["displacement"] = torch.zeros(
                    (2, *original_sizes[i]), dtype=torch.float32, device=image_list.tensors.device
                )
            else:
                det["displacement"] = displacement_map(
                    phi[i],
                    tuple(image_list.image_sizes[i]),
                    original_sizes[i],
                    self.config.embed_unit_px,
                )
            if fg_logits is not None:
                det["foreground"] = torch.sigmoid(fg_logits[i][0].float())
        return detections


def _foreground_loss(
    logits: list[torch.Tensor], targets: list[dict], sizes: list[tuple[int, int]]
) -> torch.Tensor:
    """``foreground_loss`` of each image's U-Net logits against its worms' union, averaged.

    The targets' masks were resized by the transform with the images; the U-Net ran on the
    images as passed in, so the union is brought back to that size (nearest) where they differ.
    """
    total = logits[0].new_zeros(())
    for lg, target, size in zip(logits, targets, sizes, strict=True):
        masks = target["masks"]
        union = masks.amax(dim=0, keepdim=True).float() if len(masks) else lg.new_zeros((1, *size))
        if tuple(union.shape[-2:]) != tuple(size):
            union = torch.nn.functional.interpolate(union[None], size=size, mode="nearest")[0]
        total = total + foreground_loss(lg, union)
    return total / len(logits)


def _check_images(images: list[torch.Tensor]) -> None:
    if not isinstance(images, (list, tuple)) or not images:
        raise TypeError("images must be a non-empty list of (1, H, W) float tensors")
    for i, img in enumerate(images):
        if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[0] != 1:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(
                f"image {i} must be a (1, H, W) tensor (one channel), got {shape}; "
                "convert colour images to grey first (core.preprocess.to_grey)"
            )
        if not img.is_floating_point():
            raise TypeError(f"image {i} must be float (normalised), got {img.dtype}")


def _check_boxes(targets: list[dict[str, torch.Tensor]]) -> None:
    for i, target in enumerate(targets):
        boxes = target["boxes"]
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"target {i}: boxes must be (N, 4) xyxy, got {tuple(boxes.shape)}")
        bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if bool(bad.any()):
            j = int(torch.nonzero(bad)[0])
            raise ValueError(
                f"target {i}: box {j} {boxes[j].tolist()} has zero width or height after resizing; "
                "drop instances smaller than a pixel or two before training"
            )


def build_model(config: ModelConfig) -> SemiConvMaskRCNN:
    """A freshly initialised model in train mode; ``model.config`` is ``config``."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build_model needs a ModelConfig, got {type(config).__name__}")
    return SemiConvMaskRCNN(config)


# The tensors a semi-conv model has on top of torchvision's Mask R-CNN.
_SEMICONV_ONLY = ("embedding_head.", "roi_heads.sigma.")


def _load_shared(
    model: SemiConvMaskRCNN,
    state_dict: Mapping[str, torch.Tensor],
    what: str,
    model_has_more: bool,
) -> list[str]:
    """Load the tensors ``model`` and ``state_dict`` share; the semi-conv tensors may be on one
    side only (the model's when ``model_has_more``, else the checkpoint's) and are returned.

    Raises:
        ValueError: any other key on one side only, or shapes that differ (another backbone or
            head widths).
    """
    own = model.state_dict()
    extra = sorted(set(state_dict) - set(own))
    lacking = sorted(set(own) - set(state_dict))
    mismatched = sorted(
        k for k in set(state_dict) & set(own) if tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    one_sided = lacking if model_has_more else extra
    unexpected = [k for k in extra if not (k in one_sided and k.startswith(_SEMICONV_ONLY))]
    missing = [k for k in lacking if not (k in one_sided and k.startswith(_SEMICONV_ONLY))]
    if unexpected or mismatched or missing:
        raise ValueError(
            f"the {what} weights do not fit this model (another backbone or head widths?): "
            f"unexpected keys {unexpected[:5]}, shape mismatches {mismatched[:5]}, "
            f"missing keys {missing[:5]}"
        )
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return one_sided


def load_baseline_weights(
    model: SemiConvMaskRCNN, state_dict: Mapping[str, torch.Tensor]
) -> list[str]:
    """Start a semi-conv model from a trained baseline (the paper's two-stage schedule, sec. 4.3).

    Loads every key of ``state_dict`` into ``model``; the model's keys the baseline lacks (the
    embedding head and log σ) keep their fresh initialisation and are returned, sorted.

    Raises:
        ValueError: ``state_dict`` has keys the model lacks, shapes that differ (another backbone
            or width), or lacks keys other than the embedding head / σ.
    """
    return _load_shared(model, state_dict, "baseline", model_has_more=True)


def load_without_embedding(
    model: SemiConvMaskRCNN, state_dict: Mapping[str, torch.Tensor]
) -> list[str]:
    """Start a plain Mask R-CNN from a semi-conv checkpoint: the ablation's other arm.

    The semi-conv model is Mask R-CNN plus the embedding head and σ (its mask head has the same
    shape; eq. 10 only adds −‖Ψ_u − Ψ_s‖/σ to its logits), so every other tensor carries over.

    Returns:
        the checkpoint's keys left out (embedding head and σ), sorted.
    Raises:
        ValueError: keys other than the embedding head / σ do not fit (another architecture).
    """
    return _load_shared(model, state_dict, "semi-conv", model_has_more=False)
