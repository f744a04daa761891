"""The bright-field cascade: foreground U-Net, its training, and the cascade model end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_worms import tiny_model_config, toy_worms

from napari_semiconv.core.checkpoint import load_checkpoint, save_checkpoint
from napari_semiconv.core.data.sample import Sample
from napari_semiconv.core.foreground_training import (
    attach_foreground,
    foreground_iou,
    foreground_target,
    predict_foreground,
    random_batch,
    replace_detector,
    train_foreground_steps,
    with_foreground_threshold,
)
from napari_semiconv.core.inference import segment, segment_batch
from napari_semiconv.core.model.builder import build_model
from napari_semiconv.core.model.config import ModelConfig
from napari_semiconv.core.model.foreground import (
    ForegroundConfig,
    build_foreground_net,
    foreground_loss,
    foreground_stage,
)
from napari_semiconv.core.refine import postprocess_defaults


def _brightfield(seed: int, shape=(96, 96)) -> Sample:
    """Toy worms as dark strokes on a bright, slightly noisy field (a bright-field look)."""
    fg, masks = toy_worms(shape, n=3, seed=seed)
    rng = np.random.default_rng(seed)
    image = np.clip(0.8 - 0.5 * fg + rng.normal(0, 0.03, shape), 0, 1).astype(np.float32)
    return Sample(image, masks, f"toy{seed}")


@pytest.mark.parametrize("shape", [(64, 64), (50, 77), (5, 9)])
def test_unet_keeps_any_size(shape):
    net = build_foreground_net(ForegroundConfig(width=4, depth=3)).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, *shape))
    assert out.shape == (2, 1, *shape)


def test_unet_config_round_trip_and_errors():
    cfg = ForegroundConfig(width=6, depth=2, max_width=12)
    assert ForegroundConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="newer napari-semiconv"):
        ForegroundConfig.from_dict({"width": 4, "colour": 1})
    with pytest.raises(ValueError, match="positive integer"):
        ForegroundConfig(width=0)
    net = build_foreground_net(cfg)
    # the channel cap holds at every level
    assert max(m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)) == 12
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        net(torch.rand(1, 3, 16, 16))


def test_loss_is_small_for_the_truth_and_large_for_its_opposite():
    target = torch.zeros(1, 1, 32, 32)
    target[..., 10:20, 5:25] = 1
    right = foreground_loss((target * 2 - 1) * 10, target)
    wrong = foreground_loss((1 - target * 2) * 10, target)
    assert float(right) < 0.01 < 1.0 < float(wrong)


def test_random_batch_augments_image_and_target_together():
    sample = _brightfield(0)
    target = foreground_target(sample.masks, sample.image.shape)
    x, y = random_batch([sample.image], [target], np.random.default_rng(1), 6, 48)
    assert x.shape == y.shape == (6, 1, 48, 48)
    # worms are dark: the jittered image is darker on the target than off it, crop by crop
    for xi, yi in zip(x, y, strict=True):
        if 0 < yi.sum() < yi.numel():
            assert xi[yi > 0].mean() < xi[yi == 0].mean()


def test_training_learns_toy_foreground():
    train = [_brightfield(s) for s in range(4)]
    torch.manual_seed(0)  # the initialisation is the test's, not the tests' before it
    net = build_foreground_net(ForegroundConfig(width=4, depth=2))
    before = np.mean(foreground_iou(net.eval(), train[:1]))
    steps = list(train_foreground_steps(net, train, steps=60, batch_size=4, crop=64, lr=1e-2))
    assert [p.step for p in steps] == list(range(1, 61))
    after = foreground_iou(net, [_brightfield(9)])  # an image it never saw
    assert after[0] > 0.7 > before
    prob = predict_foreground(net, train[0].image)
    assert prob.dtype == np.float32 and prob.shape == train[0].image.shape
    assert 0.0 <= prob.min() and prob.max() <= 1.0


def test_training_rejects_bad_settings():
    with pytest.raises(ValueError, match="no training images"):
        next(train_foreground_steps(build_foreground_net(), [], steps=1))
    with pytest.raises(ValueError, match="steps or a time budget"):
        next(train_foreground_steps(build_foreground_net(), [_brightfield(0)], steps=None))


def test_config_needs_brightfield_input_for_a_unet():
    with pytest.raises(ValueError, match="input_mode='brightfield'"):
        ModelConfig(foreground_width=8)
    cfg = ModelConfig(input_mode="brightfield", foreground_width=8)
    assert cfg.detector_input_mode == "binary"
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig(input_mode="brightfield").detector_input_mode == "brightfield"
    # post-processing defaults: a cascade has its own, the others follow the input mode
    assert cfg.postprocess_kind == "cascade"
    assert ModelConfig(input_mode="brightfield").postprocess_kind == "brightfield"
    assert ModelConfig(input_mode="binary").postprocess_kind == "binary"
    with pytest.raises(ValueError, match="unknown model kind 'grey'.*cascade"):
        postprocess_defaults("grey")
    # the U-Net's cut: saved with the config, older files (no key) read as 0.5
    cut = ModelConfig(input_mode="brightfield", foreground_width=8, foreground_threshold=0.6)
    assert ModelConfig.from_dict(cut.to_dict()).foreground_threshold == 0.6
    old = {k: v for k, v in cut.to_dict().items() if k != "foreground_threshold"}
    assert ModelConfig.from_dict(old).foreground_threshold == 0.5
    for bad in (0.0, 1.0, -0.2, float("nan")):
        with pytest.raises(ValueError, match=r"foreground_threshold must be in \(0, 1\)"):
            ModelConfig(foreground_threshold=bad)
    with pytest.raises(TypeError, match="foreground_threshold must be a number"):
        ModelConfig(foreground_threshold="0.6")


def _cascade(tmp_path):
    torch.manual_seed(0)
    detector = build_model(tiny_model_config(box_score_thresh=0.0)).eval()
    path = save_checkpoint(tmp_path / "det.pt", detector, {"name": "det"})
    net = build_foreground_net(ForegroundConfig(width=4, depth=2))
    return attach_foreground(load_checkpoint(path), net), detector, net


def test_cascade_runs_the_detector_on_the_unet_binary_map(tmp_path):
    cascade, detector, net = _cascade(tmp_path)
    assert cascade.config.input_mode == "brightfield" and cascade.config.foreground_width == 4
    # the detector's card describes the detector, not the cascade
    assert cascade.card["detector_name"] == "det" and "name" not in cascade.card
    assert "brightfield" in cascade.card["normalisation"]
    image = torch.from_numpy(_brightfield(3).image)[None]
    with torch.no_grad():
        out = cascade([image])[0]
        logits, binary = foreground_stage(net.eval(), [image])
        direct = detector([binary[0]])[0]
    assert set(np.unique(binary[0].numpy())) <= {0.0, 1.0}
    np.testing.assert_allclose(out["foreground"].numpy(), torch.sigmoid(logits[0][0]).numpy())
    # the detector part is the binary model, fed the thresholded map
    np.testing.assert_allclose(out["boxes"].numpy(), direct["boxes"].numpy(), atol=1e-4)


def test_cascade_saves_loads_and_segments(tmp_path):
    cascade, _, _ = _cascade(tmp_path)
    path = save_checkpoint(tmp_path / "cascade.pt", cascade, {"name": "c"}, half=True)
    from napari_semiconv.core.model_store import load_model

    loaded = load_model(str(path), device="cpu")
    assert loaded.config.foreground_width == 4
    sample = _brightfield(4)
    raw = (sample.image * 4000).astype(np.uint16)
    found = segment(loaded, raw)
    assert found.foreground is not None and found.foreground.shape == raw.shape
    fg = found.foreground > loaded.config.foreground_threshold
    # worms are clipped to the U-Net's foreground, as a binary model's are to its input
    assert not (found.masks & ~fg).any()
    tiled = segment(loaded, raw, tile_size=64, overlap=16)
    assert tiled.foreground.shape == raw.shape
    batch = segment_batch(loaded, [raw, raw])
    np.testing.assert_allclose(batch[0].foreground, found.foreground, atol=1e-5)


def test_the_detector_and_the_clean_up_see_the_unet_map_at_the_cascades_cut(tmp_path):
    cascade, detector, net = _cascade(tmp_path)
    image = torch.from_numpy(_brightfield(3).image)[None]
    with torch.no_grad():
        prob = torch.sigmoid(net.eval()(image[None]))[0]
    # a cut between the map's quartiles, so it differs from the default 0.5 somewhere
    cut = round(float(prob.quantile(0.5)), 3)
    assert ((prob > cut) != (prob > 0.5)).any()
    card = {**cascade.card, "name": "c", "metrics": {"AP": 0.5}, "metrics_protocol": "x"}
    saved = load_checkpoint(save_checkpoint(tmp_path / "c.pt", cascade, card))
    moved = with_foreground_threshold(saved, cut)
    assert moved.config.foreground_threshold == cut and saved.config.foreground_threshold == 0.5
    # the weights are the cascade's; the card's stale metrics go, its input description follows
    for key, value in cascade.state_dict().items():
        torch.testing.assert_close(moved.state_dict()[key], value)
    assert "metrics" not in moved.card and "metrics_protocol" not in moved.card
    assert f"> {cut:g} is the detector's binary input" in moved.card["normalisation"]
    with torch.no_grad():
        out = moved([image])[0]
        direct = detector([(prob > cut).float()])[0]
    np.testing.assert_allclose(out["boxes"].numpy(), direct["boxes"].numpy(), atol=1e-4)
    # through save and load, segment clips the worms to the map above the same cut
    path = save_checkpoint(tmp_path / "moved.pt", moved, moved.card)
    from napari_semiconv.core.model_store import load_model

    loaded = load_model(str(path), device="cpu")
    assert loaded.config.foreground_threshold == cut
    raw = (_brightfield(3).image * 4000).astype(np.uint16)
    found = segment(loaded, raw)
    assert not (found.masks & ~(found.foreground > cut)).any()
    # swapping the detector keeps the U-Net's cut
    det_path = tmp_path / "det.pt"
    assert replace_detector(load_checkpoint(path), load_checkpoint(det_path)).config == (
        loaded.config
    )
    with pytest.raises(ValueError, match="no foreground U-Net"):
        with_foreground_threshold(load_checkpoint(det_path), 0.6)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        with_foreground_threshold(saved, 1.5)


def test_cascade_trains_both_stages(tmp_path):
    cascade, _, _ = _cascade(tmp_path)
    cascade.train()
    sample = _brightfield(5)
    from napari_semiconv.core.data.dataset import to_target

    image, target = to_target(sample)
    losses = cascade([image], [target])
    assert "loss_foreground" in losses and "loss_embedding" in losses
    sum(losses.values()).backward()
    assert cascade.foreground.head.weight.grad is not None
    assert cascade.backbone.body.conv1.weight.grad is not None


def test_attach_refuses_a_non_binary_detector(tmp_path):
    model = build_model(tiny_model_config(input_mode="brightfield"))
    path = save_checkpoint(tmp_path / "bf.pt", model, {"name": "bf"})
    with pytest.raises(ValueError, match="binary-input detector"):
        attach_foreground(load_checkpoint(path), build_foreground_net())


def test_replace_detector_keeps_the_unet_and_the_cascade_card(tmp_path):
    cascade, _, net = _cascade(tmp_path)
    card = {**cascade.card, "name": "bf", "history": "U-Net stages", "metrics": {"AP": 0.5}}
    old = load_checkpoint(save_checkpoint(tmp_path / "c.pt", cascade, card))
    torch.manual_seed(1)
    newer = build_model(tiny_model_config(box_score_thresh=0.0)).eval()
    path = save_checkpoint(tmp_path / "det2.pt", newer, {"name": "det2", "metrics": {"AP": 0.9}})
    swapped = replace_detector(old, load_checkpoint(path))
    state = swapped.state_dict()
    for key, value in newer.state_dict().items():  # the detector is the new one...
        torch.testing.assert_close(state[key], value)
    for key, value in net.state_dict().items():  # ...and the U-Net the cascade's
        torch.testing.assert_close(state[f"foreground.{key}"], value)
    assert swapped.config == old.config
    # the card: the cascade's own entries kept, the detector's replaced, stale metrics dropped
    assert swapped.card["name"] == "bf" and swapped.card["history"] == "U-Net stages"
    assert swapped.card["detector_name"] == "det2"
    assert swapped.card["detector_metrics"] == {"AP": 0.9} and "metrics" not in swapped.card
    with pytest.raises(ValueError, match="no foreground U-Net"):
        replace_detector(load_checkpoint(path), load_checkpoint(path))
    with pytest.raises(ValueError, match="binary-input detector"):
        replace_detector(old, old)
