"""The Segment widget's settings, remembered between napari sessions (imports no Qt).

Users of the peers ask for it (napari#2177, magicgui#169): the model, device, thresholds, tile
size, Augment and arrow stride of the last run come back when the widget opens again. They are
saved when Segment is clicked, as one small JSON file in the user's config folder
(``SEMICONV_CONFIG_DIR`` or the platform's), written atomically. Remembering is a convenience:
a missing, unreadable or damaged file is ignored (logged), and a failed write never stops a run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.atomic import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from ._workers import RunRequest

logger = logging.getLogger(__name__)

#: file name of the Segment widget's settings in the config folder
SEGMENT_FILE = "segment-widget.json"


def config_dir() -> Path:
    """The user's napari-semiconv config folder (``SEMICONV_CONFIG_DIR`` or the platform's)."""
    override = os.environ.get("SEMICONV_CONFIG_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("napari-semiconv"))


def load_settings(name: str = SEGMENT_FILE) -> dict[str, Any]:
    """The remembered settings, or {} if there are none or they cannot be read."""
    path = config_dir() / name
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning("ignoring the remembered settings in %s: %s", path, exc)
        return {}
    if not isinstance(data, dict):
        logger.warning("ignoring the remembered settings in %s: not a JSON object", path)
        return {}
    return data


def save_settings(settings: dict[str, Any], name: str = SEGMENT_FILE) -> bool:
    """Remember ``settings`` (JSON-serialisable); False (logged) if they could not be written."""
    path = config_dir() / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(settings, indent=1, sort_keys=True).encode("utf-8")
        atomic_write_bytes(path, data, overwrite=True)
    except (OSError, TypeError, ValueError) as exc:
        logger.warning("could not remember the settings in %s: %s", path, exc)
        return False
    return True


def number(settings: dict[str, Any], key: str, low: float, high: float) -> float | None:
    """``settings[key]`` if it is a number in [low, high], else None (a damaged entry)."""
    value = settings.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if low <= value <= high else None


def segment_snapshot(request: RunRequest) -> dict[str, Any]:
    """What the Segment widget remembers of a run it starts."""
    return {
        "model": request.model,
        "device": request.device,
        "score_threshold": request.score_threshold,
        "mask_threshold": request.mask_threshold,
        "max_overlap": request.max_overlap,
        "foreground_threshold": request.foreground_threshold,
        "tile_size": request.tile_size,
        "views": request.views,
        "stride": request.stride,
    }


def restore_segment(widget: Any, settings: dict[str, Any]) -> list[str]:
    """Put remembered settings back into a new Segment widget; returns what was restored.

    Each entry is checked on its own, so a damaged one is skipped and the rest still apply.
    The thresholds come back only with the model they were used with (another model brings its
    own defaults); a remembered model file that has gone is skipped quietly.
    """
    done = []
    model = settings.get("model")
    if isinstance(model, str) and model:
        listed = widget.model_combo.findData(model) >= 0
        if (listed or Path(model).is_file()) and widget.set_model(model):
            done.append("model")
    device = settings.get("device")
    if isinstance(device, str) and widget.device_combo.findText(device) >= 0:
        widget.device_combo.setCurrentText(device)
        done.append("device")
    if "model" in done:
        for key, spin in zip(
            ("score_threshold", "mask_threshold", "max_overlap"), widget.spins(), strict=True
        ):
            value = number(settings, key, 0.0, 1.0)
            if value is not None:
                spin.setValue(value)
                done.append(key)
        cut = number(settings, "foreground_threshold", 0.01, 0.99)
        if cut is not None and widget.cut_spin.isEnabled():
            widget.cut_spin.setValue(cut)
            done.append("foreground_threshold")
    if "tile_size" in settings:  # None: automatic, the spin box's 0
        tile = settings["tile_size"]
        tile = 0 if tile is None else number(settings, "tile_size", 0, widget.tile_spin.maximum())
        if tile is not None:
            widget.tile_spin.setValue(int(tile))
            done.append("tile_size")
    views = settings.get("views")
    if isinstance(views, int) and not isinstance(views, bool):
        index = widget.views_combo.findData(views)
        if index >= 0:
            widget.views_combo.setCurrentIndex(index)
            done.append("views")
    stride = number(settings, "stride", 1, widget.stride_spin.maximum())
    if stride is not None:
        widget.stride_spin.setValue(int(stride))
        done.append("stride")
    return done
