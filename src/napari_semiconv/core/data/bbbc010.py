"""Reader for the BBBC010 C. elegans wells (Broad Bioimage Benchmark Collection).

Layout (the collection's own file names)::

    root/images/<...>_<well>_w1_<uuid>.tif     GFP channel (not used)
    root/images/<...>_<well>_w2_<uuid>.tif     bright-field channel, uint16
    root/eachworm/<well>_<nn>_ground_truth.png one 0/255 mask per worm
    root/foreground/<well>_binary.png          RGBA foreground of the well (see below)

Input modes: ``binary`` = the union of the per-worm masks (the paper's protocol, sec. 4.2), so
it needs only ``eachworm/``; ``brightfield`` = the ``w2`` channel normalised per image
(``core.preprocess.normalise``), which needs ``images/`` too.

Alignment, checked here on all 50 training wells (A01-C02), shifts of -2..2 rows and columns:
for every well, the union of the ``eachworm`` masks matches the dark (worm) pixels of ``w2`` best
at zero shift (scoring the mean darkness of w2 below the mask). The ``foreground`` PNGs, in
contrast, match w2 best moved up one row, in all 50 wells, and the union of the eachworm masks
equals the foreground PNG moved up one row (mean IoU 0.998; 0.86 unshifted). So the per-worm
masks are aligned with the images and the foreground PNGs lie one row too low. This reader
therefore takes the eachworm masks as they are and builds the binary input from their union;
``read_foreground`` gives the PNG with its one-row shift corrected. (The ``w1`` GFP channel is
itself registered one to two rows lower than ``w2``; it is not used.)

Images and masks: Ljosa, Sokolnicki & Carpenter, Nature Methods 9:637 (2012); Wählby et al.,
Nature Methods 9:714 (2012). CC BY 3.0.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from napari_semiconv.core.data.folders import read_image
from napari_semiconv.core.data.sample import Sample
from napari_semiconv.core.preprocess import check_input_mode, normalise

__all__ = ["FOREGROUND_ROW_SHIFT", "list_wells", "read_bbbc010", "read_foreground", "read_w2"]

#: Rows to move ``foreground/<well>_binary.png`` by to align it with the images (up by one).
FOREGROUND_ROW_SHIFT = -1

_IMAGE = re.compile(r"_([A-P]\d{2})_(w[12])_")
_WORM = re.compile(r"^([A-P]\d{2})_(\d+)_ground_truth\.png$", re.IGNORECASE)
_WELL_ID = re.compile(r"^[A-P]\d{2}$")


def _resolve_root(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not (path / "eachworm").is_dir() and (path / "train" / "eachworm").is_dir():
        path = path / "train"
    if not (path / "eachworm").is_dir():
        raise FileNotFoundError(
            f"{path} is not a BBBC010 folder: it needs eachworm/ (<well>_<nn>_ground_truth.png "
            "per worm) and, for bright-field input, images/ (the *_w2_*.tif images)"
        )
    return path


def _w2_files(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if not (root / "images").is_dir():
        return found
    for path in sorted((root / "images").glob("*.tif*")):
        match = _IMAGE.search(path.name)
        if match and match.group(2) == "w2":
            found[match.group(1)] = path
    return found


def _worm_files(root: Path) -> dict[str, list[Path]]:
    found: dict[str, list[tuple[int, Path]]] = {}
    for path in (root / "eachworm").iterdir():
        match = _WORM.match(path.name)
        if match:
            found.setdefault(match.group(1).upper(), []).append((int(match.group(2)), path))
    return {well: [p for _, p in sorted(items)] for well, items in sorted(found.items())}


def list_wells(root: str | Path) -> list[str]:
    """The wells of ``root`` that have per-worm masks, sorted ("A01", "A02", ...)."""
    return list(_worm_files(_resolve_root(root)))


def read_w2(root: str | Path, well: str) -> np.ndarray:
    """The raw bright-field (``w2``) image of ``well``, uint16 (H, W), not normalised."""
    path = _w2_files(_resolve_root(root)).get(str(well).upper())
    if path is None:
        raise FileNotFoundError(f"no *_{well}_w2_*.tif in {Path(root) / 'images'}")
    return read_image(path)


def read_foreground(root: str | Path, well: str) -> np.ndarray:
    """``foreground/<well>_binary.png`` as bool (H, W), moved up one row to match the images.

    The row vacated at the bottom is background. See the module docstring for the measurement.
    """
    path = _resolve_root(root) / "foreground" / f"{str(well).upper()}_binary.png"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    raw = read_image(path)
    fg = (raw[..., 0] if raw.ndim == 3 else raw) > 0
    out = np.zeros_like(fg)
    out[:FOREGROUND_ROW_SHIFT] = fg[-FOREGROUND_ROW_SHIFT:]
    return out


def _read_masks(paths: list[Path], well: str) -> np.ndarray:
    """The worm masks (N, H, W) bool of a well; empty ones dropped, so N may be 0."""
    masks, shapes = [], set()
    for path in paths:
        raw = read_image(path)
        mask = (raw[..., 0] if raw.ndim == 3 else raw) > 0
        shapes.add(mask.shape)  # empty masks too: they alone give a worm-free well its size
        if not mask.any():
            warnings.warn(f"BBBC010 {well}: {path.name} is empty; skipped", stacklevel=3)
            continue
        masks.append(mask)
    if len(shapes) > 1:
        raise ValueError(f"BBBC010 {well}: worm masks differ in size: {sorted(shapes)}")
    if not masks:
        # kept as a worm-free sample (all background), which the trainer takes as a negative
        warnings.warn(
            f"BBBC010 {well}: every worm mask is empty; kept as an image without worms",
            stacklevel=3,
        )
        return np.zeros((0, *shapes.pop()), bool)
    return np.stack(masks)


def read_bbbc010(
    root: str | Path, input_mode: str, wells: Iterable[str] | None = None
) -> list[Sample]:
    """Samples of the BBBC010 wells in ``root`` (the folder holding images/ and eachworm/).

    Args:
        root: the BBBC010 folder (or its parent holding ``train/``).
        input_mode: "binary" (union of the worm masks) or "brightfield" (``w2``, normalised).
        wells: well ids to read (e.g. ["A01", "B12"]); None reads every well with worm masks.

    Returns:
        one ``Sample`` per well, named by the well id, in the order of ``wells`` (sorted when
        None). Bright-field input: a well whose ``w2`` image is missing is skipped with a
        warning. Binary input is built from the worm masks alone and needs no image. A well
        whose worm masks are all empty is kept, with a warning, as an image without worms
        (masks of shape (0, H, W)), which trains as background.

    Raises:
        FileNotFoundError: ``root`` lacks eachworm/, or images/ for bright-field input.
        ValueError: a bad input mode, a malformed well id, a requested well without worm masks,
            masks whose size differs from the image's, or a damaged file (named).
    """
    mode = check_input_mode(input_mode)
    path = _resolve_root(root)
    worms = _worm_files(path)
    images = _w2_files(path)
    if mode != "binary" and not (path / "images").is_dir():
        raise FileNotFoundError(
            f"{path} has no images/ folder: bright-field input needs the *_w2_*.tif images"
        )
    if wells is None:
        selected = list(worms)
    else:
        selected = [str(w).strip().upper() for w in ([wells] if isinstance(wells, str) else wells)]
        bad = [w for w in selected if not _WELL_ID.match(w)]
        if bad:
            raise ValueError(f"well ids look like 'A01' (row A-P, two digits), got {bad}")
        missing = [w for w in selected if w not in worms]
        if missing:
            raise ValueError(f"no worm masks for well(s) {missing} in {path / 'eachworm'}")
    samples = []
    for well in selected:
        if mode != "binary" and well not in images:
            warnings.warn(
                f"BBBC010 well {well}: no *_{well}_w2_*.tif in {path / 'images'}; skipped",
                stacklevel=2,
            )
            continue
        masks = _read_masks(worms[well], well)
        if mode == "binary":  # the paper's protocol: the foreground is the masks' union
            image = masks.any(axis=0).astype(np.float32)
        else:
            raw = read_image(images[well])
            if raw.shape != masks.shape[1:]:
                raise ValueError(
                    f"BBBC010 {well}: image {raw.shape} and worm masks {masks.shape[1:]} differ"
                )
            image = normalise(raw, mode)
        samples.append(Sample(image, masks, well))
    return samples
