"""Pixel size: a napari layer's scale as TIFF resolution, and back.

The exported TIFFs carry the pixel size as TIFF resolution (XResolution = 1 / x, YResolution =
1 / y pixels per unit, ResolutionUnit NONE: a napari scale has no unit of its own), which Fiji
reads as the pixel width; :func:`read_tiff_pixel_size` reads it back from these files and from
other writers' (ImageJ, metric units).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tifffile

__all__ = ["PixelSize", "check_pixel_size", "pixel_size_from_scale", "read_tiff_pixel_size"]


class PixelSize(NamedTuple):
    """The size of one pixel along y and x, in ``unit`` (None: not known)."""

    y: float
    x: float
    unit: str | None = None


def pixel_size_from_scale(scale: Sequence[float] | None) -> tuple[float, float] | None:
    """The (y, x) pixel size of a napari-style ``scale`` (its last two entries), or None where it
    cannot be stored as TIFF resolution: fewer than two entries, or a zero, negative (a flipped
    axis) or non-finite one."""
    if scale is None or len(scale) < 2:
        return None
    y, x = (float(v) for v in scale[-2:])
    if not all(np.isfinite(v) and v > 0 for v in (y, x)):
        return None
    return y, x


def check_pixel_size(pixel_size: Sequence[float] | None) -> tuple[float, float] | None:
    """``pixel_size`` as (y, x) floats, or None for None; ValueError for anything else."""
    if pixel_size is None:
        return None
    values = tuple(pixel_size)
    checked = pixel_size_from_scale(values) if len(values) == 2 else None
    if checked is None:
        raise ValueError(
            f"pixel_size must be two positive finite numbers (y, x), got {pixel_size!r}"
        )
    return checked


# TIFF's metric resolution units (MILLIMETER and MICROMETER are tifffile extensions), as
# micrometres per unit
_UM_PER_UNIT = {
    tifffile.RESUNIT.CENTIMETER: 1e4,
    tifffile.RESUNIT.MILLIMETER: 1e3,
    tifffile.RESUNIT.MICROMETER: 1.0,
}


def read_tiff_pixel_size(path: str | os.PathLike[str]) -> PixelSize | None:
    """The pixel size a TIFF's first page records as resolution, or None if it records none.

    ResolutionUnit NONE (what this package writes, and what ImageJ writes for microns, naming the
    unit in its header) gives 1 / resolution in that unit (None if not named); a metric unit gives
    micrometres. None for no resolution, for the (1, 1) tifffile writes by default, and for inch
    resolutions: those are mostly the 72 dpi image editors write, which says nothing of the sample.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*zero-size.*")
        with tifffile.TiffFile(path) as tif:
            if not len(tif.pages):
                return None
            tags = tif.pages.first.tags
            xres, yres = tags.valueof(282), tags.valueof(283)
            unit_code = tags.valueof(296, default=tifffile.RESUNIT.INCH)  # TIFF's default
            named = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
    if not (isinstance(xres, tuple) and isinstance(yres, tuple)) or not (xres[0] and yres[0]):
        return None
    # 10 digits: the 32-bit rationals hold no more, and 1e4 / (1e4 / 0.65) should read 0.65
    y, x = (float(f"{res[1] / res[0]:.10g}") for res in (yres, xres))
    if not (y > 0 and x > 0):  # a zero denominator: no usable resolution
        return None
    if unit_code == tifffile.RESUNIT.NONE:
        unit = str(named).replace("\\u00B5", "µ") if named else None  # ImageJ escapes µ
        if unit is not None and unit.lower() in ("pixel", "pixels"):
            unit = None
        if unit is None and (y, x) == (1.0, 1.0):
            return None
        return PixelSize(y, x, unit)
    factor = _UM_PER_UNIT.get(unit_code)
    if factor is None:
        return None
    return PixelSize(float(f"{y * factor:.10g}"), float(f"{x * factor:.10g}"), "µm")
