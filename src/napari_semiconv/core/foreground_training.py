"""Training and running the foreground U-Net (``core.model.foreground``), and making a cascade.

The target of an image is the union of its worm masks, which is exactly what the binary-input
model was trained on (``core.data.bbbc010``: the paper's binary input is that union), so the
foreground net's output can be handed to that model unchanged.

Loss: ``core.model.foreground.foreground_loss`` (cross-entropy plus soft Dice).
Augmentation: the detector's (``core.data.augment``): random crops, flips and quarter turns, and
a random gamma / gain / offset and noise, so the net does not learn one microscope's exposure.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from napari_semiconv.core.checkpoint import Checkpoint, model_from_checkpoint
from napari_semiconv.core.data.augment import augment
from napari_semiconv.core.data.sample import Sample
from napari_semiconv.core.model.builder import SemiConvMaskRCNN, build_model
from napari_semiconv.core.model.foreground import (
    FOREGROUND_THRESHOLD,
    ForegroundNet,
    foreground_loss,
)

__all__ = [
    "ForegroundProgress",
    "attach_foreground",
    "cascade_card",
    "cascade_normalisation",
    "check_detector",
    "foreground_iou",
    "foreground_of",
    "foreground_target",
    "predict_foreground",
    "random_batch",
    "replace_detector",
    "set_foreground_threshold",
    "train_foreground_steps",
    "with_foreground_threshold",
]


@dataclass(frozen=True)
class ForegroundProgress:
    """One optimiser step: ``step`` of ``total`` (``total`` None under a time budget)."""

    step: int
    total: int | None
    loss: float
    seconds: float


def foreground_target(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool union of (N, H, W) worm masks (all background when N is 0)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != tuple(shape):
        raise ValueError(f"masks must be (N, {shape[0]}, {shape[1]}), got {masks.shape}")
    return masks.any(axis=0) if len(masks) else np.zeros(shape, bool)


def _padded(image: np.ndarray, target: np.ndarray, crop: int) -> Sample:
    """(image, target) as a one-mask Sample at least ``crop`` on a side (``augment`` shrinks a
    window to a smaller image; a batch needs equal crops): padded with the image's own border."""
    height, width = image.shape
    if height < crop or width < crop:
        pad = ((0, max(0, crop - height)), (0, max(0, crop - width)))
        image, target = np.pad(image, pad, mode="edge"), np.pad(target, pad)
    return Sample(image, target[None], "foreground")


def random_batch(
    images: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    rng: np.random.Generator,
    batch_size: int,
    crop: int,
    jitter: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, crop, crop) augmented images and their (B, 1, crop, crop) float targets.

    The detector's own augmentation (``core.data.augment``: crop, flips, quarter turns and the
    bright-field intensity jitter at strength ``jitter``), at native scale, with the foreground
    as the one mask.
    """
    xs, ys = [], []
    for _ in range(batch_size):
        index = int(rng.integers(len(images)))
        sample = _padded(images[index], targets[index], crop)
        out = augment(sample, rng, crop, input_mode="brightfield", scale=(1.0, 1.0), jitter=jitter)
        xs.append(out.image)
        ys.append(out.masks.any(axis=0) if len(out.masks) else np.zeros((crop, crop), bool))
    x = torch.from_numpy(np.stack(xs).astype(np.float32))[:, None]
    y = torch.from_numpy(np.stack(ys).astype(np.float32))[:, None]
    return x, y


def train_foreground_steps(
    net: ForegroundNet,
    samples: Sequence[Sample],
    steps: int | None = 600,
    time_budget: float | None = None,
    batch_size: int = 8,
    crop: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    amp: bool = False,
    jitter: float = 1.0,
) -> Generator[ForegroundProgress, None, ForegroundNet]:
    """Train ``net`` in place on bright-field ``samples``; yields a progress record per step.

    Adam with a cosine decay of ``lr`` to zero over ``steps``, or over ``time_budget`` seconds
    when given (the schedule then follows the elapsed fraction of the budget). ``amp``: forward
    under bf16 autocast (×2.2 per step on an AVX512-BF16 CPU; the loss in float32). ``jitter``:
    strength of the intensity jitter (``core.data.augment``), in [0, 1]. Stop early by no
    longer iterating; the net keeps what it has learned so far. Returns ``net`` in eval mode.

    Raises:
        ValueError: no samples, neither ``steps`` nor ``time_budget``, or bad sizes.
    """
    if not samples:
        raise ValueError("no training images for the foreground net")
    if steps is None and time_budget is None:
        raise ValueError("give a number of steps or a time budget")
    if steps is not None and int(steps) < 1 or time_budget is not None and time_budget <= 0:
        raise ValueError(f"steps and time_budget must be positive, got {steps}, {time_budget}")
    if not 0.0 <= float(jitter) <= 1.0:
        raise ValueError(f"jitter must be in [0, 1], got {jitter}")
    if int(batch_size) < 1 or int(crop) < 16:
        raise ValueError(f"batch_size must be >= 1 and crop >= 16, got {batch_size}, {crop}")
    images = [np.asarray(s.image, np.float32) for s in samples]
    targets = [foreground_target(s.masks, s.image.shape) for s in samples]
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net.to(device).train()
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    start = time.perf_counter()
    step = 0
    while True:
        elapsed = time.perf_counter() - start
        done = max(
            step / steps if steps is not None else 0.0,
            elapsed / time_budget if time_budget is not None else 0.0,
        )
        if done >= 1.0:
            break
        for group in optimiser.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + np.cos(np.pi * done))
        x, y = random_batch(images, targets, rng, int(batch_size), int(crop), float(jitter))
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            logits = net(x.to(device))
        loss = foreground_loss(logits.float(), y.to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        yield ForegroundProgress(step, steps, float(loss.detach()), time.perf_counter() - start)
    return net.eval()


@torch.no_grad()
def predict_foreground(net: ForegroundNet, grey: np.ndarray) -> np.ndarray:
    """(H, W) float32 foreground probability of a normalised (H, W) bright-field image."""
    grey = np.asarray(grey, dtype=np.float32)
    if grey.ndim != 2:
        raise ValueError(f"expected a normalised (H, W) image, got shape {grey.shape}")
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        x = torch.from_numpy(np.ascontiguousarray(grey))[None, None].to(device)
        return torch.sigmoid(net(x))[0, 0].float().cpu().numpy()
    finally:
        net.train(was_training)


def check_detector(detector: Checkpoint) -> None:
    """Refuse a detector a cascade cannot use (called before training, so no work is lost).

    Raises:
        ValueError: the detector does not take binary input, or is already a cascade.
    """
    config = detector.config
    if config.input_mode != "binary" or config.foreground_width:
        raise ValueError(
            "a cascade needs a binary-input detector (such as worms-binary); this one takes "
            f"{config.input_mode!r} input"
            + (" and already has a foreground U-Net" if config.foreground_width else "")
        )


def attach_foreground(
    detector: Checkpoint, net: ForegroundNet, threshold: float = FOREGROUND_THRESHOLD
) -> SemiConvMaskRCNN:
    """A bright-field cascade: ``net`` in front of a binary-input detector's weights.

    The result's config is the detector's with ``input_mode="brightfield"``, the U-Net's
    architecture and its cut ``threshold`` (``ModelConfig.foreground_threshold``); its state
    is the detector's plus the U-Net's under ``foreground.``. Its card is the detector's, which
    the caller extends (recipe, data, metrics). Eval mode, on the CPU.

    Raises:
        ValueError: the detector does not take binary input (or is already a cascade), or the
            threshold is not in (0, 1).
    """
    check_detector(detector)
    config = detector.config
    fg = net.config
    cascade_config = dataclasses.replace(
        config,
        input_mode="brightfield",
        foreground_width=fg.width,
        foreground_depth=fg.depth,
        foreground_max_width=fg.max_width,
        foreground_threshold=threshold,
    )
    model = build_model(cascade_config)
    state = dict(detector.state_dict)
    state.update({f"foreground.{k}": v.detach().cpu() for k, v in net.state_dict().items()})
    model.load_state_dict(state, strict=True)
    model.card = cascade_card(detector.card, threshold)
    return model.eval()


def foreground_of(cascade: Checkpoint) -> ForegroundNet:
    """The U-Net of a cascade checkpoint (its architecture and weights), to train further.

    Raises:
        ValueError: the checkpoint has no foreground U-Net (it is not a cascade).
    """
    if not cascade.config.foreground_width:
        raise ValueError(
            "this model has no foreground U-Net to start from (it is not a bright-field cascade "
            "such as worms-brightfield)"
        )
    net = model_from_checkpoint(cascade, device="cpu").foreground
    assert net is not None  # foreground_width > 0 builds one
    return net


# the detector's card entries that describe the detector, not the cascade: kept under detector_*
_DETECTOR_KEYS = (
    "name", "description", "data", "recipe", "step", "fold", "metrics", "metrics_protocol",
    "cross_validation", "history", "created", "normalisation", "preprocessing", "postprocess",
)  # fmt: skip


def cascade_card(detector_card: dict, threshold: float = FOREGROUND_THRESHOLD) -> dict:
    """A cascade's starting card: the detector's own entries moved under ``detector_<key>``
    (its metrics are not the cascade's) and the bright-field input described."""
    card = {(f"detector_{k}" if k in _DETECTOR_KEYS else k): v for k, v in detector_card.items()}
    card["input_mode"] = "brightfield"
    card["preprocessing"] = {"grey": "luminance", "normalise": "brightfield"}
    card["normalisation"] = cascade_normalisation(threshold)
    return card


def cascade_normalisation(threshold: float) -> str:
    """A cascade card's description of its input, which names the U-Net's cut."""
    return (
        "core.preprocess.normalise(brightfield): per-image percentiles -> [0, 1]; the foreground "
        f"U-Net's probability > {threshold:g} is the detector's binary input"
    )


# a cascade's own card entries, which describe the cascade and its U-Net, not the detector
_CASCADE_KEYS = ("name", "description", "detector", "foreground_training", "history")


def replace_detector(cascade: Checkpoint, detector: Checkpoint) -> SemiConvMaskRCNN:
    """``cascade`` with ``detector`` in place of its detector; its U-Net is unchanged.

    Why: when the binary-input detector is trained further, the bright-field cascade should get
    it without its U-Net being trained again (nor its cut changed). The card takes the new
    detector's entries (under ``detector_<key>``) and keeps the cascade's own
    (``_CASCADE_KEYS``); the cascade's metrics are dropped, since they measured the old
    detector.

    Raises:
        ValueError: ``cascade`` has no U-Net, or ``detector`` is not a binary-input detector.
    """
    threshold = cascade.config.foreground_threshold
    model = attach_foreground(detector, foreground_of(cascade), threshold)
    model.card.update({k: cascade.card[k] for k in _CASCADE_KEYS if k in cascade.card})
    return model


def with_foreground_threshold(cascade: Checkpoint, threshold: float) -> SemiConvMaskRCNN:
    """``cascade`` with its U-Net cut at ``threshold`` (``ModelConfig.foreground_threshold``),
    its weights unchanged.

    The card's description of the input follows; its metrics are dropped, since they measured
    the old cut (the caller records new ones).

    Raises:
        ValueError: ``cascade`` has no U-Net, or ``threshold`` is not in (0, 1).
    """
    if not cascade.config.foreground_width:
        raise ValueError("this model has no foreground U-Net whose cut could be set")
    model = model_from_checkpoint(cascade, device="cpu")
    model.card = {k: v for k, v in model.card.items() if k not in ("metrics", "metrics_protocol")}
    set_foreground_threshold(model, threshold)
    return model.eval()


def set_foreground_threshold(model: SemiConvMaskRCNN, threshold: float) -> None:
    """Give a cascade model the U-Net cut ``threshold`` for good: its config (validated, so
    saved with it) and its card's description of the input.

    Raises:
        ValueError: ``threshold`` is not in (0, 1).
    """
    model.config = dataclasses.replace(model.config, foreground_threshold=float(threshold))
    model.card["normalisation"] = cascade_normalisation(model.config.foreground_threshold)


def foreground_iou(
    net: ForegroundNet, samples: Sequence[Sample], threshold: float = FOREGROUND_THRESHOLD
) -> list[float]:
    """Per sample, the IoU of the U-Net map above ``threshold`` with the union of its worms."""
    scores = []
    for sample in samples:
        pred = predict_foreground(net, sample.image) > threshold
        true = foreground_target(sample.masks, sample.image.shape)
        union = int(np.count_nonzero(pred | true))
        scores.append(float(np.count_nonzero(pred & true) / union) if union else 1.0)
    return scores
