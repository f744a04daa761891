"""Pixel size: a napari layer's scale as TIFF resolution, and back.

The exported TIFFs carry the pixel size as TIFF resolution, which Fiji reads as the pixel width:
in pixels per centimetre (ResolutionUnit CENTIMETER) when the unit is a known length
(:func:`cm_per_unit`), else XResolution = 1 / x, YResolution = 1 / y pixels per unit with
ResolutionUnit NONE (a unit TIFF cannot name, or none). :func:`read_tiff_pixel_size` reads it back
from these files and from other writers' (ImageJ, metric units); units are spelled as
:func:`normalise_unit` spells them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tifffile

__all__ = [
    "PixelSize",
    "check_pixel_size",
    "cm_per_unit",
    "normalise_unit",
    "pixel_size_from_scale",
    "pixel_unit_of",
    "read_tiff_pixel_size",
]


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


# One spelling per length unit, whoever wrote it: ImageJ says "micron", pint (napari's
# Layer.units) "micrometer", people "um"; a record or a comparison must not depend on which.
# Keys are lower-cased; both the micro sign (U+00B5) and the Greek mu (U+03BC) are accepted.
_SPELLINGS = {
    **dict.fromkeys(
        ("µm", "μm", "um", "micron", "microns", "micrometer", "micrometers", "micrometre",
         "micrometres", "\\u00b5m"),
        "µm",
    ),
    **dict.fromkeys(("nm", "nanometer", "nanometers", "nanometre", "nanometres"), "nm"),
    **dict.fromkeys(("mm", "millimeter", "millimeters", "millimetre", "millimetres"), "mm"),
    **dict.fromkeys(("cm", "centimeter", "centimeters", "centimetre", "centimetres"), "cm"),
    **dict.fromkeys(("m", "meter", "meters", "metre", "metres"), "m"),
}  # fmt: skip
# napari's default unit, and ImageJ's for an uncalibrated image: no physical size at all
_NO_UNIT = frozenset(("", "pixel", "pixels", "px"))
_CM_PER_UNIT = {"nm": 1e-7, "µm": 1e-4, "mm": 0.1, "cm": 1.0, "m": 100.0}


def normalise_unit(unit: object) -> str | None:
    """One spelling of a pixel-size unit: "µm" for micron / um / micrometer / µm, likewise "nm",
    "mm", "cm", "m"; None for no unit (None, "", "pixel"); any other unit as given, stripped.
    ``unit`` may be anything whose ``str`` names it (a pint unit from napari's Layer.units)."""
    if unit is None:
        return None
    text = str(unit).strip()
    key = text.lower()
    if key in _NO_UNIT:
        return None
    return _SPELLINGS.get(key, text)


def cm_per_unit(unit: object) -> float | None:
    """Centimetres per ``unit`` for a length TIFF resolution can carry (nm, µm, mm, cm, m in
    any spelling :func:`normalise_unit` knows), else None."""
    return _CM_PER_UNIT.get(normalise_unit(unit) or "")


def pixel_unit_of(units: Sequence[object] | None) -> str | None:
    """The unit of a napari layer's y and x axes (the last two of ``Layer.units``), or None when
    there is none to record: no units (napari before 0.6), napari's default "pixel", or y and x
    in different units (one pixel size cannot say both)."""
    if units is None or len(units) < 2:
        return None
    y, x = (normalise_unit(u) for u in tuple(units)[-2:])
    return y if y == x else None


# TIFF's metric resolution units (MILLIMETER and MICROMETER are tifffile extensions), as
# micrometres per unit
_UM_PER_UNIT = {
    tifffile.RESUNIT.CENTIMETER: 1e4,
    tifffile.RESUNIT.MILLIMETER: 1e3,
    tifffile.RESUNIT.MICROMETER: 1.0,
}


def read_tiff_pixel_size(path: str | os.PathLike[str]) -> PixelSize | None:
    """The pixel size a TIFF's first page records as resolution, or None if it records none.

    ResolutionUnit NONE (what this package writes when the unit is not a known length, and what
    ImageJ writes for microns, naming the unit in its header) gives 1 / resolution in that unit
    (None if not named), spelled as :func:`normalise_unit` spells it; a metric unit (CENTIMETER,
    what this package writes for a known length) gives micrometres, "µm". None for no resolution,
    for the (1, 1) tifffile writes by default, and for inch resolutions: those are mostly the
    72 dpi image editors write, which says nothing of the sample.
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
        # ImageJ escapes µ; one spelling for micron / um / µm (normalise_unit)
        unit = normalise_unit(str(named).replace("\\u00B5", "µ")) if named else None
        if unit is None and (y, x) == (1.0, 1.0):
            return None
        return PixelSize(y, x, unit)
    factor = _UM_PER_UNIT.get(unit_code)
    if factor is None:
        return None
    return PixelSize(float(f"{y * factor:.10g}"), float(f"{x * factor:.10g}"), "µm")
