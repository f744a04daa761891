"""Turning any user image into the (H, W) float32 the model expects, per input mode.

Two input modes, fixed when a model is trained (``ModelConfig.input_mode``):

``"binary"`` — a foreground mask: worms 1.0, background 0.0 (the paper's C. elegans protocol,
    sec. 4.2, whose input is BBBC010's binary foreground). Accepted: bool, 0/1, 0/255, 0/65535
    or any two-level image (foreground = value > half the maximum), a soft mask or probability
    map in any range (same rule), and an integer label image with several labels (foreground =
    any non-zero label, since half the maximum label would drop worms). An all-zero image is a
    valid, empty foreground.
``"brightfield"`` — a raw bright-field (transmitted light) image: dark worms in a bright well,
    any intensity range (BBBC010's ``w2`` channel is uint16, about 90-3000). Mapped per image
    by robust percentiles: the 1st percentile -> 0, the 99.8th -> 1, clipped to [0, 1]; the
    image is not inverted (worms stay dark). A constant image gives all zeros. Hot and dead
    pixels (up to four in a 3×3 neighbourhood that differ from its median by more than half
    that percentile range and 6 times the image's noise) take that median first: a camera's
    hot pixels in the dark outside of a well otherwise became small confident "worms" (108 hot
    pixels on A02: 17 worms -> 60 to 77). On the 50 BBBC010 training images the largest such
    difference is 0.25 of the range, so no pixel of them is changed.

Colour images (H, W, 3) or (H, W, 4) are turned grey by luminance (Rec. 709 weights, alpha
dropped) before either mode.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "HOT_PIXEL_NOISE",
    "HOT_PIXEL_RANGE",
    "INPUT_MODES",
    "check_input_mode",
    "normalise",
    "remove_hot_pixels",
    "to_grey",
]

INPUT_MODES = ("binary", "brightfield")

_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float64)  # Rec. 709 luminance
_PERCENTILES = (1.0, 99.8)
#: a hot or dead pixel is this share of the percentile range and this many times the noise
#: away from its 3×3 median (core.preprocess.remove_hot_pixels)
HOT_PIXEL_RANGE = 0.5
HOT_PIXEL_NOISE = 6.0
# the noise σ from the median |step| between neighbours: 1.4826 · median / √2 for Gaussian noise
_NOISE_PER_STEP = 1.4826 / np.sqrt(2.0)


def check_input_mode(input_mode: object) -> str:
    """The input mode, validated; ValueError names the valid ones."""
    if not isinstance(input_mode, str) or input_mode.strip().lower() not in INPUT_MODES:
        raise ValueError(
            f"input_mode must be one of {', '.join(repr(m) for m in INPUT_MODES)}, "
            f"got {input_mode!r}"
        )
    return input_mode.strip().lower()


def _as_real_array(image: object) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise TypeError(
            f"image must be a real numeric array (bool, integer or float), got dtype {array.dtype}"
        )
    if array.size == 0:
        raise ValueError(f"image is empty (shape {array.shape}); give an image with pixels")
    return array


def to_grey(image: np.ndarray) -> np.ndarray:
    """A 2-D float32 copy of ``image``: grey kept, RGB/RGBA -> luminance (alpha dropped).

    Accepts bool, any integer or float dtype; values are kept (uint16 2900 -> 2900.0). Singleton
    axes are dropped first, so (1, H, W) and (H, W, 1) are fine.

    Raises:
        TypeError: not a real numeric array.
        ValueError: empty, more than 2-D without a colour axis last (e.g. a stack or a
            channel-first image: pass one 2-D plane), or NaN/inf pixels (the count is named).
    """
    array = _as_real_array(image)
    # a colour axis last is read as colour before singleton axes go: a (1, W, 3) strip is colour
    colour_last = array.ndim == 3 and array.shape[-1] in (3, 4)
    squeezed = array if colour_last else (array.squeeze() if array.ndim > 2 else array)
    if squeezed.ndim == 3 and squeezed.shape[-1] in (3, 4):
        grey = squeezed[..., :3].astype(np.float64) @ _LUMA
    elif squeezed.ndim == 2:
        grey = squeezed
    else:
        raise ValueError(
            f"image of shape {array.shape} is not 2-D grey nor (H, W, 3|4) colour; "
            "pass a single 2-D plane (e.g. one channel or one time point) or put the colour "
            "axis last"
        )
    # always a copy: callers may change the result without touching the user's array
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.array(grey, dtype=np.float32, copy=True)
    bad = int(np.count_nonzero(~np.isfinite(out)))  # float64 beyond float32's range -> inf
    if bad and np.isfinite(np.asarray(grey, dtype=np.float64)).all():
        raise ValueError(
            f"image has {bad} pixel(s) beyond float32's range (±3.4e38); rescale the image "
            "before segmenting"
        )
    if bad:
        raise ValueError(
            f"image has {bad} NaN or infinite pixel(s) (of {out.size}); replace them "
            "(e.g. numpy.nan_to_num) before segmenting"
        )
    return out


# At most this share of the touching pairs of non-zero pixels may differ in a label image.
LABEL_EDGE_SHARE = 0.1


def _is_label_image(array: np.ndarray) -> bool:
    """An integer image of object ids (a label image), not a 0/max mask nor a grey map.

    Several non-zero values alone do not make labels: an 8-bit probability map or a 0/255 mask
    with a little noise has them too, and reading those as labels would make every non-zero
    pixel foreground. A label image is piecewise constant: two touching non-zero pixels differ
    only where two objects meet (a few % of the pairs), while in a grey map they often differ.
    """
    if array.dtype.kind not in "iu" or array.ndim != 2 or array.size == 0:
        return False
    if array.min() != 0:  # ids are >= 0 with a 0 background; e.g. -3/4 is a grey two-level map
        return False
    if np.unique(array[array != 0]).size <= 1:
        return False
    touching = differ = 0
    for a, b in ((array[1:], array[:-1]), (array[:, 1:], array[:, :-1])):
        both = (a != 0) & (b != 0)
        touching += int(both.sum())
        differ += int((both & (a != b)).sum())
    return differ <= LABEL_EDGE_SHARE * touching


def normalise(image: np.ndarray, input_mode: str, device: object = None) -> np.ndarray:
    """``image`` as the model sees it: float32 (H, W) for ``input_mode`` (see the module doc).

    ``device``: a CUDA device computes the bright-field percentiles and scaling there (the same
    float64 arithmetic; on a GPU machine the host's percentile took 6.6 of the 46 ms of a
    ``segment`` call on a 696×520 image). Anything else, or an image too large for
    ``torch.quantile`` (2**24 pixels), is done on the host.

    Raises:
        ValueError: unknown ``input_mode``, or what ``to_grey`` rejects.
    """
    mode = check_input_mode(input_mode)
    raw = _as_real_array(image)
    if mode == "binary":
        squeezed = raw.squeeze() if raw.ndim > 2 else raw
        if _is_label_image(squeezed):
            return (squeezed != 0).astype(np.float32)
        grey = to_grey(raw)
        top = float(grey.max())
        if top <= 0:  # an empty foreground: nothing is a worm
            return np.zeros(grey.shape, dtype=np.float32)
        return (grey > 0.5 * top).astype(np.float32)

    grey = to_grey(raw)
    if _on_gpu(device) and grey.size <= _QUANTILE_MAX:
        return _normalise_on_device(grey, device)
    # float64 arithmetic: hi - lo of a float32 image can overflow float32 (e.g. ±3e38)
    grey64 = grey.astype(np.float64)
    lo, hi = _percentiles(grey64)
    if remove_hot_pixels(grey64, lo, hi):
        lo, hi = _percentiles(grey64)  # hot pixels beyond the top 0.2 % had raised hi
    span = _span(grey64, lo, hi)
    if span is None:
        return np.zeros(grey.shape, dtype=np.float32)
    lo, hi = span
    return np.clip((grey64 - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _percentiles(grey: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(grey, _PERCENTILES)
    return float(lo), float(hi)


def _nearly_constant(lo: float, hi: float) -> bool:
    return hi - lo <= 1e-6 * max(abs(hi), 1.0)


def _span(grey: Any, lo: float, hi: float) -> tuple[float, float] | None:
    """(lo, hi) to map to (0, 1); None for a constant image."""
    if _nearly_constant(lo, hi):
        # nearly constant up to the top 0.2 %: fall back on the full range, or give zeros
        lo, hi = float(grey.min()), float(grey.max())
        if hi - lo <= 0:
            return None
    return lo, hi


def _hot_step(lo: float, hi: float, noise: float) -> float:
    """How far from its 3×3 median a pixel must be to be hot: HOT_PIXEL_RANGE of the
    percentile range and HOT_PIXEL_NOISE times the noise (0: never)."""
    if _nearly_constant(lo, hi):
        return 0.0
    return max(HOT_PIXEL_RANGE * (hi - lo), HOT_PIXEL_NOISE * noise)


def remove_hot_pixels(grey: np.ndarray, lo: float, hi: float) -> int:
    """Give every hot or dead pixel of ``grey`` (float64, 2-D) the median of its 3×3
    neighbourhood (edges repeated), in place; return how many changed.

    A pixel is hot when it is further from that median than both HOT_PIXEL_RANGE of the
    percentile range ``hi - lo`` and HOT_PIXEL_NOISE times the image's noise (estimated from
    the median step between horizontal neighbours, 1.4826 · median / √2): a spike that stands
    out from the image's contrast and its own noise, where a noisy image's brightest grains do
    not (Gaussian noise: 1 % of pixels are 0.5 of the range from their median, none 6 σ).
    A bright hot pixel is above at least five of the nine values (its median among them), so
    above one of its four nearest neighbours by more than the step: the median is taken only
    at pixels beside such a step, a few ms where a whole-image median filter takes ~45 ms on a
    696×520 image (and nothing more where no step is over HOT_PIXEL_RANGE, as in BBBC010's).
    """
    if grey.ndim != 2 or min(grey.shape) < 2 or _nearly_constant(lo, hi):
        return 0
    across = np.abs(np.diff(grey, axis=1))  # (H, W-1): between x and x+1
    down = np.abs(np.diff(grey, axis=0))  # (H-1, W): between y and y+1
    floor = HOT_PIXEL_RANGE * (hi - lo)
    if not (across > floor).any() and not (down > floor).any():
        return 0
    step = _hot_step(lo, hi, _NOISE_PER_STEP * float(np.median(across)))
    ys, xs = np.nonzero(_beside_steps(np.zeros(grey.shape, dtype=bool), across, down, step))
    if ys.size == 0:
        return 0
    padded = np.pad(grey, 1, mode="edge")
    windows = np.stack([padded[ys + dy, xs + dx] for dy in range(3) for dx in range(3)], axis=0)
    median = np.median(windows, axis=0)
    hot = np.abs(grey[ys, xs] - median) > step
    grey[ys[hot], xs[hot]] = median[hot]
    return int(hot.sum())


def _beside_steps(beside: Any, across: Any, down: Any, step: float) -> Any:
    """``beside`` (all False, numpy or torch) marked at the pixels on either side of a step over
    ``step`` between horizontal (``across``) or vertical (``down``) neighbours."""
    big = across > step
    beside[:, 1:] |= big
    beside[:, :-1] |= big
    big = down > step
    beside[1:] |= big
    beside[:-1] |= big
    return beside


def _normalise_on_device(grey: np.ndarray, device: object) -> np.ndarray:
    """:func:`normalise`'s bright-field mapping on a CUDA device: the same float64 arithmetic,
    and the same hot pixels (:func:`_remove_hot_on_device`)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(grey)).to(device).double()
    q = torch.tensor([p / 100.0 for p in _PERCENTILES], dtype=torch.float64, device=x.device)

    def percentiles() -> tuple[float, float]:
        lo, hi = (float(v) for v in torch.quantile(x.reshape(-1), q).cpu())
        return lo, hi

    lo, hi = percentiles()
    if _remove_hot_on_device(x, lo, hi):
        lo, hi = percentiles()
    span = _span(x, lo, hi)
    if span is None:
        return np.zeros(grey.shape, dtype=np.float32)
    lo, hi = span
    return ((x - lo) / (hi - lo)).clamp_(0.0, 1.0).float().cpu().numpy()


def _remove_hot_on_device(x: Any, lo: float, hi: float) -> int:
    """:func:`remove_hot_pixels` on a torch tensor, step for step (medians only beside a large
    step, so no 9-values-per-pixel copy of a large image is made on the device)."""
    import torch

    if min(x.shape) < 2 or _nearly_constant(lo, hi):
        return 0
    across = (x[:, 1:] - x[:, :-1]).abs()
    down = (x[1:] - x[:-1]).abs()
    floor = HOT_PIXEL_RANGE * (hi - lo)
    if not bool((across > floor).any()) and not bool((down > floor).any()):
        return 0
    # quantile(0.5) interpolates the two middle values as np.median does
    step = _hot_step(lo, hi, _NOISE_PER_STEP * float(torch.quantile(across.reshape(-1), 0.5)))
    beside = _beside_steps(torch.zeros_like(x, dtype=torch.bool), across, down, step)
    ys, xs = torch.nonzero(beside, as_tuple=True)
    if ys.numel() == 0:
        return 0
    padded = torch.nn.functional.pad(x[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    windows = torch.stack([padded[ys + dy, xs + dx] for dy in range(3) for dx in range(3)])
    median = windows.median(dim=0).values  # 9 values: the middle one, as np.median
    hot = (x[ys, xs] - median).abs() > step
    x[ys[hot], xs[hot]] = median[hot]
    return int(hot.sum())


# torch.quantile's limit on the number of elements; larger images use the host's percentile.
# torch.quantile's default linear interpolation is np.percentile's (tests: the two agree).
_QUANTILE_MAX = 2**24


def _on_gpu(device: object) -> bool:
    return device is not None and str(device).startswith("cuda")
