"""A run's worms after the user corrected their label image (in napari's worms layer).

The label image shows one worm per pixel (``core.measurements.labels_from_instances``: worm k is
label k + 1, the surer worm on top where two overlap), while the run's instances keep every
worm whole. After edits, a worm whose label pixels are exactly as the run drew them keeps its
whole mask, overlaps included (erasing its neighbour on top does not cut it); a worm the user
changed, or drew anew, is its label's pixels; a label erased entirely is no worm. A worm of the
run keeps its score; a new one scores 1.0, as annotations do in ``core.export``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_semiconv.core.measurements import labels_from_instances

__all__ = ["EditedWorms", "apply_label_edits"]


@dataclass
class EditedWorms:
    """The worms after the edits, in label order, and what changed (label values)."""

    masks: np.ndarray  # (N, H, W) bool
    scores: np.ndarray  # (N,) float
    changed: list[int] = field(default_factory=list)  # run's worms whose pixels were edited
    added: list[int] = field(default_factory=list)  # labels the run did not make
    removed: list[int] = field(default_factory=list)  # run's worms erased entirely

    def summary(self) -> dict[str, list[int]]:
        """{"changed", "added", "removed"}: label values, for a run record."""
        return {"changed": self.changed, "added": self.added, "removed": self.removed}


def apply_label_edits(
    masks: np.ndarray, scores: np.ndarray, labels: np.ndarray, offset: int = 0
) -> EditedWorms:
    """The worms of a run (``masks`` (N, H, W), ``scores`` (N,)) after edits to their label
    image: ``labels`` (H, W) is what the user's layer holds now (see the module doc).

    ``offset``: worm k is label ``offset + k + 1`` (a stack's layer numbers its worms on across
    the planes: plane 1's first worm follows plane 0's last). Other values are new worms. A worm
    of the run that no pixel showed (wholly under surer ones) cannot have been edited: it is
    kept whole.

    Raises:
        ValueError: ``labels`` is not (H, W) of the masks, or holds negative or fractional values.
    """
    masks = np.asarray(masks, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels)
    if labels.shape != masks.shape[1:]:
        raise ValueError(
            f"the worms layer is {labels.shape} but the run's worms are {masks.shape[1:]}: "
            "was it resized or replaced? Segment again"
        )
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise ValueError("the worms layer holds fractional values; labels are whole numbers")
    if labels.size and labels.min() < 0:
        raise ValueError("the worms layer holds negative values; labels are 0 (background) or more")
    labels = labels.astype(np.int64, copy=False)
    n = masks.shape[0]
    drawn = labels_from_instances(masks, scores).astype(np.int64)
    drawn[drawn != 0] += offset
    present = {int(v) for v in np.unique(labels) if v != 0}
    shown = {int(v) for v in np.unique(drawn) if v != 0}
    hidden = {offset + k + 1 for k in range(n)} - shown  # no pixel of theirs was visible
    out_masks, out_scores = [], []
    changed, added = [], []
    for value in sorted(present | hidden):
        k = value - offset - 1  # the run's worm this label was, if 0 <= k < n
        if value in hidden and value not in present:
            out_masks.append(masks[k])
            out_scores.append(float(scores[k]))
            continue
        now = labels == value
        if 0 <= k < n:
            if np.array_equal(now, drawn == value):
                out_masks.append(masks[k])  # untouched: whole, overlaps kept
            else:
                out_masks.append(now)
                changed.append(value)
            out_scores.append(float(scores[k]))
        else:
            out_masks.append(now)
            out_scores.append(1.0)
            added.append(value)
    removed = sorted(shown - present)
    height, width = labels.shape
    stack = np.stack(out_masks) if out_masks else np.zeros((0, height, width), dtype=bool)
    return EditedWorms(stack, np.asarray(out_scores, dtype=float), changed, added, removed)
