"""plugin.sample_data: the napari sample data commands, directly and in a real viewer."""

import numpy as np
import pytest

from napari_semiconv.plugin import sample_data


@pytest.mark.parametrize(
    "command, image_dtype",
    [
        (sample_data.worms_brightfield, np.uint16),
        (sample_data.worms_binary, np.float32),
        (sample_data.dot_grid, np.float32),
    ],
)
def test_commands_return_an_image_and_its_truth(command, image_dtype):
    layers = command()
    (image, image_meta, image_kind), (labels, label_meta, label_kind) = layers
    assert (image_kind, label_kind) == ("image", "labels")
    assert image.dtype == image_dtype and image.ndim == 2
    assert labels.shape == image.shape and np.issubdtype(labels.dtype, np.integer)
    assert labels.max() >= 2  # several objects
    assert "truth" in label_meta["name"] and label_meta["name"].startswith(image_meta["name"])
    # deterministic: the same sample every time
    np.testing.assert_array_equal(command()[0][0], image)


def test_binary_sample_is_the_foreground_of_its_truth():
    (image, _, _), (labels, _, _) = sample_data.worms_binary()
    np.testing.assert_array_equal(image > 0, labels > 0)


@pytest.mark.gui
@pytest.mark.parametrize("key", ["worms-brightfield", "worms-binary", "dots"])
def test_samples_open_in_napari(make_napari_viewer, key):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-semiconv", key)
    kinds = sorted(type(layer).__name__ for layer in viewer.layers)
    assert kinds == ["Image", "Labels"]
    image = next(layer for layer in viewer.layers if type(layer).__name__ == "Image")
    labels = next(layer for layer in viewer.layers if type(layer).__name__ == "Labels")
    assert image.data.shape == labels.data.shape
    assert len(np.unique(labels.data)) > 2
