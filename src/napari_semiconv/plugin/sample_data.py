"""napari sample data: synthetic worms (bright-field and binary) and the paper's dot grid.

Everything is generated offline and deterministically (fixed seeds), so the samples work without
a network connection. Each command returns an image layer and a labels layer of the truth;
where worms cross, the later worm's label is shown (the truth keeps both masks in the core).
Nothing here imports torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["dot_grid", "worms_binary", "worms_brightfield"]

LayerData = tuple[np.ndarray, dict[str, Any], str]


def _label_image(masks: np.ndarray) -> np.ndarray:
    """(H, W) uint16 label image of (N, H, W) masks, ids 1..N (later masks on top)."""
    labels = np.zeros(masks.shape[1:], dtype=np.uint16)
    for i, mask in enumerate(masks, start=1):
        labels[mask] = i
    return labels


def _layers(
    image: np.ndarray, masks: np.ndarray, name: str, **image_kwargs: Any
) -> list[LayerData]:
    return [
        (image, {"name": name, **image_kwargs}, "image"),
        (_label_image(masks), {"name": f"{name} truth", "opacity": 0.5}, "labels"),
    ]


def worms_brightfield() -> list[LayerData]:
    """A synthetic BBBC010-like bright-field well (uint16) and its worms."""
    from napari_semiconv.core.synthetic.worms import synthetic_worms

    image, masks = synthetic_worms(seed=0, render="brightfield")
    return _layers(image, masks, "synthetic worms (bright-field)", colormap="gray")


def worms_binary() -> list[LayerData]:
    """The binary foreground (float32 0/1) of the same synthetic well, and its worms."""
    from napari_semiconv.core.synthetic.worms import synthetic_worms

    image, masks = synthetic_worms(seed=0, render="binary")
    return _layers(
        image, masks, "synthetic worms (binary)", colormap="gray", contrast_limits=(0.0, 1.0)
    )


def dot_grid() -> list[LayerData]:
    """The paper's Fig. 3a: a regular grid of identical dots, and one label per dot."""
    from napari_semiconv.core.synthetic.dots import dot_grid as make_dot_grid

    image, masks = make_dot_grid(seed=0)
    return _layers(image, masks, "dot grid", colormap="gray", contrast_limits=(0.0, 1.0))
