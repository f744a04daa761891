"""core.edited: a run's worms after the user corrected their label image."""

import numpy as np
import pytest

from napari_semiconv.core.edited import apply_label_edits
from napari_semiconv.core.measurements import labels_from_instances


def _run() -> tuple[np.ndarray, np.ndarray]:
    """Three worms; worm 1 (label 2) crosses under worm 0 (label 1, surer)."""
    masks = np.zeros((3, 30, 40), bool)
    masks[0, 10:13, 2:38] = True
    masks[1, 2:28, 20:23] = True  # crosses worm 0 at rows 10-12
    masks[2, 20:23, 28:38] = True
    return masks, np.array([0.9, 0.8, 0.7])


def test_untouched_worms_keep_their_whole_masks_and_scores():
    masks, scores = _run()
    edited = apply_label_edits(masks, scores, labels_from_instances(masks, scores))
    np.testing.assert_array_equal(edited.masks, masks)  # the crossing kept in both
    np.testing.assert_array_equal(edited.scores, scores)
    assert edited.summary() == {"changed": [], "added": [], "removed": []}


def test_changed_added_and_erased_worms():
    masks, scores = _run()
    labels = labels_from_instances(masks, scores)
    labels[labels == 3] = 0  # worm 2 erased
    labels[labels == 1] = 0  # worm 0 erased: worm 1 under it is whole again (it is there)
    labels[25:28, 2:10] = 7  # a worm the model missed
    labels[27, 20:23] = 0  # worm 1's tail trimmed
    edited = apply_label_edits(masks, scores, labels)
    assert edited.summary() == {"changed": [2], "added": [7], "removed": [1, 3]}
    assert len(edited.masks) == 2
    np.testing.assert_array_equal(edited.masks[0], labels == 2)
    np.testing.assert_array_equal(edited.masks[1], labels == 7)
    np.testing.assert_array_equal(edited.scores, [0.8, 1.0])
    # an untouched worm under an erased one keeps the pixels the erased one hid
    labels = labels_from_instances(masks, scores)
    labels[labels == 1] = 0
    edited = apply_label_edits(masks, scores, labels)
    assert edited.summary()["changed"] == [] and edited.summary()["removed"] == [1]
    np.testing.assert_array_equal(edited.masks[0], masks[1])


def test_a_layer_of_another_shape_or_with_odd_values_is_refused():
    masks, scores = _run()
    with pytest.raises(ValueError, match="resized or replaced"):
        apply_label_edits(masks, scores, np.zeros((30, 41), np.uint16))
    with pytest.raises(ValueError, match="negative"):
        apply_label_edits(masks, scores, np.full((30, 40), -1, np.int32))
    with pytest.raises(ValueError, match="fractional"):
        apply_label_edits(masks, scores, np.full((30, 40), 0.5))
    nothing = apply_label_edits(masks, scores, np.zeros((30, 40), np.uint8))
    assert nothing.masks.shape == (0, 30, 40) and nothing.summary()["removed"] == [1, 2, 3]


def test_a_stack_planes_labels_are_read_past_the_worms_before_it():
    # plane 1 of a stack layer numbers its worms on from plane 0's: untouched, it was read as
    # three new worms of score 1.0 and three removed
    masks, scores = _run()
    labels = labels_from_instances(masks, scores)
    layer_plane = np.where(labels > 0, labels + 5, 0)  # five worms in the planes before
    edited = apply_label_edits(masks, scores, layer_plane, offset=5)
    np.testing.assert_array_equal(edited.masks, masks)
    np.testing.assert_array_equal(edited.scores, scores)
    assert edited.summary() == {"changed": [], "added": [], "removed": []}
    layer_plane[0, 0] = 2  # a value of an earlier plane's range, painted here: a new worm
    assert apply_label_edits(masks, scores, layer_plane, offset=5).summary()["added"] == [2]


def test_a_worm_wholly_under_others_is_kept_through_an_edit_elsewhere():
    masks, scores = _run()
    masks[1] = False
    masks[1, 10:13, 5:9] = True  # wholly under worm 0: no pixel of label 2 is shown
    labels = labels_from_instances(masks, scores)
    assert not (labels == 2).any()
    labels[25:27, 2:6] = 3  # worm 2 painted on: an edit elsewhere
    edited = apply_label_edits(masks, scores, labels)
    assert len(edited.masks) == 3  # it dropped the hidden worm without a word
    np.testing.assert_array_equal(edited.masks[1], masks[1])
    assert edited.summary() == {"changed": [3], "added": [], "removed": []}
