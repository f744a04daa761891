"""The ``Sample`` record every reader produces and the trainer consumes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Sample"]


@dataclass
class Sample:
    """One annotated image.

    Attributes:
        image: float32 (H, W), already normalised for the model's input mode
            (``core.preprocess.normalise``).
        masks: bool (N, H, W), one mask per worm, overlaps kept (N may be 0: an image without
            worms, or a crop that missed them all).
        name: where it came from (a BBBC010 well id such as "A01", a file stem, ...).

    The constructor checks and converts: ``image`` to float32, ``masks`` to bool (0/1 values
    only); ValueError names what is wrong.
    """

    image: np.ndarray
    masks: np.ndarray
    name: str

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        if image.dtype.kind not in "biuf" or image.ndim != 2 or image.size == 0:
            raise ValueError(
                f"Sample {self.name!r}: image must be a non-empty 2-D real array, "
                f"got shape {image.shape} dtype {image.dtype}"
            )
        image = image.astype(np.float32, copy=False)
        bad = int(np.count_nonzero(~np.isfinite(image)))
        if bad:
            raise ValueError(f"Sample {self.name!r}: image has {bad} NaN/inf pixel(s)")
        masks = np.asarray(self.masks)
        if masks.ndim != 3 or masks.shape[1:] != image.shape:
            raise ValueError(
                f"Sample {self.name!r}: masks must be (N, H, W) with (H, W) = image "
                f"{image.shape}, got {masks.shape}"
            )
        if masks.dtype != bool:
            if masks.dtype.kind not in "biuf" or not np.isin(masks, (0, 1)).all():
                raise ValueError(
                    f"Sample {self.name!r}: masks must be boolean (or 0/1), got dtype "
                    f"{masks.dtype}; convert a label image with data.arrays.sample_from_arrays"
                )
            masks = masks.astype(bool)
        if not isinstance(self.name, str):
            raise ValueError(f"Sample name must be a str, got {self.name!r}")
        self.image, self.masks = image, masks

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return self.image.shape  # type: ignore[return-value]

    @property
    def n_worms(self) -> int:
        """The number of worm masks N."""
        return int(self.masks.shape[0])
