"""Training augmentation on (image, masks) together: scale jitter, random crop, flips, 90° turns,
and intensity jitter for bright-field input.

Every random choice comes from the ``numpy.random.Generator`` passed in, so an augmented sample
is a function of (sample, generator state) only: runs repeat exactly and resume exactly.
Geometric changes are applied identically to the image and every worm mask; bright-field images
are resampled bilinearly, binary images and masks by nearest neighbour (they stay 0/1).
"""

from __future__ import annotations

import numpy as np

from napari_semiconv.core.data.sample import Sample

__all__ = ["augment", "crop_size", "is_binary_image"]


def crop_size(crop: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``crop`` as (rows, cols), validated (an int is a square)."""
    if crop is None:
        return None
    size = (crop, crop) if np.isscalar(crop) else tuple(crop)  # type: ignore[arg-type]
    if len(size) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 8 for v in size
    ):
        raise ValueError(f"crop must be an int >= 8 or (rows, cols) of such ints, got {crop!r}")
    return int(size[0]), int(size[1])


def is_binary_image(image: np.ndarray) -> bool:
    """Whether every pixel is 0 or 1 (a normalised binary-mode input)."""
    return bool(((image == 0) | (image == 1)).all())


def _source_index(n_out: int, n_in: int, scale: float) -> np.ndarray:
    """Nearest source pixel of each output pixel, pixel centres aligned: (i + 0.5) / s."""
    return np.minimum(((np.arange(n_out) + 0.5) / scale).astype(np.intp), n_in - 1)


def _linear(image: np.ndarray, out_shape: tuple[int, int], scale: float) -> np.ndarray:
    """Separable bilinear resampling with the same pixel-centre alignment as ``_source_index``."""
    out = image
    for axis, n_out in enumerate(out_shape):
        n_in = out.shape[axis]
        pos = np.clip((np.arange(n_out) + 0.5) / scale - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        w = (pos - lo).astype(np.float32)
        shape = (-1, 1) if axis == 0 else (1, -1)
        out = np.take(out, lo, axis=axis) * (1 - w.reshape(shape)) + np.take(
            out, hi, axis=axis
        ) * w.reshape(shape)
    return out.astype(np.float32)


def _window(
    union_rows: np.ndarray,
    union_cols: np.ndarray,
    size: tuple[int, int],
    shape: tuple[int, int],
    rng: np.random.Generator,
) -> tuple[int, int]:
    """Top-left of a ``size`` window; up to 5 tries for one that sees some worm."""
    y = x = 0
    for _ in range(5):
        y = int(rng.integers(0, shape[0] - size[0] + 1))
        x = int(rng.integers(0, shape[1] - size[1] + 1))
        if union_rows[y : y + size[0]].any() and union_cols[x : x + size[1]].any():
            break
    return y, x


def augment(
    sample: Sample,
    rng: np.random.Generator,
    crop: int | tuple[int, int] | None = None,
    *,
    input_mode: str | None = None,
    scale: tuple[float, float] = (0.85, 1.18),
    turns: bool = True,
    jitter: float = 1.0,
) -> Sample:
    """A randomly transformed copy of ``sample`` (the input is not changed).

    Args:
        sample: the sample to augment.
        rng: the random generator.
        crop: output window (rows, cols) or an int for a square; None keeps the whole image.
            A window larger than the (scaled) image is shrunk to it; no padding. Quarter turns
            swap rows and columns of a non-square window.
        input_mode: "binary" or "brightfield"; None infers it (binary when every pixel is 0/1).
            Intensity jitter (gamma, gain, offset, noise) is for bright-field only.
        scale: range of the zoom factor, drawn log-uniformly (worm size changes a little between
            microscopes; BBBC010 itself is at one magnification).
        turns: allow the 90° turns (flips are always on).
        jitter: strength of the bright-field intensity jitter, in [0, 1]: 1 draws gamma from
            0.7-1.4, gain 0.85-1.15, offset ±0.08 and noise up to 0.03; smaller values shrink
            every range towards none (0). A gamma moves where a blurred worm edge crosses a
            given grey level, so a net that must place edges to the pixel (the foreground
            U-Net) may want less of it than the detector.

    Returns:
        a new Sample; worms that the crop removes entirely are dropped.
    """
    binary = is_binary_image(sample.image) if input_mode is None else input_mode == "binary"
    if not 0.0 <= float(jitter) <= 1.0:
        raise ValueError(f"jitter must be in [0, 1], got {jitter}")
    height, width = sample.image.shape
    lo, hi = scale
    if not 0 < lo <= hi:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}")
    s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    want = crop_size(crop) or (int(round(height * s)), int(round(width * s)))
    # the source window that becomes the output after scaling by s
    src = (min(height, int(np.ceil(want[0] / s))), min(width, int(np.ceil(want[1] / s))))
    out = (min(want[0], int(round(src[0] * s))), min(want[1], int(round(src[1] * s))))
    out = (max(out[0], 1), max(out[1], 1))
    masks = sample.masks
    union = masks.any(axis=0) if len(masks) else np.zeros((height, width), dtype=bool)
    y, x = _window(union.any(axis=1), union.any(axis=0), src, (height, width), rng)
    image = sample.image[y : y + src[0], x : x + src[1]]
    masks = masks[:, y : y + src[0], x : x + src[1]]
    if out != src or abs(s - 1.0) > 1e-6:
        rows = _source_index(out[0], src[0], s)
        cols = _source_index(out[1], src[1], s)
        masks = masks[:, rows][:, :, cols]
        image = image[rows][:, cols] if binary else _linear(image, out, s)

    if rng.random() < 0.5:
        image, masks = image[::-1], masks[:, ::-1]
    if rng.random() < 0.5:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    k = int(rng.integers(0, 4)) if turns else 0
    if k:
        image, masks = np.rot90(image, k), np.rot90(masks, k, axes=(1, 2))

    image = np.array(image, dtype=np.float32)  # contiguous copy
    if not binary:
        # the same draws at every strength, shrunk towards none below 1 (at 1 the arithmetic
        # is the original's, so earlier runs repeat exactly)
        log_gamma = rng.uniform(np.log(0.7), np.log(1.4))
        gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-0.08, 0.08)
        noise = rng.uniform(0.0, 0.03)
        if jitter != 1.0:
            log_gamma, gain = jitter * log_gamma, 1.0 + jitter * (gain - 1.0)
            offset, noise = jitter * offset, jitter * noise
        image = np.clip(image, 0, 1) ** float(np.exp(log_gamma)) * gain + offset
        if noise > 0:
            image += rng.normal(0.0, noise, image.shape).astype(np.float32)
        image = np.clip(image, 0.0, 1.0).astype(np.float32)
    masks = np.ascontiguousarray(masks)
    keep = masks.any(axis=(1, 2))
    return Sample(image, masks[keep], sample.name)
