"""Mask R-CNN RoI heads with the semi-convolutional mask refinement of sec. 3.5.

Only the mask block changes. For every RoI with mask logits s (28×28):

1. Ψ_u of the RoI's 28×28 bins: Φ pooled from the dense stride-4 map (RoIAlign) plus the
   analytic bin-centre coordinates û (eq. 6). Pooling Φ and adding û equals pooling Φ + û, since
   bilinear interpolation of the linear û is exact (up to a constant that cancels in distances).
2. Seed Ψ_s = Σ_u softmax(s)_u Ψ_u, the differentiable stand-in for Ψ at argmax s.
3. ŝ(u) = s(u) + log K_σ(u_s, u) = s(u) − ‖Ψ_u − Ψ_s‖/σ (eq. 10, learnable σ); masks are
   sigmoid(ŝ) and torchvision's mask loss is applied to ŝ.
4. "loss_kernel": binary cross-entropy between K_σ(u_s, u) and the RoI's ground-truth mask,
   with log(1 − K) = log(−expm1(−d/σ)) (clamped; ``LearnableSigma.log_one_minus_kernel``).

With ``semiconv=False`` the module is torchvision's ``RoIHeads`` unchanged (the baseline).
"""

from __future__ import annotations

import torch
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    maskrcnn_inference,
    maskrcnn_loss,
    project_masks_on_boxes,
)

from napari_semiconv.core.model.embedding import EMBED_STRIDE
from napari_semiconv.core.model.roi_align import roi_align
from napari_semiconv.core.model.run_modes import thread_value
from napari_semiconv.core.operators import LearnableSigma

# Added under the square root of ‖Ψ_u − Ψ_s‖² so its gradient stays finite at distance 0.
_DIST_EPS = 1e-8


def pool_embedding(
    phi: torch.Tensor, boxes: list[torch.Tensor], resolution: int, unit: float, stride: int
) -> torch.Tensor:
    """Ψ on the resolution×resolution bins of each RoI: pooled Φ + analytic bin centres (eq. 6).

    Args:
        phi: (B, D, h, w) dense Φ in embedding units, stride ``stride``.
        boxes: per image (R_i, 4) xyxy boxes in (resized) input pixels.
    Returns:
        (R, D, M, M) with channel 0 = bin-centre row, channel 1 = bin-centre column (units).
    """
    phi = phi.float()
    pooled = roi_align(
        phi,
        [b.float() for b in boxes],
        output_size=resolution,
        spatial_scale=1.0 / stride,
        sampling_ratio=2,
        aligned=True,
    )
    all_boxes = torch.cat([b.float() for b in boxes], dim=0)
    if all_boxes.shape[0] == 0:
        return pooled
    # bin centres x1 + (j + 0.5) (x2 − x1) / M, the same bins project_masks_on_boxes uses for
    # the targets and the mask head predicts
    frac = (torch.arange(resolution, device=phi.device, dtype=phi.dtype) + 0.5) / resolution
    x1, y1, x2, y2 = all_boxes.unbind(1)
    rows = (y1[:, None] + frac[None] * (y2 - y1)[:, None]) / unit  # (R, M)
    cols = (x1[:, None] + frac[None] * (x2 - x1)[:, None]) / unit
    coords = torch.zeros_like(pooled)
    coords[:, 0] = rows[:, :, None]
    coords[:, 1] = cols[:, None, :]
    return pooled + coords


def seed_distance(logits: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """‖Ψ_u − Ψ_s‖ for each bin, with Ψ_s the softmax(s)-weighted mean of Ψ (soft arg-max).

    Args:
        logits: (R, M, M) mask logits s of the RoI's class.
        psi: (R, D, M, M) RoI embeddings.
    Returns:
        (R, M, M) distances in embedding units.
    """
    r, d = psi.shape[:2]
    bins = logits.shape[-2] * logits.shape[-1]
    weights = torch.softmax(logits.float().reshape(r, bins), dim=1)  # (R, M*M)
    flat = psi.reshape(r, d, bins)
    seed = (flat * weights[:, None, :]).sum(-1)  # (R, D)
    sq = ((flat - seed[:, :, None]) ** 2).sum(1)
    return torch.sqrt(sq + _DIST_EPS).reshape(logits.shape)


class SemiConvRoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` whose mask block adds the semi-convolutional kernel (sec. 3.5).

    The box branch is torchvision's own: ``forward`` runs the parent with the mask block switched
    off (``has_mask`` answers False for that call) and keeps the proposals it sampled (via
    ``select_training_samples``); the mask block below then uses them.
    """

    @property
    def score_thresh(self) -> float:  # type: ignore[override]
        """torchvision's score threshold, as this thread runs the model: a run's own (set by
        ``core.model.run_modes.detection_threshold``) or the model's."""
        return thread_value(self, "score_thresh", self.own_score_thresh)

    @score_thresh.setter
    def score_thresh(self, value: float) -> None:
        self.own_score_thresh = float(value)

    def __init__(
        self,
        *args,
        semiconv: bool = True,
        init_sigma: float = 2.0,
        embed_unit_px: float = 16.0,
        kernel_loss_weight: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.semiconv = bool(semiconv)
        self.embed_unit_px = float(embed_unit_px)
        self.kernel_loss_weight = float(kernel_loss_weight)
        if self.semiconv:
            self.sigma = LearnableSigma(init_sigma)
        self._box_branch_only = False
        self._sampled: tuple | None = None

    def has_mask(self) -> bool:
        if self._box_branch_only:
            return False
        return super().has_mask()

    def select_training_samples(self, proposals, targets):
        sampled = super().select_training_samples(proposals, targets)
        self._sampled = sampled
        return sampled

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
        embedding: torch.Tensor | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        """As ``RoIHeads.forward``; ``embedding`` is the dense (B, D, h, w) Φ at stride 4.

        Without ``semiconv`` the ``embedding`` is ignored and torchvision's code runs as is.
        """
        if not self.semiconv:
            return super().forward(features, proposals, image_shapes, targets)
        if embedding is None:
            raise ValueError("the semi-convolutional RoI heads need the dense embedding Φ")
        if not super().has_mask():
            raise ValueError("SemiConvRoIHeads needs mask_roi_pool, mask_head and mask_predictor")
        self._box_branch_only = True
        self._sampled = None
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
            sampled = self._sampled
        finally:
            self._box_branch_only = False
            self._sampled = None

        if self.training:
            if sampled is None or targets is None:
                raise ValueError("training the mask block needs targets")
            sampled_proposals, matched_idxs, labels, _ = sampled
            mask_proposals, pos_matched_idxs, mask_labels = [], [], []
            for props, idxs, labs, target in zip(
                sampled_proposals, matched_idxs, labels, targets, strict=True
            ):
                pos = torch.where(labs > 0)[0]  # only foreground RoIs train the mask
                mask_proposals.append(props[pos])
                pos_matched_idxs.append(idxs[pos])
                mask_labels.append(target["labels"][idxs[pos]])
        else:
            mask_proposals = [r["boxes"] for r in result]
            mask_labels = [r["labels"] for r in result]

        mask_features = self.mask_roi_pool(features, mask_proposals, image_shapes)
        mask_logits = self.mask_predictor(self.mask_head(mask_features))
        refined, dist = self._refine(mask_logits, mask_labels, mask_proposals, embedding)

        if self.training:
            gt_masks = [t["masks"] for t in targets]
            gt_labels = [t["labels"] for t in targets]
            losses["loss_mask"] = maskrcnn_loss(
                refined, mask_proposals, gt_masks, gt_labels, pos_matched_idxs
            )
            losses["loss_kernel"] = self.kernel_loss_weight * self._kernel_loss(
                dist, mask_proposals, gt_masks, pos_matched_idxs, embedding
            )
        else:
            for probs, r in zip(maskrcnn_inference(refined, mask_labels), result, strict=True):
                r["masks"] = probs
        return result, losses

    def _refine(
        self,
        mask_logits: torch.Tensor,
        labels: list[torch.Tensor],
        boxes: list[torch.Tensor],
        embedding: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ŝ = s − ‖Ψ_u − Ψ_s‖/σ for every class channel, and the distances (R, M, M)."""
        r, _, m, _ = mask_logits.shape
        flat_labels = torch.cat(labels) if labels else mask_logits.new_zeros(0, dtype=torch.long)
        class_logits = mask_logits[torch.arange(r, device=mask_logits.device), flat_labels]
        psi = pool_embedding(embedding, boxes, m, self.embed_unit_px, EMBED_STRIDE)
        dist = seed_distance(class_logits, psi)
        # The seed comes from the labelled class's logits; the correction is broadcast to every
        # class channel, of which torchvision's loss and inference only read the labelled one.
        refined = mask_logits.float() + self.sigma.log_kernel(dist)[:, None]
        return refined, dist

    def _kernel_loss(
        self,
        dist: torch.Tensor,
        boxes: list[torch.Tensor],
        gt_masks: list[torch.Tensor],
        matched_idxs: list[torch.Tensor],
        embedding: torch.Tensor,
    ) -> torch.Tensor:
        """Mean binary cross-entropy between K_σ(u_s, u) and the RoI's ground-truth mask."""
        if dist.numel() == 0:
            # keep head and σ in the graph (DDP expects every parameter to get a gradient)
            return embedding.sum() * 0.0 + self.sigma.log_sigma * 0.0
        m = dist.shape[-1]
        target = torch.cat(
            [
                project_masks_on_boxes(g, b, i, m)
                for g, b, i in zip(gt_masks, boxes, matched_idxs, strict=True)
            ]
        ).float()
        log_k = self.sigma.log_kernel(dist)
        log_one_minus_k = self.sigma.log_one_minus_kernel(dist)
        return -(target * log_k + (1.0 - target) * log_one_minus_k).mean()
