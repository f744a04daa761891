"""npe2 reader for the ``<stem>_instances.tif`` stacks written by a run (command
``napari-semiconv.get_reader``).

A Labels layer holds one id per pixel, so overlapping worms cannot share one (napari issue 269).
Opening ``<stem>_instances.tif`` therefore gives two layers:

- ``<stem> worms``: the (H, W) label image, plane k -> label k + 1. Where worms overlap, the higher
  score wins, scores read from the sibling ``<stem>_measurements.csv`` (its ``label``/``score``
  columns); without that file (or if it does not describe the stack) the lower plane wins. The
  CSV's columns, if present, become the layer's ``features`` (shown on hover).
- ``<stem> instances``: the (N, H, W) stack itself as a hidden Labels layer, plane k holding
  label k + 1, so every worm is kept whole, overlaps included. Left out when the run found no worm.

``<stem>_labels.tif`` (Export's label image), and a 2-D ``*_instances.tif`` (a label image
saved under that name, e.g. by another tool), have no overlaps to keep: they give the worms
layer only, with the values as they are (no N×H×W stack is made), so the labels can be
corrected and fine-tuned on at once.

Both layers get the pixel size the stack records as TIFF resolution (as Export and
``predict`` write it) as their scale, so they land on the scaled image they were made from. A
length unit is stored in centimetres and read back in µm; where the sibling ``<stem>_run.json``
records the same size in another unit (an image scaled in nm or mm), the layers take the record's
numbers, so they still line up with that image (napari does not convert between layers' units).
With napari >= 0.6 the layers also get that unit (``Layer.units``).

Any other file: ``get_reader`` returns None, so napari asks other readers. No torch import here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_semiconv.core.export import (
    read_instances_tif,
    read_measurements_csv,
    read_run_json,
    read_tiff_pixel_size,
)
from napari_semiconv.core.measurements import label_dtype, labels_from_instances
from napari_semiconv.core.pixel_size import PixelSize, cm_per_unit, normalise_unit

__all__ = ["get_reader", "read_instance_stacks"]

_LABEL_SUFFIXES = ("_labels.tif", "_labels.tiff")
_SUFFIXES = ("_instances.tif", "_instances.tiff", *_LABEL_SUFFIXES)

LayerData = tuple[Any, dict, str]


def _stem(path: str | Path) -> str | None:
    name = Path(path).name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_instance_stacks` for ``*_instances.tif(f)`` files, else None."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or any(_stem(p) is None or not Path(p).is_file() for p in paths):
        return None
    return read_instance_stacks


def _features(path: Path, stem: str, n: int, up_to: bool = False) -> dict[str, np.ndarray] | None:
    """Columns of ``<stem>_measurements.csv`` if it describes exactly labels 1..n, else None.
    ``up_to``: labels 1..m with m >= n will do (a label image may hide a worm under others)."""
    csv_path = path.with_name(f"{stem}_measurements.csv")
    if n == 0 or not csv_path.is_file():
        return None
    try:
        rows = read_measurements_csv(csv_path)
    except (OSError, ValueError) as exc:
        warnings.warn(f"ignoring {csv_path.name}: {exc}", stacklevel=3)
        return None
    if up_to and len(rows) >= n:
        n = len(rows)
    if sorted(r["label"] for r in rows) != list(range(1, n + 1)):
        what = (
            f"its labels 1..{len(rows)} do not cover the image's labels (up to {n}); the "
            "worms are shown without measurements"
            if up_to
            else f"its labels do not match the {n} planes of the stack; overlaps are "
            "resolved by plane order"
        )
        warnings.warn(f"ignoring {csv_path.name}: {what}", stacklevel=3)
        return None
    rows = sorted(rows, key=lambda r: r["label"])
    columns = {key: np.array([r[key] for r in rows]) for key in rows[0]}
    return {"index": np.arange(1, n + 1), **{k: v for k, v in columns.items() if k != "label"}}


def read_instance_stacks(path: str | list[str]) -> list[LayerData]:
    """Layer data tuples for one or more ``*_instances.tif`` files (see the module docstring)."""
    layers: list[LayerData] = []
    for item in [path] if isinstance(path, str | Path) else path:
        file = Path(item)
        stem = _stem(file) or file.stem
        labels = _label_image(file)
        if labels is not None:  # one id per pixel: no overlap to keep, no stack
            top = int(labels.max()) if labels.size else 0
            meta, _, pixel = _worms_meta(file, stem, top, up_to=True)
            if pixel is not None and labels.ndim > 2:  # only y and x are scaled
                meta["scale"] = (1.0,) * (labels.ndim - 2) + (pixel.y, pixel.x)
                meta.update(_units(pixel, labels.ndim))
            layers.append((labels, meta, "labels"))
            continue
        masks = read_instances_tif(file)
        n = masks.shape[0]
        worms_meta, features, pixel = _worms_meta(file, stem, n)
        scores = None if features is None else features["score"].astype(np.float64)
        if scores is not None and not np.all(np.isfinite(scores)):
            scores = None  # an unreadable score: fall back to plane order
        layers.append((labels_from_instances(masks, scores), worms_meta, "labels"))
        if n:
            ids = np.arange(1, n + 1, dtype=label_dtype(n))[:, None, None]
            stack = masks.astype(ids.dtype) * ids
            stack_meta = {
                "name": f"{stem} instances",
                "visible": False,
                "metadata": {"source": str(file), "overlaps_kept": True},
            }
            if features is not None:
                stack_meta["features"] = features
            if pixel is not None:  # the first axis counts worms: not scaled
                stack_meta["scale"] = (1.0, pixel.y, pixel.x)
                stack_meta.update(_units(pixel, 3))
            layers.append((stack, stack_meta, "labels"))
    return layers


def _label_image(file: Path) -> np.ndarray | None:
    """A file that is a label image, as it is: ``*_labels.tif`` (Export's label image) of any
    dimensionality, or a 2-D ``*_instances.tif`` (one worm saved flat, or a label image from
    another tool); None for a stack of worms. An (N, H, W) stack is never made of it: 900
    labels on 240×240 px made a 104 MB hidden stack."""
    import tifffile

    labels_file = file.name.lower().endswith(_LABEL_SUFFIXES)
    if not labels_file:
        with tifffile.TiffFile(file) as tif:
            if not tif.series or len(tif.series[0].shape) != 2:
                return None
    data = tifffile.imread(file)
    if data.dtype.kind not in "biu" or (data.size and data.min() < 0):
        if labels_file:
            raise ValueError(f"{file} holds {data.dtype} values, not labels (0, 1, 2, ...)")
        return None  # read_instances_tif reads any non-zero pixel as a worm
    if data.ndim != 2 and not labels_file:
        return None
    return data.astype(label_dtype(int(data.max()) if data.size else 0), copy=False)


def _worms_meta(file: Path, stem: str, n: int, up_to: bool = False) -> tuple[dict, Any, Any]:
    """The worms layer's metadata (name, source, features, scale), the features, the pixel."""
    features = _features(file, stem, n, up_to)
    pixel = _pixel_size(file, stem)
    worms_meta: dict[str, Any] = {"name": f"{stem} worms", "metadata": {"source": str(file)}}
    if features is not None:
        worms_meta["features"] = features
    if pixel is not None:
        worms_meta["scale"] = (pixel.y, pixel.x)
        worms_meta.update(_units(pixel, 2))
    return worms_meta, features, pixel


def _pixel_size(file: Path, stem: str) -> PixelSize | None:
    """The pixel size ``file`` records, in the unit of its run record where that record gives
    the same physical size: TIFF stores a length in cm (read back in µm), and a layer scaled in
    nm or mm would otherwise get numbers 1000 times off its image."""
    pixel = read_tiff_pixel_size(file)
    if pixel is None or pixel.unit != "µm":
        return pixel
    try:
        record = read_run_json(file.with_name(f"{stem}_run.json"))
        y, x = (float(v) for v in record.get("pixel_size"))
    except (OSError, ValueError, TypeError):  # no record, or none that says a pixel size
        return pixel
    unit = normalise_unit(record.get("pixel_unit"))
    cm = cm_per_unit(unit)
    # a record whose size differs belongs to another image (or was edited): the file wins
    if cm is None or not np.allclose((y * cm * 1e4, x * cm * 1e4), pixel[:2], rtol=1e-6, atol=0):
        return pixel
    return PixelSize(y, x, unit)


def _napari_has_units() -> bool:
    """Whether napari's layers take ``units`` (0.6 and later); an older one refuses the key."""
    from importlib import metadata

    try:
        major, minor = (int(part) for part in metadata.version("napari").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (0, 6)


def _units(pixel: PixelSize, ndim: int) -> dict[str, Any]:
    """``{"units": ...}`` for a layer of ``ndim`` axes whose last two have ``pixel``'s unit, or
    {} where there is none to give: no unit, a unit napari may not parse, or an older napari."""
    if cm_per_unit(pixel.unit) is None or not _napari_has_units():
        return {}
    return {"units": ("pixel",) * (ndim - 2) + (pixel.unit, pixel.unit)}
