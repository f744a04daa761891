"""The semi-convolutional Mask R-CNN (sec. 3.5) on tiny inputs: losses, gradients, outputs."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads

from napari_semiconv.core.model.builder import (
    build_model,
    load_baseline_weights,
    load_without_embedding,
)
from napari_semiconv.core.model.config import ModelConfig
from napari_semiconv.core.model.embedding import (
    EmbeddingHead,
    downsample_masks,
    scale_gradient,
)
from napari_semiconv.core.model.roi_heads import pool_embedding, seed_distance

SIZE = 128


def tiny_config(**kw) -> ModelConfig:
    base = dict(backbone="resnet18", min_size=SIZE, max_size=SIZE, detections_per_img=10)
    base.update(kw)
    return ModelConfig(**base)


def worm_sample() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A 128×128 binary image with three worm-like bars; two of them cross (an overlap)."""
    masks = torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
    masks[0, 20:30, 10:100] = 1  # horizontal
    masks[1, 15:110, 60:72] = 1  # vertical, crosses worm 0
    masks[2, 85:95, 20:120] = 1
    boxes = []
    for m in masks:
        ys, xs = torch.nonzero(m, as_tuple=True)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    image = masks.amax(0)[None].float()
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.ones(3, dtype=torch.int64),
        "masks": masks,
    }
    return image, target


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_train_losses_finite_and_gradients_reach_head_and_sigma():
    torch.manual_seed(0)
    model = build_model(tiny_config())
    model.train()
    image, target = worm_sample()
    losses = model([image], [target])
    expected = {
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_embedding",
        "loss_kernel",
    }
    assert set(losses) == expected
    for name, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), name
    assert losses["loss_embedding"] > 0 and losses["loss_kernel"] > 0
    sum(losses.values()).backward()
    head = model.embedding_head
    for param in (head.reduce.weight, head.predict.weight, model.roi_heads.sigma.log_sigma):
        assert param.grad is not None and torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0
    # all layers train from scratch by default (no frozen stem)
    assert model.backbone.body.conv1.weight.grad is not None
    assert all(p.requires_grad for p in model.parameters())


def test_an_image_without_worms_trains_with_zero_mask_losses():
    torch.manual_seed(0)
    model = build_model(tiny_config())
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, SIZE, SIZE, dtype=torch.uint8),
    }
    losses = model([torch.zeros(1, SIZE, SIZE)], [empty])
    for key in ("loss_mask", "loss_kernel", "loss_embedding"):
        assert float(losses[key].detach()) == 0.0, key
    assert float(losses["loss_classifier"].detach()) > 0
    sum(losses.values()).backward()  # still connected to the graph
    assert model.roi_heads.box_predictor.cls_score.weight.grad is not None


def test_backbone_is_one_channel_with_trainable_norm():
    model = build_model(tiny_config(norm="group"))
    assert model.backbone.body.conv1.in_channels == 1
    norms = [m for m in model.backbone.body.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.weight.requires_grad for m in norms)
    bn_model = build_model(tiny_config(semiconv=False))
    kinds = {type(m).__name__ for m in bn_model.backbone.body.modules()}
    assert "BatchNorm2d" in kinds and "FrozenBatchNorm2d" not in kinds
    assert bn_model.transform.image_mean == [0.5] and bn_model.transform.image_std == [0.5]


def test_scale_gradient_keeps_value_and_scales_gradient():
    x = torch.randn(2, 3, requires_grad=True)
    y = scale_gradient(x, 0.1)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 0.1))


def test_embedding_head_sends_a_tenth_of_the_gradient_into_the_fpn():
    torch.manual_seed(0)
    scaled = EmbeddingHead(16, embed_dim=8, hidden=32, grad_scale=0.1)
    plain = EmbeddingHead(16, embed_dim=8, hidden=32, grad_scale=1.0)
    plain.load_state_dict(scaled.state_dict())
    grads = []
    for head in (scaled, plain):
        feats = torch.randn(1, 16, 9, 9, generator=torch.Generator().manual_seed(1))
        feats.requires_grad_(True)
        out = head(feats)
        assert out.shape == (1, 8, 9, 9)
        (out**2).sum().backward()
        grads.append(feats.grad)
    assert grads[1].abs().sum() > 0
    assert torch.allclose(grads[0], 0.1 * grads[1], rtol=1e-4, atol=1e-7)


def test_pool_embedding_adds_bin_centres_equal_to_pooling_a_coordinate_channel():
    unit, stride, m = 16.0, 4, 7
    phi = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    box = torch.tensor([[24.0, 16.0, 80.0, 72.0]])  # well inside the 128×128 image
    psi = pool_embedding(phi, [box], m, unit, stride)
    assert psi.shape == (1, 4, m, m)
    # with Φ = 0 only the analytic bin centres remain: y1 + (i + 0.5)(y2 − y1)/M, in units
    zero = pool_embedding(torch.zeros_like(phi), [box], m, unit, stride)
    centres_y = (16.0 + (torch.arange(m) + 0.5) * 56.0 / m) / unit
    centres_x = (24.0 + (torch.arange(m) + 0.5) * 56.0 / m) / unit
    assert torch.allclose(zero[0, 0], centres_y[:, None].expand(m, m), atol=1e-5)
    assert torch.allclose(zero[0, 1], centres_x[None, :].expand(m, m), atol=1e-5)
    assert torch.count_nonzero(zero[0, 2:]) == 0
    # METHOD.md sec. 3: the same as pooling the dense Ψ = Φ + û, up to a constant (cancels in
    # every distance): û at cell j is stride·j/unit
    from torchvision.ops import roi_align

    from napari_semiconv.core.operators import pixel_coordinates

    dense = phi + pixel_coordinates(32, 32, 4, scale=stride / unit)[None]
    pooled_dense = roi_align(dense, [box], m, 1 / stride, 2, aligned=True)
    offset = pooled_dense - psi
    assert torch.allclose(offset, offset[..., :1, :1].expand_as(offset), atol=1e-4)


def test_seed_distance_is_zero_at_a_confident_seed():
    psi = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(0))
    logits = torch.full((2, 5, 5), -50.0)
    logits[0, 1, 3] = 50.0
    logits[1, 4, 0] = 50.0
    dist = seed_distance(logits, psi)
    assert dist.shape == (2, 5, 5)
    assert dist[0, 1, 3] < 1e-3 and dist[1, 4, 0] < 1e-3
    expected = torch.linalg.vector_norm(psi[0] - psi[0, :, 1, 3][:, None, None], dim=0)
    assert torch.allclose(dist[0], expected, atol=1e-3)


def test_downsample_masks_to_stride_grid():
    masks = torch.zeros(1, 10, 10, dtype=torch.uint8)
    masks[0, 0:4, 4:8] = 1
    small = downsample_masks(masks, (4, 4), 4)  # padded to 16×16
    assert small.dtype == torch.bool and small.shape == (1, 4, 4)
    assert small[0, 0, 1] and small.sum() == 1


def _tv_roi_heads(heads) -> RoIHeads:
    """torchvision's own RoIHeads around the same modules and settings."""
    return RoIHeads(
        heads.box_roi_pool,
        heads.box_head,
        heads.box_predictor,
        0.5,
        0.5,
        512,
        0.25,
        None,
        heads.score_thresh,
        heads.nms_thresh,
        heads.detections_per_img,
        mask_roi_pool=heads.mask_roi_pool,
        mask_head=heads.mask_head,
        mask_predictor=heads.mask_predictor,
    )


def test_baseline_is_torchvision_mask_rcnn():
    torch.manual_seed(0)
    model = build_model(tiny_config(semiconv=False))
    assert model.embedding_head is None
    assert not any("sigma" in k or "embedding" in k for k in model.state_dict())
    image, target = worm_sample()
    tv_heads = _tv_roi_heads(model.roi_heads)

    model.train()
    torch.manual_seed(1)
    losses = model([image], [target])
    assert "loss_embedding" not in losses and "loss_kernel" not in losses
    # same sampled RoIs (same seed) through torchvision's RoIHeads give the same losses
    images, targets = model.transform([image], [target])
    feats = model.backbone(images.tensors)
    torch.manual_seed(2)
    proposals, _ = model.rpn(images, feats, targets)
    torch.manual_seed(3)
    _, ours = model.roi_heads(feats, proposals, images.image_sizes, targets)
    torch.manual_seed(3)
    _, theirs = tv_heads(feats, proposals, images.image_sizes, targets)
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key

    model.eval()
    tv_heads.eval()
    with torch.no_grad():
        out = model([image])[0]
        reference = GeneralizedRCNN.forward(model, [image])[0]
        images, _ = model.transform([image])
        feats = model.backbone(images.tensors)
        proposals, _ = model.rpn(images, feats)
        mine, _ = model.roi_heads(feats, proposals, images.image_sizes)
        tv, _ = tv_heads(feats, proposals, images.image_sizes)
    for key in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(mine[0][key], tv[0][key]), key
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(out[key], reference[key]), key
    # masks are pasted into the image in one batch (core.model.postprocess): the same values as
    # torchvision's per-detection loop up to float rounding
    torch.testing.assert_close(out["masks"], reference["masks"], rtol=0, atol=1e-5)
    assert out["displacement"].shape == (2, SIZE, SIZE)
    assert torch.count_nonzero(out["displacement"]) == 0  # no embedding in the baseline


def test_eval_outputs_at_original_size_for_a_resized_non_square_input():
    torch.manual_seed(0)
    config = tiny_config()
    model = build_model(config)
    model.eval()
    image = torch.zeros(1, 96, 160)
    image[0, 40:52, 20:140] = 1.0
    # a known Φ: rows +1 unit, cols −0.5 units everywhere
    head = model.embedding_head
    with torch.no_grad():
        head.predict.weight.zero_()
        head.predict.bias.zero_()
        head.predict.bias[0] = 1.0
        head.predict.bias[1] = -0.5
        out = model([image])[0]
        resized = model.transform([image])[0].image_sizes[0]
    assert tuple(resized) != (96, 160)  # the transform really resized it
    n = out["boxes"].shape[0]
    assert out["masks"].shape == (n, 1, 96, 160)
    assert out["scores"].shape == (n,)
    disp = out["displacement"]
    assert disp.shape == (2, 96, 160) and disp.dtype == torch.float32
    unit = config.embed_unit_px
    assert torch.allclose(disp[0], torch.full_like(disp[0], unit * 96 / resized[0]), atol=1e-4)
    assert torch.allclose(disp[1], torch.full_like(disp[1], -0.5 * unit * 160 / resized[1]))


def test_eval_semiconv_masks_are_probabilities():
    torch.manual_seed(0)
    model = build_model(tiny_config())
    model.eval()
    image, _ = worm_sample()
    with torch.no_grad():
        out = model([image, image[:, :100, :120]])
    assert len(out) == 2
    for det, shape in zip(out, [(SIZE, SIZE), (100, 120)], strict=True):
        assert det["masks"].shape[-2:] == shape and det["displacement"].shape == (2, *shape)
        assert det["masks"].shape[0] > 0  # untrained scores ≈ 0.5 > box_score_thresh
        assert 0 <= float(det["masks"].min()) and float(det["masks"].max()) <= 1
        assert torch.isfinite(det["displacement"]).all()


def test_kernel_correction_vanishes_for_a_huge_sigma_and_shrinks_masks_for_a_small_one():
    torch.manual_seed(0)
    model = build_model(tiny_config())
    model.eval()
    image, _ = worm_sample()
    tv_heads = _tv_roi_heads(model.roi_heads).eval()
    with torch.no_grad():
        images, _ = model.transform([image])
        feats = model.backbone(images.tensors)
        phi = model.embedding_head(feats["0"])
        proposals, _ = model.rpn(images, feats)
        plain, _ = tv_heads(feats, proposals, images.image_sizes)
        model.roi_heads.sigma.log_sigma.fill_(40.0)  # σ = e^40: log K_σ ≈ 0
        wide, _ = model.roi_heads(feats, proposals, images.image_sizes, embedding=phi)
        model.roi_heads.sigma.log_sigma.fill_(math.log(0.05))
        sharp, _ = model.roi_heads(feats, proposals, images.image_sizes, embedding=phi)
    assert plain[0]["masks"].shape[0] > 0
    assert torch.equal(wide[0]["boxes"], plain[0]["boxes"])
    assert torch.allclose(wide[0]["masks"], plain[0]["masks"], atol=1e-6)
    # ŝ = s − d/σ ≤ s: a sharp kernel only removes probability away from the seed
    assert (sharp[0]["masks"] <= plain[0]["masks"] + 1e-6).all()
    assert sharp[0]["masks"].mean() < 0.5 * plain[0]["masks"].mean()


def test_load_baseline_weights_keeps_new_head_fresh():
    torch.manual_seed(0)
    baseline = build_model(tiny_config(semiconv=False))
    model = build_model(tiny_config())
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    new_keys = load_baseline_weights(model, baseline.state_dict())
    assert new_keys and all(
        k.startswith("embedding_head.") or k == "roi_heads.sigma.log_sigma" for k in new_keys
    )
    assert "roi_heads.sigma.log_sigma" in new_keys
    state = model.state_dict()
    for key, value in baseline.state_dict().items():
        assert torch.equal(state[key], value), key
    for key in new_keys:
        assert torch.equal(state[key], fresh[key]), key
    assert math.isclose(float(model.roi_heads.sigma.sigma.detach()), 2.0, rel_tol=1e-6)
    other = build_model(tiny_config(semiconv=False, mask_head_width=64))
    with pytest.raises(ValueError, match="do not fit"):
        load_baseline_weights(model, other.state_dict())


def test_load_without_embedding_carries_all_but_the_semiconv_tensors():
    torch.manual_seed(0)
    semiconv = build_model(tiny_config())
    plain = build_model(tiny_config(semiconv=False))
    dropped = load_without_embedding(plain, semiconv.state_dict())
    assert "roi_heads.sigma.log_sigma" in dropped
    assert all(k.startswith(("embedding_head.", "roi_heads.sigma.")) for k in dropped)
    state = plain.state_dict()
    assert set(state) == set(semiconv.state_dict()) - set(dropped)
    for key, value in state.items():
        assert torch.equal(value, semiconv.state_dict()[key]), key
    # the plain model has no embedding to show: its displacement arrows are all zero
    plain.eval()
    image, _ = worm_sample()
    with torch.no_grad():
        out = plain([image])[0]
    assert not out["displacement"].any()
    wider = build_model(tiny_config(mask_head_width=64))
    with pytest.raises(ValueError, match="do not fit"):
        load_without_embedding(plain, wider.state_dict())


def test_missing_targets_and_bad_images_are_clear_errors():
    model = build_model(tiny_config())
    image, target = worm_sample()
    with pytest.raises(ValueError, match="needs targets"):
        model([image])
    with pytest.raises(ValueError, match="one channel"):
        model([image.repeat(3, 1, 1)], [target])
    bad = dict(target, boxes=target["boxes"].clone())
    bad["boxes"][0, 2] = bad["boxes"][0, 0]
    with pytest.raises(ValueError, match="zero width or height"):
        model([image], [bad])


def test_config_round_trip_and_validation():
    config = tiny_config(norm="group", anchor_sizes=(8, 16, 32, 64, 128))
    d = config.to_dict()
    assert isinstance(d["anchor_sizes"], list)
    assert ModelConfig.from_dict(d) == config
    assert ModelConfig.from_dict({}) == ModelConfig()
    for key, value in (("backbone", "vgg16"), ("input_mode", "rgb"), ("norm", "frozen")):
        with pytest.raises(ValueError, match=value):
            ModelConfig.from_dict({**d, key: value})
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**d, "future_option": 1})
    with pytest.raises(ValueError, match="embed_dim"):
        ModelConfig(embed_dim=1)
