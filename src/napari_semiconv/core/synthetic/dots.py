"""The synthetic dot grid of the paper's Fig. 3a (sec. 4.1): identical dots on a regular grid.

Every dot is the same disc, so a translation-invariant (convolutional) embedding cannot tell the
copies apart; a semi-convolutional one can. With the default margin (half the spacing) the image
is exactly periodic: tiling it repeats the grid, which makes a circularly padded CNN exactly
translation invariant from one dot to the next.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dot_grid"]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def dot_grid(
    rows: int = 5,
    cols: int = 5,
    spacing: int = 12,
    radius: float = 3.0,
    seed: int = 0,
    *,
    margin: int | None = None,
    noise: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A regular ``rows`` × ``cols`` grid of identical dots (Fig. 3a).

    Dot centres lie on integer pixels at ``margin + i * spacing`` (rows) and
    ``margin + j * spacing`` (columns); ``margin`` defaults to ``spacing // 2``, which makes the
    image ``rows*spacing`` × ``cols*spacing`` and periodic. A dot is every pixel within
    ``radius`` of its centre (so all dots have exactly the same pixels, relative to the centre).

    Args:
        noise: standard deviation of Gaussian noise added to the image, drawn with ``seed``
            (default 0: no noise, the image is then independent of ``seed``).

    Returns:
        ``image`` float32 (H,W), dots 1.0 on background 0.0 (plus noise), and ``masks`` bool
        (N,H,W), N = rows·cols, one per dot, in row-major grid order. Deterministic.
    """
    rows = _positive_int("rows", rows)
    cols = _positive_int("cols", cols)
    spacing = _positive_int("spacing", spacing)
    if not (isinstance(radius, (int, float)) and 0 < radius):
        raise ValueError(f"radius must be a positive number, got {radius!r}")
    if 2 * radius >= spacing:
        raise ValueError(
            f"radius {radius} is too large for spacing {spacing}: dots would touch; "
            "use radius < spacing / 2"
        )
    margin = spacing // 2 if margin is None else margin
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or margin < radius:
        raise ValueError(f"margin must be an integer >= radius ({radius}), got {margin!r}")
    if not (noise >= 0 and np.isfinite(noise)):
        raise ValueError(f"noise must be a finite non-negative number, got {noise!r}")

    # spacing % 2: with an odd spacing and the default margin this makes H = rows * spacing
    height = 2 * margin + (rows - 1) * spacing + spacing % 2
    width = 2 * margin + (cols - 1) * spacing + spacing % 2
    yy, xx = np.mgrid[0:height, 0:width]
    masks = np.zeros((rows * cols, height, width), dtype=bool)
    for i in range(rows):
        for j in range(cols):
            cy, cx = margin + i * spacing, margin + j * spacing
            masks[i * cols + j] = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    image = masks.any(0).astype(np.float32)
    if noise > 0:
        image += np.random.default_rng(seed).normal(0.0, noise, image.shape).astype(np.float32)
    return image, masks
