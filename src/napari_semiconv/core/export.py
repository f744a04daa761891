"""The four output files of a segmentation run, written atomically and never overwriting.

For a run named ``stem`` in ``out_dir``:

- ``<stem>_labels.tif``: (H, W) label image, instance k -> label k + 1, overlaps resolved by score
  (higher wins); uint16 (uint32 beyond 65535 worms); zlib-compressed, lossless.
- ``<stem>_instances.tif``: (N, H, W) uint8 stack, plane k = instance k (label k + 1) with values
  0/1, so overlapping worms are all kept. A run with no worm writes a 0 x H x W stack (tifffile
  stores the shape in its metadata and reads it back as such; other TIFF readers may see a blank
  page).
- ``<stem>_measurements.csv``: one row per instance, columns
  :data:`~napari_semiconv.core.measurements.MEASUREMENT_COLUMNS` in that order.
- ``<stem>_run.json``: ``run_info`` as given, plus ``"versions"`` (package versions) and, when a
  pixel size is given, ``"pixel_size"`` ([y, x], world units per pixel) and ``"pixel_unit"`` (if
  known, spelled as :func:`~napari_semiconv.core.pixel_size.normalise_unit` spells it: "µm" for
  micron / um / micrometer), so the pixel-unit measurements can be converted.

Pixel size: both TIFFs then carry it as TIFF resolution. With a unit that is a known length (nm,
µm, mm, cm, m) it is in pixels per centimetre, ResolutionUnit CENTIMETER, the standard unit Fiji,
tifffile and :func:`read_tiff_pixel_size` (which gives it back in µm) take as a physical size;
otherwise XResolution = 1 / x and YResolution = 1 / y pixels per (unnamed) unit, ResolutionUnit
NONE. No ImageJ hyperstack header is written: that format cannot hold uint32/uint64 labels nor a
0-worm stack, and would change how the stacks read back.

If any of the four exists and ``overwrite`` is False, :class:`FileExistsError` names it before
anything is written. All four are rendered in memory first, then each is written atomically; if a
later one fails, the ones this call had newly created are removed again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .atomic import atomic_write_bytes, check_writable_target
from .measurements import (
    MEASUREMENT_COLUMNS,
    as_instance_stack,
    labels_from_instances,
    measure_instances,
)
from .pixel_size import (
    PixelSize,
    check_pixel_size,
    cm_per_unit,
    normalise_unit,
    pixel_size_from_scale,
    read_tiff_pixel_size,
)

__all__ = [
    "OUTPUT_SUFFIXES",
    "PixelSize",
    "existing_outputs",
    "output_paths",
    "pixel_size_from_scale",
    "read_instances_tif",
    "read_measurements_csv",
    "read_run_json",
    "read_tiff_pixel_size",
    "smallest_label_dtype",
    "write_label_image",
    "write_run_outputs",
]

OUTPUT_SUFFIXES: dict[str, str] = {
    "labels": "_labels.tif",
    "instances": "_instances.tif",
    "measurements": "_measurements.csv",
    "run": "_run.json",
}

_VERSIONED = ("napari-semiconv", "numpy", "torch", "torchvision", "scikit-image", "tifffile")


def output_paths(out_dir: str | os.PathLike[str], stem: str) -> dict[str, Path]:
    """The four target paths of a run, keyed labels / instances / measurements / run."""
    if not stem or any(sep in stem for sep in ("/", "\\")) or stem in (".", ".."):
        raise ValueError(f"the output stem must be a plain file-name prefix, got {stem!r}")
    out = Path(out_dir)
    return {key: out / f"{stem}{suffix}" for key, suffix in OUTPUT_SUFFIXES.items()}


def smallest_label_dtype(labels: np.ndarray) -> np.dtype:
    """Smallest unsigned integer dtype that holds every value of a label array exactly.

    Raises ValueError for negative or non-integer labels.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return np.dtype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating):
            raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError("labels must be whole numbers; found fractional, NaN or inf values")
    if labels.size == 0:
        return np.dtype(np.uint8)
    low, high = labels.min(), labels.max()
    if low < 0:
        raise ValueError(f"labels must be >= 0 to be saved losslessly, found {low}")
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if high <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"label {high} does not fit in 64 bits")


def _tiff_bytes(
    array: np.ndarray,
    axes: str,
    pixel_size: tuple[float, float] | None = None,
    pixel_unit: str | None = None,
) -> bytes:
    buffer = io.BytesIO()
    resolution: dict[str, Any] = {}
    if pixel_size is not None:
        y, x = pixel_size
        cm = cm_per_unit(pixel_unit)
        if cm is not None:
            # a known length: pixels per centimetre, the one metric unit baseline TIFF names, so
            # Fiji and other readers get the physical size without this package's run record
            resolution = {
                "resolution": (1.0 / (x * cm), 1.0 / (y * cm)),
                "resolutionunit": "CENTIMETER",
            }
        else:
            # pixels per unit; NONE because the unit is unknown or not one TIFF can name
            # (tifffile would otherwise say INCH)
            resolution = {"resolution": (1.0 / x, 1.0 / y), "resolutionunit": "NONE"}
    with warnings.catch_warnings():
        # A 0 x H x W stack (no worm) is legal here; tifffile warns it is "nonconformant".
        warnings.filterwarnings("ignore", message=".*zero-size array.*")
        # grey planes, said so: tifffile (and Fiji) would take a stack of 3 or 4 for colour
        tifffile.imwrite(
            buffer,
            array,
            compression="zlib",
            photometric="minisblack",
            metadata={"axes": axes},
            **resolution,
        )
    return buffer.getvalue()


def write_label_image(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    overwrite: bool = False,
    pixel_size: Sequence[float] | None = None,
    pixel_unit: str | None = None,
) -> Path:
    """Write a label array (2-D or more) losslessly to TIFF, atomically, in the smallest unsigned
    dtype that holds it exactly (values unchanged). ``pixel_size`` (y, x) in ``pixel_unit``, if
    given, is stored as the TIFF resolution (module docstring)."""
    pixel = check_pixel_size(pixel_size)
    labels = np.asarray(labels)
    data = labels.astype(smallest_label_dtype(labels), copy=False)
    axes = "YX" if data.ndim == 2 else "Q" * (data.ndim - 2) + "YX"
    check_writable_target(path, overwrite)
    payload = _tiff_bytes(data, axes, pixel, normalise_unit(pixel_unit))
    return atomic_write_bytes(path, payload, overwrite=overwrite)


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(
        f"run_info holds a {type(value).__name__}, which cannot be stored in JSON; "
        "convert it to numbers, strings, lists or dicts first"
    )


def _csv_bytes(rows: list[dict]) -> bytes:
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(MEASUREMENT_COLUMNS)
    for row in rows:
        writer.writerow([row[c] for c in MEASUREMENT_COLUMNS])  # NaN (empty masks) -> "nan"
    return text.getvalue().encode("utf-8")


def _resolve_instances(instances: Any, masks: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    if instances is not None and masks is not None:
        raise TypeError("give either an instances object or masks=/scores=, not both")
    if instances is not None:
        if hasattr(instances, "masks") and hasattr(instances, "scores"):
            masks, scores = instances.masks, instances.scores
        elif isinstance(instances, tuple | list) and len(instances) == 2:
            masks, scores = instances
        else:
            raise TypeError(
                f"instances must have .masks and .scores (or be a (masks, scores) pair), got "
                f"{type(instances).__name__}; to pass arrays use masks=..., scores=... keywords"
            )
    if masks is None:
        raise TypeError("no instances given: pass an Instances object or masks=..., scores=...")
    return as_instance_stack(masks, scores)


def write_run_outputs(
    out_dir: str | os.PathLike[str],
    stem: str,
    instances: Any = None,
    run_info: dict | None = None,
    *,
    masks: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    overwrite: bool = False,
    pixel_size: Sequence[float] | None = None,
    pixel_unit: str | None = None,
) -> dict[str, Path]:
    """Write the four files of a run (module docstring) and return their paths.

    Call as ``write_run_outputs(out_dir, stem, instances, run_info)`` with an object holding
    ``.masks`` (N, H, W) bool and ``.scores`` (N,), or as
    ``write_run_outputs(out_dir, stem, masks=..., scores=..., run_info=...)``. ``scores=None``
    scores every instance 1.0 (e.g. exported annotations). ``out_dir`` is created if missing.
    ``pixel_size`` (y, x) and ``pixel_unit`` (e.g. ``"µm"``; napari's "pixel" counts as none),
    if given, go into both TIFFs' resolution and the run JSON (module docstring); the
    measurements stay in pixels.

    Raises:
        FileExistsError: one of the four files exists and ``overwrite`` is False; nothing written.
        NotADirectoryError: ``out_dir`` is a file.
        OSError: writing failed (read-only folder, disk full); no partial file is left and no
            existing file is changed, and files this call had already created are removed.
    """
    masks, scores = _resolve_instances(instances, masks, scores)
    pixel = check_pixel_size(pixel_size)
    unit = normalise_unit(pixel_unit)  # "micron", "micrometer", "um": all recorded as "µm"
    run_info = {} if run_info is None else run_info
    if not isinstance(run_info, dict):
        raise TypeError(f"run_info must be a dict, got {type(run_info).__name__}")
    paths = output_paths(out_dir, stem)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"cannot write the run outputs: {out} is a file, not a folder")
    existing = [str(p) for p in existing_outputs(out_dir, [stem])]
    if existing and not overwrite:
        raise FileExistsError(
            f"refusing to overwrite existing output(s): {', '.join(existing)}; "
            "choose another output folder or name, or remove them"
        )

    versions = run_info.get("versions", {})
    if not isinstance(versions, dict):
        raise TypeError(f"run_info['versions'] must be a dict, got {type(versions).__name__}")
    geometry: dict[str, Any] = {}
    if pixel is not None:
        geometry["pixel_size"] = list(pixel)
        if unit:
            geometry["pixel_unit"] = unit
    try:
        record = json.dumps(
            {**run_info, **geometry, "versions": {**_versions(), **versions}},
            indent=2,
            default=_json_default,
            allow_nan=False,
        )
    except ValueError as exc:
        raise ValueError(f"run_info holds NaN or inf, which JSON cannot store ({exc})") from exc

    # Render everything in memory first, so a failure here writes nothing at all.
    payloads = {
        "labels": _tiff_bytes(labels_from_instances(masks, scores), "YX", pixel, unit),
        "instances": _tiff_bytes(masks.astype(np.uint8), "ZYX", pixel, unit),
        "measurements": _csv_bytes(measure_instances(masks, scores)),
        "run": (record + "\n").encode("utf-8"),
    }

    out.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    try:
        for key, data in payloads.items():
            existed = paths[key].exists()
            atomic_write_bytes(paths[key], data, overwrite=overwrite)
            if not existed:
                created.append(paths[key])
    except BaseException:
        for path in created:  # all or nothing, as far as this call created files
            path.unlink(missing_ok=True)
        raise
    return paths


def existing_outputs(out_dir: str | os.PathLike[str], stems: list[str]) -> list[Path]:
    """The run-output files of ``stems`` (:func:`output_paths`) that already exist in
    ``out_dir``: what :func:`write_run_outputs` refuses to overwrite."""
    return [p for stem in stems for p in output_paths(out_dir, stem).values() if p.exists()]


def read_instances_tif(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an ``*_instances.tif`` stack as (N, H, W) bool.

    A 2-D file holds one instance per non-zero id (a label image; a one-worm stack saved flat
    has the single id). A colour image (interleaved samples) is refused: its channels would
    read as worms. (Stacks of 3 or 4 that earlier versions saved tagged as planar RGB are
    read as stacks.)
    """
    path = Path(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*zero-size.*")
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first if len(tif.pages) else None
            samples = page.samplesperpixel if page is not None else 1
            if samples > 1 and page.planarconfig == tifffile.PLANARCONFIG.CONTIG:
                raise ValueError(
                    f"{path} holds a colour image ({samples} samples per pixel), not an "
                    "(N, H, W) stack of worm masks"
                )
        data = tifffile.imread(path)
    if data.ndim == 2:
        ids = np.unique(data[data != 0])
        return data[None] == ids[:, None, None]
    if data.ndim != 3:
        raise ValueError(f"{path} holds an array of shape {data.shape}, not an (N, H, W) stack")
    return data != 0


def read_run_json(path: str | os.PathLike[str]) -> dict:
    """Read a ``*_run.json`` record; ValueError naming the file if it is not a JSON object."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds a JSON {type(record).__name__}, not a run record object")
    return record


def read_measurements_csv(path: str | os.PathLike[str]) -> list[dict]:
    """Read a ``*_measurements.csv`` back: one dict per row, numbers as int or float."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"label", "score"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} lacks the column(s) {sorted(missing)}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row = {}
            for key, value in raw.items():
                try:
                    row[key] = int(value)
                except (TypeError, ValueError):
                    try:
                        row[key] = float(value)
                    except (TypeError, ValueError):
                        raise ValueError(
                            f"{path}, line {line}: column {key!r} holds {value!r}, not a number"
                        ) from None
            rows.append(row)
    return rows
