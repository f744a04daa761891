"""napari-semiconv: semi-convolutional Mask R-CNN for worm segmentation.

A library, a CLI and a napari plugin in one package.

The top-level names are loaded lazily so that napari can read the plugin manifest without
importing torch.
"""

from __future__ import annotations

import typing as _typing

__version__ = "0.1.0"

__all__ = ["Instances", "load_model", "segment", "__version__"]

if _typing.TYPE_CHECKING:  # pragma: no cover
    from .core.inference import Instances, load_model, segment


def __getattr__(name: str) -> _typing.Any:
    if name in ("Instances", "load_model", "segment"):
        from .core import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'napari_semiconv' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the lazy names too, so a notebook's ns.<Tab> offers segment and load_model
    return sorted({*__all__, *(n for n in globals() if n.startswith("__"))})
