"""Finding and loading models: bundled files, the user's models folder, or a checkpoint path.

- Bundled models are listed in ``napari_semiconv/models/registry.json`` as
  ``{name: {"file": "<file>.pt", "sha256": "<hex>", ...}}`` beside the files; a bundled file is
  checked against its sha256 before it is loaded.
- User models are ``*.pt`` files in ``platformdirs.user_data_dir("napari-semiconv")/models``
  (override with the environment variable ``SEMICONV_MODEL_DIR``); a model's name is its stem.
- Anything else is a path to a checkpoint.

Every file is read by ``core.checkpoint.load_checkpoint`` (``torch.load(weights_only=True)``), so a
file that is not one of this project's checkpoints raises ``CheckpointError`` and runs no code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from napari_semiconv.core.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    sha256_file,
    verify_sha256,
)
from napari_semiconv.core.devices import resolve_device

__all__ = [
    "BUNDLED_DIR",
    "ModelNotFoundError",
    "list_models",
    "load_model",
    "model_source",
    "read_checkpoint",
    "registry",
    "resolve_model_path",
    "user_model_dir",
]

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "models"


class ModelNotFoundError(FileNotFoundError):
    """No bundled model, user model or file of that name."""


def registry() -> dict[str, dict[str, Any]]:
    """The bundled models' registry (empty when the file is absent)."""
    path = BUNDLED_DIR / "registry.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); reinstall napari-semiconv") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must map model names to entries; reinstall napari-semiconv")
    return data


def user_model_dir() -> Path:
    """Folder of the user's own models (``SEMICONV_MODEL_DIR`` or the platform's data folder)."""
    override = os.environ.get("SEMICONV_MODEL_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-semiconv")) / "models"


def _looks_like_path(name: str) -> bool:
    # only a file counts: a folder that happens to share a user model's name must not hide it
    return os.sep in name or "/" in name or name.endswith((".pt", ".pth")) or Path(name).is_file()


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> tuple[Path, str | None, str]:
    """(file, expected sha256 or None, kind "bundled"/"user"/"path") for a model name or path.

    Raises:
        ModelNotFoundError: naming what was looked for and what is available.
    """
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise TypeError(f"a model name or path must be a non-empty string, got {name_or_path!r}")
    bundled = registry()
    if name_or_path in bundled:
        entry = bundled[name_or_path]
        path = BUNDLED_DIR / str(entry.get("file", f"{name_or_path}.pt"))
        if not path.is_file():
            raise ModelNotFoundError(
                f"bundled model {name_or_path!r} is not installed (expected {path}); reinstall "
                "napari-semiconv, or train one with `napari-semiconv train` and pass its path"
            )
        return path, entry.get("sha256"), "bundled"
    user = user_model_dir() / f"{name_or_path}.pt"
    if not _looks_like_path(name_or_path) and user.is_file():
        return user, None, "user"
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path, None, "path"
    available = [m["ref"] for m in list_models()]
    raise ModelNotFoundError(
        f"no model {name_or_path!r}: not a bundled model, not in {user_model_dir()} and not a "
        f"file; available: {available or 'none'} (`napari-semiconv models` lists them)"
    )


def read_checkpoint(name_or_path: str | os.PathLike[str]) -> Checkpoint:
    """A checkpoint by bundled name, user-model name or path, not built into a model; a bundled
    file is checked against its sha256 before it is read.

    Raises:
        ModelNotFoundError, CheckpointError: as :func:`load_model`.
    """
    path, expected, _ = resolve_model_path(name_or_path)
    return _read_verified(path, expected)


def _read_verified(path: Path, expected: str | None) -> Checkpoint:
    if expected:  # a bundled file must be the one the registry names
        verify_sha256(path, expected)
    return load_checkpoint(path)


def load_model(name_or_path: str | os.PathLike[str], device: str = "auto") -> torch.nn.Module:
    """Load a model by bundled name, user-model name or checkpoint path; eval mode, on ``device``.

    The model carries ``.config``, ``.card`` and ``.source`` (name, path, sha256, kind) for
    :func:`napari_semiconv.core.inference.run_info`.

    Raises:
        ModelNotFoundError: nothing of that name (lists what exists).
        CheckpointError: the file is not a napari-semiconv checkpoint (nothing in it is run), is
            corrupt, or a bundled file fails its sha256 check.
    """
    path, expected, kind = resolve_model_path(name_or_path)
    model = model_from_checkpoint(_read_verified(path, expected), device=resolve_device(device))
    model.source = {
        "name": os.fspath(name_or_path),
        "path": str(path.resolve()),
        "sha256": expected or sha256_file(path),
        "kind": kind,
    }
    return model


def model_source(model: torch.nn.Module) -> dict[str, Any]:
    """Where ``model`` came from ({"name", "path", "sha256", "kind"}); an unsaved model has None."""
    source = getattr(model, "source", None)
    if isinstance(source, dict):
        return dict(source)
    return {"name": None, "path": None, "sha256": None, "kind": "in-memory"}


def _card_summary(path: Path) -> dict[str, Any]:
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        return {"error": str(exc)}
    return {"card": ckpt.card, "config": ckpt.config.to_dict()}


def _loads_by_name(name: str, bundled: dict[str, Any]) -> bool:
    """Whether :func:`resolve_model_path` takes the name ``name`` to the user model of that name
    (the same order: a bundled name first, then the user folder unless it reads as a path)."""
    return name not in bundled and not _looks_like_path(name)


def list_models() -> list[dict[str, Any]]:
    """Bundled and user models: [{name, kind, path, installed, ref, card, config | error}].

    ``ref`` is what loads the row's file: its name, or its path where the name loads something
    else (a user model named like a bundled one, or ending in .pt, or beside a file of that name
    in the working folder).
    """
    found: list[dict[str, Any]] = []
    bundled = registry()
    for name, entry in sorted(bundled.items()):
        path = BUNDLED_DIR / str(entry.get("file", f"{name}.pt"))
        row = {"name": name, "kind": "bundled", "path": str(path), "installed": path.is_file()}
        row["ref"] = name
        row.update(_card_summary(path) if path.is_file() else {"card": entry.get("card", {})})
        found.append(row)
    folder = user_model_dir()
    if folder.is_dir():
        for path in sorted(folder.glob("*.pt")):
            row = {"name": path.stem, "kind": "user", "path": str(path), "installed": True}
            row["ref"] = path.stem if _loads_by_name(path.stem, bundled) else str(path)
            row.update(_card_summary(path))
            found.append(row)
    return found
