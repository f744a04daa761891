"""The Fine-tune widget's training pairs: one row per (Image, Labels, region) picked in the viewer,
and "Correct this result" (a Segment output turned into an editable copy paired with its image).

Reading a row copies the layers' data, so painting during a run changes nothing in that run.
No torch here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QPushButton, QWidget

from ..core.finetune_pairs import AnnotatedPair, roi_from_points
from ._layers import numbered, output_names
from ._pickers import full_resolution

WHOLE_IMAGE = "whole image"
NONE = "none"


def image_layers(viewer: Any) -> list[Any]:
    """The viewer's Image layers, less this plugin's own outputs (which carry a run record)."""
    from napari.layers import Image

    return [
        layer
        for layer in viewer.layers
        if isinstance(layer, Image) and "napari_semiconv" not in layer.metadata
    ]


def _layers_of(viewer: Any, kind: str) -> list[Any]:
    from napari import layers

    if kind == "image":
        return image_layers(viewer)
    cls = {"labels": layers.Labels, "shapes": layers.Shapes}[kind]
    return [layer for layer in viewer.layers if isinstance(layer, cls)]


def fill_combo(combo: QComboBox, layers: list[Any], first: str | None = None) -> None:
    """List ``layers`` by name (data = the layer), keeping the current layer when it remains;
    ``first`` is an extra leading entry with data None (e.g. "none", "whole image")."""
    current = combo.currentData()
    combo.blockSignals(True)
    combo.clear()
    if first is not None:
        combo.addItem(first, None)
    for layer in layers:
        combo.addItem(layer.name, layer)
    index = combo.findData(current) if current is not None else -1
    combo.setCurrentIndex(max(index, 0) if combo.count() else -1)
    combo.blockSignals(False)


def layer_data(layer: Any) -> np.ndarray:
    """A private copy of a layer's (finest level) data as a numpy array."""
    return np.array(full_resolution(layer), copy=True)


def one_plane(layer: Any) -> bool:
    """Whether an image layer is a single 2-D plane, grey or RGB(A) (length-1 axes aside): what
    a preview can be segmented from. Looks at the shape only (no data is read)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = data.shape[:-1] if layer.rgb else data.shape
    return sum(n != 1 for n in shape) <= 2


def rectangles(shapes: Any, image: Any) -> list[tuple[int, int, int, int]]:
    """The rectangles of a Shapes layer as (row0, col0, row1, col1) in ``image``'s pixels.

    Corners go through world coordinates, so layers with different scale/translate still agree.

    Raises:
        ValueError: the layer has no rectangle, or a rectangle lies (mostly) off the image.
    """
    shape = full_resolution(image).shape
    shape = shape[:2] if image.rgb else shape[-2:]
    rois = []
    for kind, corners in zip(shapes.shape_type, shapes.data, strict=True):
        if kind != "rectangle":
            continue
        points = [image.world_to_data(shapes.data_to_world(c)) for c in np.asarray(corners)]
        try:
            rois.append(roi_from_points(np.asarray(points), shape))
        except ValueError as exc:
            raise ValueError(f"Shapes layer {shapes.name!r}: {exc}") from exc
    if not rois:
        raise ValueError(
            f"Shapes layer {shapes.name!r} has no rectangle: draw one (rectangle tool) around "
            "the worms you checked, or choose 'whole image'"
        )
    return rois


class PairRow(QWidget):
    """Image | Labels | region (whole image or a Shapes layer's rectangles) | remove."""

    def __init__(self, viewer: Any, removable: bool = True, optional: bool = False) -> None:
        super().__init__()
        self.viewer = viewer
        self.optional = optional  # the validation pair: "none" is a valid choice
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The image the labels were drawn on")
        self.labels_combo = QComboBox()
        self.labels_combo.setToolTip("One label per worm, 0 = background")
        self.region_combo = QComboBox()
        self.region_combo.setToolTip(
            "'whole image': every unlabelled pixel counts as background. A Shapes layer: only "
            "its rectangles are used (draw them around the worms you checked)."
        )
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for combo in (self.image_combo, self.labels_combo, self.region_combo):
            combo.setMinimumContentsLength(6)
            combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLength)
            layout.addWidget(combo, 1)
        self.remove_button = QPushButton("✕")
        self.remove_button.setToolTip("Remove this pair")
        self.remove_button.setMaximumWidth(28)
        self.remove_button.setVisible(removable)
        layout.addWidget(self.remove_button)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        """Re-list the viewer's layers, keeping the current picks that still exist."""
        fill_combo(
            self.image_combo, _layers_of(self.viewer, "image"), NONE if self.optional else None
        )
        fill_combo(
            self.labels_combo, _layers_of(self.viewer, "labels"), NONE if self.optional else None
        )
        fill_combo(self.region_combo, _layers_of(self.viewer, "shapes"), WHOLE_IMAGE)

    def select(self, image: Any = None, labels: Any = None, region: Any = None) -> None:
        """Pick layers (objects or names) in the row's lists."""
        for combo, layer in (
            (self.image_combo, image),
            (self.labels_combo, labels),
            (self.region_combo, region),
        ):
            if layer is None:
                continue
            index = combo.findText(layer) if isinstance(layer, str) else combo.findData(layer)
            if index >= 0:
                combo.setCurrentIndex(index)

    def layers(self) -> tuple[Any, Any, Any]:
        """(image layer, labels layer, shapes layer) picked; None where nothing is."""
        return (
            self.image_combo.currentData(),
            self.labels_combo.currentData(),
            self.region_combo.currentData(),
        )

    def is_empty(self) -> bool:
        """Nothing picked (only meaningful for an optional row)."""
        image, labels, _ = self.layers()
        return image is None and labels is None

    def pair(self) -> AnnotatedPair:
        """The picked pair with copies of its data.

        Raises:
            ValueError: no image or no labels picked, or a bad region (named).
        """
        image, labels, shapes = self.layers()
        if image is None or labels is None:
            raise ValueError(
                "a pair needs an image and a Labels layer: open or paint one (or use 'Correct "
                "this result' after segmenting), then pick both"
            )
        rois = rectangles(shapes, image) if shapes is not None else []
        data = layer_data(image)
        return AnnotatedPair(data, layer_data(labels), image.name, labels.name, rois)


def worms_layers(viewer: Any) -> list[tuple[Any, Any]]:
    """(image, "<image> worms" Labels) of every Segment result whose image is still open, the
    newest last; "<image> worms [k]" counts too (a re-run beside a worms layer the user had
    edited)."""
    from napari.layers import Labels

    found = [
        (image, layer)
        for image in image_layers(viewer)
        for layer in numbered(viewer, Labels, output_names(image.name)["labels"])
    ]
    return sorted(found, key=lambda pair: viewer.layers.index(pair[1]))


def corrections_layer(viewer: Any, image: Any, worms: Any) -> Any:
    """The editable ``<image> corrections`` Labels layer: a copy of ``worms`` (created once;
    an existing one is kept, so earlier edits are never thrown away), selected in paint mode."""
    from napari.layers import Labels

    name = f"{image.name} corrections"
    layer = viewer.layers[name] if name in viewer.layers else None
    if not isinstance(layer, Labels):
        layer = viewer.add_labels(
            layer_data(worms),
            name=name,
            scale=worms.scale,
            translate=worms.translate,
            rotate=worms.rotate,
            shear=worms.shear,
            affine=worms.affine,
            metadata={"corrections_of": worms.name},
        )
    viewer.layers.selection.active = layer
    layer.mode = "paint"
    return layer
