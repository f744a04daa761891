"""The sparse CPU RoIAlign against torchvision's kernel: same values, same gradients."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision

from napari_semiconv.core.model.roi_align import MultiScaleRoIAlign, roi_align, roi_align_sparse


def _rois(n_images: int, k: int, height: float, width: float, seed: int) -> torch.Tensor:
    """Boxes of every kind: inside, across the border, outside, thinner than a pixel."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(k, 2, generator=g) * torch.tensor([width, height]) * 1.3 - 0.15 * width
    wh = torch.rand(k, 2, generator=g) * torch.tensor([width, height]) * 0.6
    wh[: k // 5] *= 0.01  # degenerate, sub-pixel boxes
    image = torch.randint(0, n_images, (k, 1), generator=g).float()
    return torch.cat([image, xy, xy + wh], dim=1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize(
    ("shape", "scale", "size", "ratio"),
    [
        ((3, 5, 17, 23), 0.25, (7, 7), 2),
        ((2, 4, 8, 6), 0.5, (14, 14), 2),
        ((1, 3, 9, 9), 1.0, (5, 3), 3),
    ],
)
def test_sparse_matches_torchvision_values_and_gradients(aligned, shape, scale, size, ratio):
    g = torch.Generator().manual_seed(1)
    features = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    rois = _rois(shape[0], 60, shape[2] / scale, shape[3] / scale, seed=2).double()
    upstream = torch.randn(60, shape[1], *size, generator=g, dtype=torch.float64)

    expected = torchvision.ops.roi_align(features, rois, size, scale, ratio, aligned)
    (expected * upstream).sum().backward()
    expected_grad, features.grad = features.grad.clone(), None

    got = roi_align_sparse(features, rois, size, scale, ratio, aligned)
    (got * upstream).sum().backward()

    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(features.grad, expected_grad, rtol=1e-10, atol=1e-10)


def test_no_rois_gives_an_empty_result_still_in_the_graph():
    features = torch.randn(1, 4, 8, 8, requires_grad=True)
    out = roi_align_sparse(features, torch.zeros(0, 5), (7, 7), 0.25, 2)
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()  # like torchvision: a zero gradient, not none
    assert features.grad is not None and not features.grad.any()


def test_adaptive_sampling_ratio_is_refused_by_the_sparse_path_and_served_by_torchvision():
    features = torch.randn(1, 2, 8, 8, requires_grad=True)
    rois = torch.tensor([[0.0, 1.0, 1.0, 20.0, 12.0]])
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align_sparse(features, rois, (7, 7), 0.25, 0)
    out = roi_align(features, rois, 7, 0.25, sampling_ratio=-1)
    torch.testing.assert_close(out, torchvision.ops.roi_align(features, rois, 7, 0.25, -1))


def test_list_of_boxes_is_the_same_as_rois_with_image_indices():
    features = torch.randn(2, 3, 16, 16, requires_grad=True)
    boxes = [torch.tensor([[2.0, 3.0, 30.0, 40.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2)]
    rois = torch.tensor(
        [[0.0, 2.0, 3.0, 30.0, 40.0], [1.0, 0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 0.0, 10.0, 10.0]]
    )
    torch.testing.assert_close(
        roi_align(features, boxes, 7, 0.25, 2), roi_align(features, rois, 7, 0.25, 2)
    )


def _pyramid(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        str(i): torch.randn(
            2, 4, 64 >> i, 48 >> i, generator=g, dtype=torch.float64
        ).requires_grad_()
        for i in range(4)
    }


def test_multiscale_pooler_matches_torchvision_including_gradients():
    """Small and large boxes, so that every FPN level is used."""
    names = ["0", "1", "2", "3"]
    g = torch.Generator().manual_seed(3)
    boxes = []
    for _ in range(2):
        xy = torch.rand(40, 2, generator=g) * torch.tensor([150.0, 200.0])
        wh = torch.exp(torch.rand(40, 2, generator=g) * 5.0) + 1.0
        boxes.append(torch.cat([xy, xy + wh], dim=1).double())
    shapes = [(256, 192), (256, 192)]
    results = []
    for pooler in (
        torchvision.ops.MultiScaleRoIAlign(names, 7, 2),
        MultiScaleRoIAlign(names, 7, 2, [4, 8, 16, 32]),
    ):
        features = _pyramid(seed=4)
        out = pooler(features, boxes, shapes)
        out.pow(2).sum().backward()
        results.append((out.detach(), [features[n].grad for n in names]))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    for grad_a, grad_b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(grad_b, grad_a, rtol=1e-10, atol=1e-10)


def test_pooler_scales_do_not_depend_on_the_first_image():
    """torchvision infers the levels' scales from its first batch and keeps them; a 40-px first
    image (features padded to a 64-px image) doubles them for good. Ours are the strides'."""
    names = ["0", "1", "2", "3"]
    padded = {str(i): torch.randn(1, 4, 16 >> i, 16 >> i) for i in range(4)}  # 64-px padded
    boxes = [torch.tensor([[2.0, 2.0, 30.0, 12.0]])]
    theirs = torchvision.ops.MultiScaleRoIAlign(names, 7, 2)
    theirs(padded, boxes, [(40, 40)])
    assert theirs.scales == [0.5, 0.25, 0.125, 0.0625]  # the defect, in torchvision
    ours = MultiScaleRoIAlign(names, 7, 2, [4, 8, 16, 32])
    first = ours(padded, boxes, [(40, 40)])
    assert ours.scales == [0.25, 0.125, 0.0625, 0.03125]
    assert int(ours.map_levels([torch.tensor([[0.0, 0.0, 224.0, 224.0]])])[0]) == 2  # level k0
    # a later, larger image is pooled as a fresh pooler would pool it
    big = {str(i): torch.randn(1, 4, 128 >> i, 160 >> i) for i in range(4)}
    fresh = MultiScaleRoIAlign(names, 7, 2, [4, 8, 16, 32])
    torch.testing.assert_close(ours(big, boxes, [(512, 640)]), fresh(big, boxes, [(512, 640)]))
    assert first.shape == (1, 4, 7, 7)
    with pytest.raises(ValueError, match="4 feature maps but 3 strides"):
        MultiScaleRoIAlign(names, 7, 2, [4, 8, 16])


def test_a_small_first_image_leaves_the_model_as_it_was():
    from reliability_kit import tiny_config

    from napari_semiconv.core.inference import segment
    from napari_semiconv.core.model.builder import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config("binary")).eval()
    image = np.zeros((160, 200), np.float32)
    image[40:60, 20:180] = 1.0
    image[100:150, 90:100] = 1.0
    twin = copy.deepcopy(model)
    segment(model, image[30:70, 10:50], score_threshold=0.0, mask_threshold=0.0)  # small first
    again = segment(model, image, score_threshold=0.0, mask_threshold=0.0)
    fresh = segment(twin, image, score_threshold=0.0, mask_threshold=0.0)
    assert len(fresh) > 0
    np.testing.assert_array_equal(again.masks, fresh.masks)


def test_inference_takes_torchvision_kernel(monkeypatch):
    """Forward-only work is faster with torchvision's kernel; the sparse path is not entered."""
    import napari_semiconv.core.model.roi_align as module

    def fail(*args, **kwargs):
        raise AssertionError("the sparse path ran without a backward to follow")

    monkeypatch.setattr(module, "roi_align_sparse", fail)
    features = torch.randn(1, 2, 8, 8, requires_grad=True)
    rois = torch.tensor([[0.0, 1.0, 1.0, 20.0, 12.0]])
    with torch.no_grad():
        roi_align(features, rois, 7, 0.25, 2)
    roi_align(features.detach(), rois, 7, 0.25, 2)
    roi_align(features, rois, 7, 0.25, 2)  # 2 channels: torchvision's backward is faster


def test_training_with_many_channels_takes_the_sparse_path(monkeypatch):
    import napari_semiconv.core.model.roi_align as module

    calls = []
    original = module.roi_align_sparse
    monkeypatch.setattr(
        module, "roi_align_sparse", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    features = torch.randn(1, module.SPARSE_MIN_CHANNELS, 8, 8, requires_grad=True)
    roi_align(features, torch.tensor([[0.0, 1.0, 1.0, 20.0, 12.0]]), 7, 0.25, 2).sum().backward()
    assert calls == [1]


def test_bf16_features_are_pooled_in_float32_by_the_sparse_path(monkeypatch):
    """Under CPU bf16 autocast the FPN levels are bf16: the sparse path still serves them."""
    import napari_semiconv.core.model.roi_align as module

    calls = []
    original = module.roi_align_sparse
    monkeypatch.setattr(
        module, "roi_align_sparse", lambda *a, **k: calls.append(a[0].dtype) or original(*a, **k)
    )
    torch.manual_seed(0)
    features = torch.randn(2, module.SPARSE_MIN_CHANNELS, 10, 12).to(torch.bfloat16)
    features.requires_grad_(True)
    rois = torch.tensor([[0.0, 1.0, 1.0, 30.0, 20.0], [1.0, 4.0, 0.0, 44.0, 39.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = roi_align(features, rois, 7, 0.25, 2, aligned=True)
    assert calls == [torch.float32] and pooled.dtype == torch.bfloat16
    expected = torchvision.ops.roi_align(features.detach().float(), rois, 7, 0.25, 2, True)
    torch.testing.assert_close(pooled.float(), expected, rtol=1e-2, atol=1e-2)
    pooled.float().sum().backward()
    assert features.grad is not None and features.grad.dtype == torch.bfloat16
    assert float(features.grad.float().abs().sum()) > 0
