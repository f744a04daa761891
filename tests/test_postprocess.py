"""Batched mask pasting and early score filtering give what torchvision's loop gives."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

import napari_semiconv.core.inference as inference
import napari_semiconv.core.model.builder as builder
from napari_semiconv.core.inference import load_model, segment, segment_batch
from napari_semiconv.core.model.postprocess import paste_masks
from napari_semiconv.core.synthetic.worms import synthetic_worms


def _boxes(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Boxes clipped to the image as the detector's are, with the edge cases among them."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width, height], dtype=torch.float32)
    wh = torch.rand(n, 2, generator=g) * 150.0 + 0.2
    far = torch.minimum(xy + wh, torch.tensor([width, height], dtype=torch.float32))
    boxes = torch.cat([xy, far], dim=1)
    boxes[0] = torch.tensor([0.0, 0.0, width, height])  # the whole image
    boxes[1] = torch.tensor([width - 0.5, height - 0.5, width, height])  # a sub-pixel corner
    boxes[2] = torch.tensor([3.0, 4.0, 3.4, 60.0])  # thinner than a pixel
    return boxes


@pytest.mark.parametrize(("height", "width", "n"), [(520, 696, 30), (64, 48, 5), (33, 200, 3)])
def test_paste_masks_equals_torchvision(height, width, n):
    g = torch.Generator().manual_seed(n)
    masks = torch.rand(n, 1, 28, 28, generator=g)
    boxes = _boxes(n, height, width, seed=n)
    expected = paste_masks_in_image(masks, boxes, (height, width))
    got = paste_masks(masks, boxes, (height, width))
    assert got.shape == expected.shape == (n, 1, height, width)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_paste_masks_without_detections():
    out = paste_masks(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (20, 30))
    assert out.shape == (0, 1, 20, 30)


@contextlib.contextmanager
def _torchvision_postprocessing(model):
    """The model as torchvision ships it: every detection over 0.05 pasted in a loop."""
    batched, threshold = builder.postprocess_detections, inference.detection_threshold
    builder.postprocess_detections = model.transform.postprocess
    inference.detection_threshold = lambda m, t: contextlib.nullcontext()
    try:
        yield
    finally:
        builder.postprocess_detections, inference.detection_threshold = batched, threshold


@pytest.mark.parametrize("name", ["worms-brightfield", "worms-binary"])
def test_bundled_model_gives_the_same_worms_as_with_torchvision_postprocessing(name):
    model = load_model(name)
    render = "binary" if name.endswith("binary") else "brightfield"
    image, _ = synthetic_worms(seed=3, render=render)
    for score_threshold in (0.3, 0.5):
        new = segment(model, image, score_threshold=score_threshold)
        with _torchvision_postprocessing(model):
            old = segment(model, image, score_threshold=score_threshold)
        assert len(new) > 0
        np.testing.assert_array_equal(new.masks, old.masks)
        np.testing.assert_array_equal(new.scores, old.scores)
        np.testing.assert_array_equal(new.displacement, old.displacement)
    # the model's own threshold is restored after the call
    assert model.roi_heads.score_thresh == model.config.box_score_thresh


def test_segment_batch_uses_the_same_postprocessing():
    model = load_model("worms-binary")
    images = [synthetic_worms(seed=s, render="binary")[0] for s in (4, 5)]
    batched = segment_batch(model, images)
    with _torchvision_postprocessing(model):
        singles = [segment(model, im) for im in images]
    for a, b in zip(batched, singles, strict=True):
        assert len(a) == len(b)
        # one forward pass over two images pads them alike; scores may move in the last digits
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        assert (a.masks != b.masks).mean() < 1e-4


def test_segment_batch_finds_what_segment_finds_in_each_image_alone():
    # images of other sizes are not padded to the largest (the padding changed the worms at a
    # smaller image's edges: 7 worms alone, 4 batched); blank and tiny images as segment()
    model = load_model("worms-binary")
    well = synthetic_worms(seed=4, render="binary")[0]
    small = np.ascontiguousarray(well[: well.shape[0] // 2, : well.shape[1] // 2])
    images = [well, small, np.full((60, 80), 255, np.uint8), small[:20, :20]]
    batched = segment_batch(model, images)
    assert len(batched) == len(images)
    for image, got in zip(images, batched, strict=True):
        alone = segment(model, image)
        assert got.masks.shape == alone.masks.shape
        assert len(got) == len(alone)
        np.testing.assert_allclose(got.scores, alone.scores, atol=1e-4)
        assert (got.masks != alone.masks).sum() <= 1e-4 * got.masks.size
    assert len(batched[0]) > 0 and len(batched[1]) > 0
    assert len(batched[2]) == 0  # constant: never shown to the network
