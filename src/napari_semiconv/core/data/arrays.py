"""A ``Sample`` from in-memory arrays (napari layers, numpy): an image and its worm labels."""

from __future__ import annotations

import numpy as np

from napari_semiconv.core.data.sample import Sample
from napari_semiconv.core.preprocess import check_input_mode, normalise, to_grey

__all__ = [
    "PIECE_MIN_AREA",
    "SCATTERED_PIECES",
    "check_one_label_per_worm",
    "labels_to_masks",
    "sample_from_arrays",
]

# A label in this many separate pieces (of at least PIECE_MIN_AREA px) is several worms: among
# the 710 worms of the 50 BBBC010 training wells, flattened to one label image (crossing worms
# cut each other), none has more than 3; one label painted over a well's worms has 7-12.
SCATTERED_PIECES = 5
PIECE_MIN_AREA = 20


def labels_to_masks(labels: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Worm masks (N, H, W) bool from a 2-D label image or an N×H×W instance stack.

    A 2-D label image holds one integer id per worm (0 = background; ids need not be
    consecutive; masks come in increasing id order). A stack holds one mask per slice (any
    non-zero pixel is the worm), which is the only way to keep overlapping worms; empty slices
    are dropped.

    Raises:
        ValueError: wrong number of dimensions, a size other than ``shape``, non-integer or
            negative labels, a 2-D boolean mask (ambiguous: one worm or a foreground?), or no
            worm at all.
    """
    arr = np.asarray(labels)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise ValueError(f"labels must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"labels must be a 2-D label image or an N×H×W stack of masks, got shape {arr.shape}"
        )
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]  # a label image saved with a leading axis of one (1×H×W): its ids count
    if (
        arr.ndim == 3
        and arr.shape[-1] in (3, 4)
        and (shape is None or arr.shape[:2] == tuple(shape))
    ):
        raise ValueError(
            f"labels of shape {arr.shape} are a colour (RGB/RGBA) image, not a label image: "
            "save the labels as one integer id per pixel (a grey label TIFF or PNG)"
        )
    if shape is not None and arr.shape[-2:] != tuple(shape):
        raise ValueError(
            f"labels of shape {arr.shape} do not match the image's (H, W) = {tuple(shape)}; "
            "give labels drawn on this image (2-D H×W or N×H×W)"
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError("labels contain NaN or infinite values")
    if arr.ndim == 3:
        for k, plane in enumerate(arr):
            values = plane[plane != 0]
            if values.size and values.min() != values.max():
                # a stack of label images, not of masks: each slice would become one worm
                ids = np.unique(values).size
                raise ValueError(
                    f"slice {k} of the N×H×W labels holds {ids} different ids: a stack "
                    "holds one worm's 0/1 mask per slice; give several worms as one 2-D label "
                    "image (one id per worm)"
                )
        masks = arr != 0
        masks = masks[masks.any(axis=(1, 2))]
    else:
        if arr.dtype == bool:
            raise ValueError(
                "labels is a 2-D boolean mask: give a label image (one integer id per worm) or "
                "an N×H×W stack of masks (mask[None] for a single worm)"
            )
        if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
            raise ValueError("a 2-D label image must hold integer ids; got fractional values")
        if (arr < 0).any():
            raise ValueError("a 2-D label image must not hold negative ids")
        ids = np.unique(arr)
        ids = ids[ids != 0]
        masks = arr[None] == ids[:, None, None].astype(arr.dtype)
    if len(masks) == 0:
        raise ValueError("labels are empty (no worm); annotate at least one worm")
    return masks


def sample_from_arrays(
    image: np.ndarray, labels: np.ndarray, input_mode: str, name: str = "array"
) -> Sample:
    """A ``Sample``: ``image`` normalised for ``input_mode``, ``labels`` as worm masks.

    Args:
        image: 2-D grey or (H, W, 3|4) colour image, any numeric dtype.
        labels: a 2-D label image (H, W) or an N×H×W stack of worm masks (overlaps kept).
        input_mode: "binary" or "brightfield" (see ``core.preprocess``).
        name: the sample's name.

    Raises:
        ValueError: see ``labels_to_masks`` and ``core.preprocess.to_grey``.
    """
    mode = check_input_mode(input_mode)
    grey_shape = to_grey(image).shape
    masks = labels_to_masks(labels, grey_shape)
    return Sample(normalise(image, mode), masks, str(name))


def check_one_label_per_worm(labels: np.ndarray, where: str, name: str) -> None:
    """Refuse a label in ``SCATTERED_PIECES`` or more separate pieces of ``PIECE_MIN_AREA`` px:
    several worms painted with one label (a foreground mask of a sparse plate, which the
    ``GIANT_FRACTION`` rule misses: all 15 worms of a BBBC010 well cover 4 %)."""
    from scipy import ndimage

    ids, compact = np.unique(labels, return_inverse=True)  # any ids -> 0..K (0 = background)
    compact = compact.reshape(labels.shape)
    if ids.size and ids[0] != 0:  # no background pixel: shift so that every id is counted
        ids, compact = np.concatenate([[0], ids]), compact + 1
    for k, box in enumerate(ndimage.find_objects(compact), start=1):
        if box is None:
            continue
        pieces, n = ndimage.label(compact[box] == k)
        big = int((np.bincount(pieces.ravel())[1:] >= PIECE_MIN_AREA).sum()) if n else 0
        if big >= SCATTERED_PIECES:
            raise ValueError(
                f"{where}: label {int(ids[k])} of {name!r} is in {big} separate pieces: several "
                "worms painted with one label (a foreground mask?), not one label per worm. Give "
                "every worm its own label (e.g. start from the Segment widget's result with "
                "'Correct this result')"
            )
