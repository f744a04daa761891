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
    image is not inverted (worms stay dark). A constant image gives all zeros.

Colour images (H, W, 3) or (H, W, 4) are turned grey by luminance (Rec. 709 weights, alpha
dropped) before either mode.
"""

from __future__ import annotations

import numpy as np

__all__ = ["INPUT_MODES", "check_input_mode", "normalise", "to_grey"]

INPUT_MODES = ("binary", "brightfield")

_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float64)  # Rec. 709 luminance
_PERCENTILES = (1.0, 99.8)


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
    on_gpu = _on_gpu(device) and grey.size <= _QUANTILE_MAX
    if on_gpu:
        import torch

        # float64 on the device too: the same arithmetic as the host's
        x = torch.from_numpy(np.ascontiguousarray(grey)).to(device).double()
        q = torch.tensor([p / 100.0 for p in _PERCENTILES], dtype=torch.float64, device=x.device)
        lo, hi = (float(v) for v in torch.quantile(x.reshape(-1), q).cpu())
    else:
        # float64 arithmetic: hi - lo of a float32 image can overflow float32 (e.g. ±3e38)
        lo, hi = (float(v) for v in np.percentile(grey.astype(np.float64), _PERCENTILES))
    if hi - lo <= 1e-6 * max(abs(hi), 1.0):
        # nearly constant up to the top 0.2 %: fall back on the full range, or give zeros
        lo, hi = float(grey.min()), float(grey.max())
        if hi - lo <= 0:
            return np.zeros(grey.shape, dtype=np.float32)
    if on_gpu:
        return ((x - lo) / (hi - lo)).clamp_(0.0, 1.0).float().cpu().numpy()
    out = (grey.astype(np.float64) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# torch.quantile's limit on the number of elements; larger images use the host's percentile.
# torch.quantile's default linear interpolation is np.percentile's (tests: the two agree).
_QUANTILE_MAX = 2**24


def _on_gpu(device: object) -> bool:
    return device is not None and str(device).startswith("cuda")
