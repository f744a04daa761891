"""Put the Segment widget's results into napari layers, re-using layers of the same name.

Only napari bookkeeping lives here; the arrays come from ``core.visualise.build_views``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.layers import Layer

    from ..core.visualise import LayerViews


def output_names(image_name: str) -> dict[str, str]:
    """Names of the three output layers of an image (re-used on every re-run)."""
    return {
        "labels": f"{image_name} worms",
        "vectors": f"{image_name} displacement",
        "votes": f"{image_name} votes",
    }


def _put(
    viewer: napari.viewer.Viewer,
    kind: str,
    name: str,
    data: Any,
    ndim: int,
    geometry: dict[str, Any],
    new_only: dict[str, Any],
) -> Layer:
    """Update the layer called ``name`` in place when it has the right type and dimensionality,
    else add a new one. ``geometry`` (scale, translate, metadata) is applied either way;
    ``new_only`` (display settings) only when the layer is created, so user tweaks survive."""
    from napari import layers

    cls = {"labels": layers.Labels, "vectors": layers.Vectors, "image": layers.Image}[kind]
    old = viewer.layers[name] if name in viewer.layers else None
    if isinstance(old, cls) and old.ndim == ndim:
        # scale/translate first would be fine too: ndim is unchanged, so order does not matter
        old.data = data
        for key, value in geometry.items():
            setattr(old, key, value)
        return old
    if isinstance(old, cls):
        # same kind but another dimensionality (e.g. a stack after a plane): replace it in place
        index = viewer.layers.index(old)
        viewer.layers.remove(old)
        layer = cls(data, name=name, **geometry, **new_only)
        viewer.layers.insert(index, layer)
        return layer
    # a layer of another kind holds the name (the user's own): keep it, napari adds a suffix
    layer = cls(data, name=name, **geometry, **new_only)
    viewer.add_layer(layer)
    return layer


def show_views(
    viewer: napari.viewer.Viewer,
    image_name: str,
    views: LayerViews,
    scale: Sequence[float],
    translate: Sequence[float],
    metadata: dict[str, Any],
) -> dict[str, Layer]:
    """Add or update ``<image> worms`` (Labels + features), ``<image> displacement`` (Vectors)
    and ``<image> votes`` (Image, hidden), all with the source image's scale and translate."""
    names = output_names(image_name)
    ndim = views.labels.ndim
    geometry = {
        "scale": tuple(float(s) for s in scale),
        "translate": tuple(float(t) for t in translate),
        "metadata": dict(metadata),
    }
    votes = _put(
        viewer,
        "image",
        names["votes"],
        views.votes,
        ndim,
        geometry,
        {"colormap": "magma", "blending": "additive", "visible": False},
    )
    # contrast limits follow the new votes (the peak height changes from run to run)
    top = float(views.votes.max()) if views.votes.size else 0.0
    votes.contrast_limits = (0.0, top if top > 0 else 1.0)
    labels = _put(viewer, "labels", names["labels"], views.labels, ndim, geometry, {})
    labels.features = views.features
    vectors = _put(
        viewer,
        "vectors",
        names["vectors"],
        np.asarray(views.vectors, dtype=np.float32),
        ndim,
        geometry,
        {"edge_width": 0.6, "length": 1.0, "edge_color": "yellow", "vector_style": "arrow"},
    )
    return {"labels": labels, "vectors": vectors, "votes": votes}
