"""Checkpoints: weights + architecture + model card in one file that loads without running code.

A checkpoint is a plain dict of tensors, str, int, float, bool, None, lists, tuples and dicts, so
``torch.load(path, weights_only=True)`` (the only way this project loads one) can read it and a
hostile pickle is refused instead of executed::

    {"format": "napari-semiconv-checkpoint", "format_version": 1,
     "config": ModelConfig.to_dict(), "state_dict": {name: tensor}, "half": bool,
     "card": {... model card: input mode, normalisation, data, recipe, metrics, "versions" ...},
     "train_state": None or {optimizer state, step, epoch, rng states as tensors, best metric}}

``half=True`` stores floating-point weights as fp16 (bundled files must stay under 30 MB); the
loader casts them back to fp32. Files are written atomically (``core.atomic``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import platform
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision

from napari_semiconv.core.atomic import atomic_writer
from napari_semiconv.core.devices import resolve_device
from napari_semiconv.core.model.builder import SemiConvMaskRCNN, build_model
from napari_semiconv.core.model.config import ModelConfig

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "sha256_file",
    "verify_sha256",
]

FORMAT = "napari-semiconv-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names the file and the reason."""


@dataclass
class Checkpoint:
    """A loaded checkpoint; ``state_dict`` tensors are fp32 (fp16 files are cast back)."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    card: dict[str, Any]
    train_state: dict[str, Any] | None = None
    path: Path | None = field(default=None, compare=False)
    #: the file stores its floating-point weights at fp16 (as the bundled models do)
    half: bool = field(default=False, compare=False)


def _versions() -> dict[str, str]:
    from napari_semiconv import __version__

    return {
        "napari_semiconv": str(__version__),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def _plain(value: Any, where: str) -> Any:
    """A copy of ``value`` built only from types ``torch.load(weights_only=True)`` reads back.

    Subclasses are cast to their base type (``torch.__version__`` is a str subclass, numpy's
    float64 a float subclass: pickled as themselves, weights_only loading would refuse them).

    Raises:
        TypeError: naming where the unsupported value sits.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, torch.Tensor):
        return value.detach() if type(value) is not torch.Tensor else value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where}: dict key {key!r} must be str or int")
            out[key] = _plain(item, f"{where}[{key!r}]")
        return out
    raise TypeError(
        f"{where} is a {type(value).__name__}; a checkpoint may only hold tensors, str, int, "
        "float, bool, None, lists and dicts (convert numpy arrays to tensors, paths to str)"
    )


def save_checkpoint(
    path: str | os.PathLike[str],
    model: SemiConvMaskRCNN,
    card: dict[str, Any],
    train_state: dict[str, Any] | None = None,
    half: bool = False,
    overwrite: bool = True,
) -> Path:
    """Write ``model``'s weights, config and ``card`` to ``path`` atomically; return the path.

    Args:
        card: the model card (input mode, normalisation, training data and recipe, metrics...);
            "versions" (package, torch, torchvision, python) is added unless present.
        train_state: what resuming needs (optimizer state dict, step, epoch, rng states as
            tensors, best metric), or None.
        half: store floating-point weights as fp16 (for bundled files); ``train_state`` is kept
            as is.
        overwrite: replace an existing file (the trainer rewrites "last" checkpoints).

    Raises:
        TypeError: the card or train_state holds something weights_only loading cannot read.
        OSError / FileExistsError: from the atomic writer; nothing is left behind.
    """
    # DistributedDataParallel keeps the model in .module, torch.compile in ._orig_mod
    for attr in ("module", "_orig_mod"):
        if not hasattr(model, "config") and hasattr(model, attr):
            model = getattr(model, attr)
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError("save_checkpoint needs a model from build_model (with a .config)")
    if not isinstance(card, dict):
        raise TypeError(f"card must be a dict, got {type(card).__name__}")
    card = _plain(card, "card")
    card.setdefault("versions", _versions())
    if train_state is not None:
        if not isinstance(train_state, dict):
            raise TypeError(f"train_state must be a dict or None, got {type(train_state).__name__}")
        train_state = _plain(train_state, "train_state")
    state_dict = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        state_dict[key] = tensor.clone()  # no views of shared storages in the file
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "state_dict": state_dict,
        "half": bool(half),
        "card": card,
        "train_state": train_state,
    }
    with atomic_writer(path, "wb", overwrite=overwrite) as handle:
        torch.save(payload, handle)
    return Path(path)


def _fail(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"{path}: {reason}")


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _read(path: Path) -> Any:
    """torch.load with weights_only=True, every failure turned into a CheckpointError."""
    if not path.exists():
        raise _fail(path, "file not found")
    if path.is_dir():
        raise _fail(path, "is a folder, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise _fail(path, "file is empty (an interrupted download or copy?)")
    with open(path, "rb") as fh:
        head = fh.read(512)
    is_zip = head.startswith(b"PK")
    # PROTO opcode + protocol 2-5: a bare pickle (torch's legacy format or a hand-made one)
    is_pickle = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    if not (is_zip or is_pickle) and _looks_like_text(head):
        raise _fail(path, "is a text file, not a checkpoint")
    if is_zip:
        _check_zip_crcs(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses every global and opcode outside its allow-list: in a zip or a
        # pickle that means the file asks to build Python objects, which could run code.
        if is_zip or is_pickle:
            raise _fail(path, "refused: contains Python objects that could run code") from exc
        raise _fail(path, "not a PyTorch checkpoint (unreadable bytes)") from exc
    except Exception as exc:  # torch raises assorted types (RuntimeError, EOFError...) on garbage
        if is_zip:
            reason = "truncated or corrupt file"
        elif is_pickle:
            reason = "truncated or corrupt pickle"
        else:
            reason = "not a PyTorch checkpoint"
        raise _fail(path, f"{reason} ({type(exc).__name__}: {_first_line(str(exc))})") from exc


def _check_zip_crcs(path: Path) -> None:
    """Refuse a zip checkpoint whose records fail their CRC-32.

    torch.load does not verify the CRCs that torch.save writes, so flipped bytes inside a
    tensor (a damaged copy or disk) would load silently as wrong weights. Reading each record
    to its end through ``zipfile`` checks its CRC. Only uncompressed records (what torch
    writes) with a CRC are read, so the cost is bounded by the file size; a file that does not
    open as a zip is left to torch.load to name.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return
    with archive:
        for info in archive.infolist():
            if info.CRC == 0 or info.is_dir() or info.compress_type != zipfile.ZIP_STORED:
                continue  # torch stores records uncompressed: no inflating of hostile zips
            try:
                with archive.open(info) as member:
                    while member.read(1 << 20):
                        pass
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise _fail(
                    path,
                    f"corrupt file: record {info.filename!r} is damaged ({exc}); a broken "
                    "download, copy or disk? copy the file again",
                ) from exc


def _first_line(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else "no detail"
    return line[:200]


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint with ``torch.load(..., weights_only=True, map_location="cpu")`` only.

    Raises:
        CheckpointError: naming the file and the reason (missing, empty, truncated, text, hostile
            pickle, not this format, newer format, invalid config...).
    """
    path = Path(path)
    data = _read(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        kind = "a dict" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise _fail(
            path,
            f"not a napari-semiconv checkpoint (it holds {kind} without format={FORMAT!r}; "
            "a bare state dict or another tool's file?)",
        )
    version = data.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise _fail(path, f"invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise _fail(
            path,
            f"format_version {version} is newer than this napari-semiconv reads "
            f"({FORMAT_VERSION}); upgrade napari-semiconv",
        )
    try:
        config = ModelConfig.from_dict(data.get("config"))
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"invalid model config: {exc}") from exc
    state_dict = data.get("state_dict")
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise _fail(path, "the state_dict is not a mapping of names to tensors")
    card = data.get("card")
    train_state = data.get("train_state")
    if not isinstance(card, dict):
        raise _fail(path, "the model card is missing or not a dict")
    if train_state is not None and not isinstance(train_state, dict):
        raise _fail(path, "train_state is not a dict")
    state_dict = {k: v.float() if v.dtype == torch.float16 else v for k, v in state_dict.items()}
    return Checkpoint(config, state_dict, card, train_state, path, half=bool(data.get("half")))


def model_from_checkpoint(ckpt: Checkpoint, device: str | torch.device = "cpu") -> SemiConvMaskRCNN:
    """Build the checkpoint's architecture, load its weights; eval mode, ``.card``/``.config`` set.

    ``device`` is anything :func:`resolve_device` takes ("cpu", "cuda:0", "auto", ...).

    Raises:
        CheckpointError: the weights belong to another architecture (keys or shapes differ
            from what ``ckpt.config`` builds).
    """
    model = build_model(ckpt.config)
    _check_architecture(model.state_dict(), ckpt.state_dict, ckpt.path)
    model.load_state_dict(ckpt.state_dict, strict=True)
    model.card = dict(ckpt.card)
    model.eval()
    return model.to(resolve_device(device))


def _check_architecture(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], path: Path | None
) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(
        f"{k} {tuple(found[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(expected) & set(found)
        if tuple(found[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es), e.g. {mismatched[:3]}")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        where = path if path is not None else "<checkpoint>"
        raise CheckpointError(
            f"{where}: the weights are for another architecture than its config describes: "
            + "; ".join(parts)
        )


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike[str], expected: str) -> None:
    """Raise CheckpointError unless ``path`` hashes to ``expected`` (hex, case-insensitive)."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "file not found")
    actual = sha256_file(path)
    if actual != expected.strip().lower():
        raise _fail(
            path,
            f"sha256 mismatch: expected {expected}, got {actual}; the file is corrupt or not the "
            "one expected (download or copy it again)",
        )
