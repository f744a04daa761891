"""The widgets' settings, remembered between napari sessions (imports no Qt).

Users of the peers ask for it (napari#2177, magicgui#169): the Segment widget's model, device,
thresholds, tile size, Augment and arrow stride, and the Fine-tune widget's base model and
training settings, come back when the widget opens again. They are saved when Segment or Train
is clicked, one small JSON file per widget in the user's config folder
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
from ..core.tiling import MIN_TILE_SIZE

if TYPE_CHECKING:  # pragma: no cover
    from ..core.finetune import FineTuneSpec
    from ._workers import RunRequest

logger = logging.getLogger(__name__)

#: file names of the widgets' settings in the config folder
SEGMENT_FILE = "segment-widget.json"
FINETUNE_FILE = "finetune-widget.json"


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
        "rescale": request.rescale,
        "stride": request.stride,
    }


def restore_segment(widget: Any, settings: dict[str, Any]) -> list[str]:
    """Put remembered settings back into a new Segment widget; returns what was restored.

    Each entry is checked on its own, so a damaged one is skipped and the rest still apply.
    The thresholds come back only with the model they were used with (another model brings its
    own defaults); a remembered model file that has gone is skipped quietly.
    """
    done = _restore_model_and_device(widget, settings, "model")
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
        if tile is not None and (tile == 0 or tile >= MIN_TILE_SIZE):  # 1-31 always fails
            widget.tile_spin.setValue(int(tile))
            done.append("tile_size")
    views = settings.get("views")
    if isinstance(views, int) and not isinstance(views, bool):
        index = widget.views_combo.findData(views)
        if index >= 0:
            widget.views_combo.setCurrentIndex(index)
            done.append("views")
    if _restore_spin(widget.stride_spin, settings, "stride", int):
        done.append("stride")
    if _restore_spin(widget.rescale_spin, settings, "rescale", float):
        done.append("rescale")
    return done


def finetune_snapshot(spec: FineTuneSpec) -> dict[str, Any]:
    """What the Fine-tune widget remembers of a run it starts (not the data nor the output
    name: a new run needs a new name, and the layers are this session's)."""
    return {
        "base": spec.base,
        "device": spec.device,
        "iterations": spec.iterations,
        "minutes": spec.minutes,
        "lr": spec.lr,
        "heads_only": spec.heads_only,
        "batch_size": spec.batch_size,
        "crop": spec.crop,
        "preview_every": spec.preview_every,
    }


def restore_finetune(
    widget: Any, settings: dict[str, Any], heads_only_text: str, everything_text: str
) -> list[str]:
    """Put remembered settings back into a new Fine-tune widget; returns what was restored
    (each entry checked on its own, as :func:`restore_segment`)."""
    done = _restore_model_and_device(widget, settings, "base")
    spins = (
        ("iterations", widget.iter_spin, int),
        ("minutes", widget.minutes_spin, float),
        ("lr", widget.lr_spin, float),
        ("batch_size", widget.batch_spin, int),
        ("crop", widget.crop_spin, int),
        ("preview_every", widget.preview_spin, int),
    )
    done += [key for key, spin, kind in spins if _restore_spin(spin, settings, key, kind)]
    heads_only = settings.get("heads_only")
    if isinstance(heads_only, bool):
        widget.what_combo.setCurrentText(heads_only_text if heads_only else everything_text)
        done.append("heads_only")
    return done


def _restore_model_and_device(widget: Any, settings: dict[str, Any], key: str) -> list[str]:
    """The remembered model (a listed name, or a file that still exists) and device."""
    done = []
    model = settings.get(key)
    if isinstance(model, str) and model:
        listed = widget.model_combo.findData(model) >= 0
        if (listed or _is_file(model)) and widget.models.set_model(model):
            done.append(key)
    device = settings.get("device")
    if isinstance(device, str) and widget.device_combo.findText(device) >= 0:
        widget.device_combo.setCurrentText(device)
        done.append("device")
    return done


def _is_file(path: str) -> bool:
    """``Path.is_file`` that says False, not raises, for a name too long for the file system,
    a NUL byte or a folder that can no longer be read (a damaged or stale settings file)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _restore_spin(spin: Any, settings: dict[str, Any], key: str, kind: type) -> bool:
    """Set a spin box from ``settings[key]`` if that is a number within the box's range."""
    if kind is int and isinstance(settings.get(key), float):
        return False  # an int field holding a fraction: damaged
    value = number(settings, key, spin.minimum(), spin.maximum())
    if value is None:
        return False
    spin.setValue(kind(value))
    return True
