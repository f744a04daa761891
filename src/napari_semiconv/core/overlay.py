"""A picture of a result: the image, each worm's outline in its own colour, and the
displacement arrows u → u + Φ_u (eq. 4) on a subsample of foreground pixels.

Used by ``napari-semiconv demo``; napari shows the same as layers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_semiconv.core.atomic import atomic_writer
from napari_semiconv.core.visualise import displacement_vectors


def write_overlay_png(
    path: str | os.PathLike[str],
    image: np.ndarray,
    masks: np.ndarray,
    displacement: np.ndarray,
    title: str = "",
    stride: int = 12,
) -> Path:
    """Write the overlay figure atomically (never over an existing file); return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    grey = np.asarray(image, dtype=np.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=-1)
    lo, hi = np.percentile(grey, (1, 99.8))
    fig, ax = plt.subplots(figsize=(grey.shape[1] / 80, grey.shape[0] / 80), dpi=100)
    ax.imshow(grey, cmap="gray", vmin=lo, vmax=hi)
    colours = plt.get_cmap("tab20")
    rgba = np.zeros((*grey.shape, 4), dtype=np.float32)
    for k, mask in enumerate(masks):
        rgba[find_boundaries(mask, mode="inner")] = colours(k % 20)
    ax.imshow(rgba)
    foreground = masks.any(axis=0) if len(masks) else np.zeros(grey.shape, bool)
    vectors = displacement_vectors(displacement, foreground, stride=stride)
    if len(vectors):
        ax.quiver(
            vectors[:, 0, 1], vectors[:, 0, 0], vectors[:, 1, 1], vectors[:, 1, 0],
            angles="xy", scale_units="xy", scale=1, color="yellow", width=0.0015,
        )  # fmt: skip
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    fig.tight_layout()
    with atomic_writer(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return Path(path)
