"""npe2 writer: a napari Labels layer to a lossless TIFF (command ``napari-semiconv.write_labels``).

- Lossless and bit-exact: the values are stored unchanged, zlib-compressed, in the smallest
  unsigned dtype that holds the largest label (uint8, uint16, uint32 or uint64). Negative or
  fractional labels cannot be stored that way and raise ValueError.
- Atomic: the data go to a temporary file beside the target, which replaces the target only once
  complete, so a failed save never leaves a half-written file or destroys the previous one.
- Overwriting: napari's *Save Layer* dialog asks the user before it calls a writer on an existing
  file, so this writer replaces the file (atomically) once called. Code that must never overwrite
  should call :func:`napari_semiconv.core.export.write_label_image` (``overwrite=False`` by
  default, FileExistsError).
- A multiscale layer is saved at its full resolution (level 0).
- Pixel size: the layer's scale (its last two axes, y and x) is stored as the TIFF resolution,
  so Fiji and this plugin's reader put the labels on the scaled image again: in pixels per
  centimetre (ResolutionUnit CENTIMETER) when the layer's units are micrometres, else 1 / scale
  pixels per unit (ResolutionUnit NONE). A scale that TIFF cannot hold (zero, negative) is left
  out.

No torch import here: napari imports this module when it saves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_semiconv.core.export import pixel_size_from_scale, write_label_image
from napari_semiconv.core.pixel_size import pixel_unit_of

__all__ = ["write_labels"]

_EXTENSIONS = (".tif", ".tiff")
# other files' extensions: a name ending so was meant for another writer, and is refused
_OTHER_FORMATS = frozenset(
    ".png .jpg .jpeg .bmp .gif .jp2 .webp .svg .csv .json .txt .npy .npz .zarr .h5 .hdf5 "
    ".n5 .czi .nd2 .lif .mrc .pdf".split()
)


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write one Labels layer's ``data`` to ``path`` (.tif/.tiff); return ``[path]``.

    A path without a .tif/.tiff extension gets ``.tif`` appended, so a name with dots in it
    (``2024.05.01_A01 worms``, napari's default for a layer of ``2024.05.01_A01.tif``) is
    saved whole; a name ending in another format's extension (``.png``) is refused.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix in _OTHER_FORMATS:
        raise ValueError(f"the label TIFF writer writes .tif/.tiff files, not {target.name!r}")
    if suffix not in _EXTENSIONS:
        target = target.with_name(target.name + ".tif")
    if isinstance(data, list | tuple):  # multiscale: the first level is the full resolution
        if not data:
            raise ValueError("the labels layer holds no data to save")
        data = data[0]
    labels = np.asarray(data)
    if labels.ndim < 2:
        raise ValueError(f"a labels layer to save must be at least 2-D, got shape {labels.shape}")
    pixel_size = pixel_size_from_scale(meta.get("scale"))
    # a layer in micrometres is saved with that physical size (pixels per cm, which Fiji and the
    # reader give back in µm); another unit keeps its own numbers, unit unnamed, since the reader
    # would give it back in µm and napari does not convert between layers' units
    unit = pixel_unit_of(meta.get("units"))
    write_label_image(
        target,
        labels,
        overwrite=True,
        pixel_size=pixel_size,
        pixel_unit=unit if unit == "µm" else None,
    )
    return [str(target)]
