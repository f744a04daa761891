"""Reader for a plain folder of annotated images: ``root/images/`` + ``root/labels/``.

An image and its labels are matched by file stem: ``images/well7.tif`` goes with
``labels/well7.tif``, or with ``labels/well7_instances.tif`` / ``_labels`` / ``_masks`` (the names
this project's exports use, so corrected results can be trained on). When several match, the
instance stack (``_instances``) is preferred because it keeps overlapping worms.

Images: TIFF, PNG, JPEG or BMP, grey or RGB(A); a TIFF tagged ``normalised_tag(mode)`` (a
fine-tuning rectangle, saved normalised) is used as it is. Labels: a 2-D label image (one
integer id per worm) or an N×H×W stack of worm masks (TIFF), the same height and width as the
image.
"""

from __future__ import annotations

import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

from napari_semiconv.core.data.arrays import (
    check_one_label_per_worm,
    labels_to_masks,
    sample_from_arrays,
)
from napari_semiconv.core.data.sample import Sample
from napari_semiconv.core.preprocess import check_input_mode

__all__ = ["IMAGE_SUFFIXES", "normalised_tag", "read_folders", "read_image"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
# preferred first: an instance stack keeps overlaps, a label image does not
_LABEL_TAGS = ("_instances", "", "_labels", "_label", "_masks", "_mask")


_NORMALISED_KEY = "napari_semiconv_normalised"


def normalised_tag(input_mode: str) -> str:
    """The TIFF description marking an image saved already normalised for ``input_mode`` (a
    fine-tuning rectangle cut from its image normalised as a whole): read as it is."""
    return json.dumps({_NORMALISED_KEY: check_input_mode(input_mode)})


def _normalised_for(path: Path) -> str | None:
    """The input mode a TIFF was saved normalised for (its description's tag), or None."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    with tifffile.TiffFile(path) as tif:
        description = tif.pages.first.description if len(tif.pages) else ""
    try:
        tag = json.loads(description)
    except ValueError:
        return None
    return tag.get(_NORMALISED_KEY) if isinstance(tag, dict) else None


# What the decoders raise on a damaged file: PIL gives OSError ("image file is truncated") or
# SyntaxError ("broken PNG file"), tifffile ValueError, zlib.error or struct.error, and codec
# plugins RuntimeError subclasses; EOFError/IndexError come from files cut short in a header.
_READ_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    RuntimeError,
    struct.error,
    zlib.error,
)


def read_image(path: str | Path) -> np.ndarray:
    """The pixels of an image file (TIFF through tifffile, others through imageio).

    Raises:
        ValueError: ``"<path>: cannot read (...)"`` for a damaged, truncated or empty file,
            so that training stops naming the file rather than a decoder's bare message.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(tifffile.imread(path))
        else:
            import imageio.v3 as iio

            arr = np.asarray(iio.imread(path))
    except _READ_ERRORS as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from exc
    # a TIFF cut off after its header decodes to a 0-size array instead of failing
    if arr.size == 0:
        raise ValueError(f"{path}: cannot read (no pixels: the file is empty or truncated)")
    return arr


def _check_labels(labels: np.ndarray, where: str, labels_path: Path) -> None:
    """Refuse a label (or stack slice) that covers several separate worms: a 0/255 foreground
    mask would otherwise train as one giant worm. Same rule as fine-tuning's ``check_pair``."""
    if labels.ndim == 2:
        check_one_label_per_worm(labels, where, labels_path.name)
    elif labels.ndim == 3:
        for k, plane in enumerate(labels):
            check_one_label_per_worm(plane != 0, where, f"{labels_path.name} slice {k}")


def _sample(image: np.ndarray, labels: np.ndarray, image_path: Path, mode: str) -> Sample:
    stem = image_path.stem
    normalised = _normalised_for(image_path)
    if normalised is None:
        return sample_from_arrays(image, labels, mode, stem)
    if normalised != mode:
        raise ValueError(
            f"saved normalised for {normalised!r} input; a model taking {mode!r} input cannot "
            "train on it (fine-tune a model of the same kind)"
        )
    return Sample(image, labels_to_masks(labels, image.shape), stem)


def _files(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if (
            path.is_file()
            and path.suffix.lower() in IMAGE_SUFFIXES
            and not path.name.startswith(".")
        ):
            if path.stem in out:
                raise ValueError(
                    f"two files with stem {path.stem!r} in {folder}: {out[path.stem].name}, "
                    f"{path.name}; keep one"
                )
            out[path.stem] = path
    return out


def unpaired_files(root: str | Path) -> list[str]:
    """What :func:`read_folders` skips in ``root``, one note per kind: images without a label
    file of their name, and label files without an image (a typo, a stray space, another
    tool's suffix). Empty when every file is paired or a sub-folder is missing."""
    root = Path(root).expanduser()
    if not ((root / "images").is_dir() and (root / "labels").is_dir()):
        return []
    images, labels = _files(root / "images"), _files(root / "labels")
    paired = {stem for stem in images for t in _LABEL_TAGS if stem + t in labels}
    lonely = [path.name for stem, path in images.items() if stem not in paired]
    wanted = {stem + tag for stem in images for tag in _LABEL_TAGS}
    orphans = [labels[stem].name for stem in sorted(set(labels) - wanted)]
    notes = []
    if lonely:
        notes.append(f"skipped, no label file of the same name in labels/: {', '.join(lonely)}")
    if orphans:
        notes.append(f"skipped, no image of the same name in images/: {', '.join(orphans)}")
    return notes


def read_folders(root: str | Path, input_mode: str) -> list[Sample]:
    """Samples of ``root/images`` matched to ``root/labels`` by stem, sorted by image name.

    Images without labels are skipped with a warning (and so are labels without an image).

    Raises:
        FileNotFoundError: ``root/images`` or ``root/labels`` missing.
        ValueError: bad input mode, no image with labels, an unreadable/mismatched pair, or a
            label in several separate worm-sized pieces (a foreground mask, not one label per
            worm; the rule of fine-tuning's ``check_pair``). The message names the file.
    """
    mode = check_input_mode(input_mode)
    root = Path(root).expanduser()
    folders = {name: root / name for name in ("images", "labels")}
    for folder in folders.values():
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} not found: a folders dataset needs {root}/images/ and {root}/labels/ "
                "with matching file names"
            )
    images, labels = _files(folders["images"]), _files(folders["labels"])
    samples = []
    for stem, image_path in images.items():
        match = next((labels[stem + t] for t in _LABEL_TAGS if stem + t in labels), None)
        if match is None:  # said below, with the labels that have no image
            continue
        # read outside the try: a read error names its file with the full path already
        image, label_data = read_image(image_path), read_image(match)
        try:
            sample = _sample(image, label_data, image_path, mode)
        except ValueError as err:
            raise ValueError(f"{image_path.name} / {match.name}: {err}") from err
        # after _sample, whose checks give the clearer message for bad dtypes or shapes
        _check_labels(label_data, f"{image_path.name} / {match.name}", match)
        samples.append(sample)
    for note in unpaired_files(root):
        warnings.warn(f"{root}: {note}", stacklevel=2)
    if not samples:
        raise ValueError(f"no image in {folders['images']} has labels in {folders['labels']}")
    return samples
