"""Put the Segment widget's results into napari layers, re-using layers of the same name.

Only napari bookkeeping lives here; the arrays come from ``core.visualise.build_views``.
A worms (Labels) layer is re-used only while it holds what this plugin wrote into it: one the
user has edited, or one from elsewhere (a file, their own drawing), is never overwritten.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.layers import Layer

    from ..core.visualise import LayerViews


def unproxied(viewer: napari.Viewer) -> napari.Viewer:
    """The viewer behind napari's ``PublicOnlyProxy``, which napari hands a plugin's widget.

    Every layer reached through the proxy is a new proxy object, so a layer taken from the
    viewer now is not (``is``) the one a combo box or a record holds from before, and two
    widgets' viewers are not the same object: *Correct this result* paired the wrong layers
    and the Segment widget was not told of a fine-tuned model. The widgets hold the viewer
    itself and touch only napari's public API through it.
    """
    return getattr(viewer, "__wrapped__", viewer)


def kept_transform(layer: Layer, keep: Sequence[int]) -> dict[str, Any]:
    """``layer``'s rotate, shear and affine on the axes ``keep`` (its channel axis taken out),
    as keywords for the output layers: with its scale and translate they put every output
    pixel on the image pixel it came from, however the image is turned or sheared. Always all
    three (identities included), so a re-used layer loses an earlier image's turn.

    A channel axis is not turned with the others in any image a microscope gives; were it
    mixed in, what the kept axes get is the part that maps them onto themselves.
    """
    keep = list(keep)
    ndim = layer.ndim
    rotate = np.asarray(layer.rotate, dtype=float)[np.ix_(keep, keep)]
    shear_full = np.eye(ndim)
    shear_full[np.triu_indices(ndim, 1)] = np.asarray(layer.shear, dtype=float)
    sub = shear_full[np.ix_(keep, keep)]
    shear = sub[np.triu_indices(len(keep), 1)]
    homogeneous = [*keep, ndim]  # the translation column of the affine matrix too
    affine = np.asarray(layer.affine.affine_matrix, dtype=float)[np.ix_(homogeneous, homogeneous)]
    return {"rotate": rotate.tolist(), "shear": shear.tolist(), "affine": affine.tolist()}


def output_names(image_name: str) -> dict[str, str]:
    """Names of the three output layers of an image (re-used on every re-run)."""
    return {
        "labels": f"{image_name} worms",
        "vectors": f"{image_name} displacement",
        "votes": f"{image_name} votes",
    }


WRITTEN = "napari_semiconv_written"  # Labels metadata: digest of the data this plugin put there


def digest(data: Any) -> str:
    """A fingerprint of a label array (values, dtype and shape)."""
    array = np.ascontiguousarray(np.asarray(data))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{array.dtype.str}{array.shape}".encode())
    h.update(memoryview(array.reshape(-1).view(np.uint8)))
    return h.hexdigest()


def unchanged_output(layer: Any) -> bool:
    """Whether ``layer`` still holds exactly what this plugin wrote into it."""
    written = layer.metadata.get(WRITTEN)
    return written is not None and written == digest(layer.data)


def numbered(viewer: napari.viewer.Viewer, cls: type, name: str) -> list[Layer]:
    """The ``cls`` layers called ``name`` or ``name [k]`` (napari's numbering), in layer order."""
    pattern = re.compile(re.escape(name) + r"( \[\d+\])?")
    return [
        layer for layer in viewer.layers if isinstance(layer, cls) and pattern.fullmatch(layer.name)
    ]


def _last_unchanged(viewer: napari.viewer.Viewer, cls: type, name: str) -> Layer | None:
    """The last layer called ``name`` or ``name [k]`` that still holds what this plugin wrote
    into it, or None."""
    mine = [layer for layer in numbered(viewer, cls, name) if unchanged_output(layer)]
    return mine[-1] if mine else None


def _put(
    viewer: napari.viewer.Viewer,
    kind: str,
    name: str,
    data: Any,
    ndim: int,
    geometry: dict[str, Any],
    new_only: dict[str, Any],
    keep_edits: bool = False,
) -> Layer:
    """Update the layer called ``name`` in place when it has the right type and dimensionality,
    else add a new one. ``geometry`` (scale, translate, metadata) is applied either way;
    ``new_only`` (display settings) only when the layer is created, so user tweaks survive.
    ``keep_edits``: a layer not holding what this plugin last wrote is left alone (the new
    one gets napari's numbered name)."""
    from napari import layers

    cls = {"labels": layers.Labels, "vectors": layers.Vectors, "image": layers.Image}[kind]
    old = viewer.layers[name] if name in viewer.layers else None
    if keep_edits:  # the user's work stays; an earlier run's layer beside it may be re-used
        old = _last_unchanged(viewer, cls, name)
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
    # the name is held by the user's own layer (another kind, or edited): keep it, napari
    # gives the new one a numbered name
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
    transform: dict[str, Any] | None = None,
) -> dict[str, Layer]:
    """Add or update ``<image> worms`` (Labels + features), ``<image> displacement`` (Vectors)
    and ``<image> votes`` (Image, hidden), all with the source image's scale and translate,
    and its rotate, shear and affine (``transform``, from :func:`kept_transform`)."""
    names = output_names(image_name)
    ndim = views.labels.ndim
    geometry = {
        "scale": tuple(float(s) for s in scale),
        "translate": tuple(float(t) for t in translate),
        **(transform or {}),
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
    labels = _put(viewer, "labels", names["labels"], views.labels, ndim, geometry, {}, True)
    # the digest of what the layer holds (napari may have converted it), so the next run can
    # tell whether the user has edited it since
    labels.metadata = {**labels.metadata, WRITTEN: digest(labels.data)}
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
