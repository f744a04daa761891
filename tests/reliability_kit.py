"""Shared pieces of the reliability tests: a tiny real model, hostile model files, and a
connected-components stand-in for the network (for images too large to push through resnet18 on
two CPU cores).

Nothing here replaces project code under test: the hostile files are real files on disk, the tiny
model is a real checkpoint written by ``save_checkpoint``, and the stand-in network only replaces
the learned detector, so the real ``segment_steps`` tiling, merging and stitching run on its
output.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from toy_worms import tiny_model_config

from napari_semiconv.core.model.config import ModelConfig


def tiny_config(input_mode: str = "binary", **overrides) -> ModelConfig:
    """The smallest useful resnet18 model: narrower than toy_worms' and every box kept (score 0)."""
    options = dict(
        input_mode=input_mode,
        max_size=160,
        fpn_channels=16,
        box_head_width=32,
        embed_hidden=16,
        detections_per_img=4,
        box_score_thresh=0.0,
    )
    options.update(overrides)
    return tiny_model_config(**options)


def save_tiny_model(path: Path, input_mode: str = "binary", seed: int = 0, **overrides) -> Path:
    """A randomly initialised tiny model saved as a real checkpoint at ``path``."""
    from napari_semiconv.core.checkpoint import save_checkpoint
    from napari_semiconv.core.model.builder import build_model

    torch.manual_seed(seed)
    model = build_model(tiny_config(input_mode, **overrides)).eval()
    card = {"name": path.stem, "input_mode": input_mode, "data": "none (random weights)"}
    return save_checkpoint(path, model, card)


# ----------------------------------------------------------------------------- hostile files


class _CreatesFile:
    """Unpickling this calls ``open(marker, "w")``: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _RunsShell:
    """Unpickling this runs ``touch marker`` through ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass(frozen=True)
class Hostile:
    """A broken or hostile model file and the words its refusal must contain."""

    path: Path
    reason: str  # a regular expression the message must match (besides the file name)
    at_load: bool = True  # refused by load_checkpoint itself (False: only when the model is built)


def _torch_bytes(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def _modified(good: Path, change) -> bytes:
    payload = torch.load(good, map_location="cpu", weights_only=True)
    change(payload)
    return _torch_bytes(payload)


#: every file :func:`hostile_model_files` writes (tests parametrize over these names)
HOSTILE_NAMES = (
    "pickle-open.pt",
    "pickle-shell-proto2.pt",
    "torch-zip-payload.pt",
    "checkpoint-with-payload.pt",
    "legacy-torch-payload.pt",
    "truncated-half.pt",
    "truncated-100-bytes.pt",
    "bit-rot.pt",
    "empty.pt",
    "notes.pt",
    "config.pt",
    "random-bytes.pt",
    "other-zip.pt",
    "bare-state-dict.pt",
    "future-format.pt",
    "unknown-config-key.pt",
    "other-architecture.pt",
    "other-backbone.pt",
)


def hostile_model_files(folder: Path, good: Path, marker_dir: Path) -> dict[str, Hostile]:
    """Write every kind of broken or hostile model file into ``folder``.

    Each pickle payload would create a file in ``marker_dir`` if it were ever unpickled by a
    loader that runs code; the tests assert ``marker_dir`` stays empty.
    """
    folder.mkdir(parents=True, exist_ok=True)
    marker_dir.mkdir(parents=True, exist_ok=True)
    good_bytes = good.read_bytes()
    creates = _CreatesFile(marker_dir / "created-by-pickle")
    shell = _RunsShell(marker_dir / "created-by-shell")
    refused = r"refused: contains Python objects that could run code"
    corrupt = r"truncated or corrupt|corrupt file"

    flipped = bytearray(good_bytes)
    # bit rot inside the largest tensor record: the zip structure stays valid, the data do not
    with zipfile.ZipFile(good) as archive:
        largest = max(archive.infolist(), key=lambda i: i.file_size)
    local = good_bytes[largest.header_offset : largest.header_offset + 30]
    name_len, extra_len = (
        int.from_bytes(local[26:28], "little"),
        int.from_bytes(local[28:30], "little"),
    )
    start = largest.header_offset + 30 + name_len + extra_len  # first byte of the record's data
    flipped[start + 100 : start + 104] = bytes(b ^ 0x10 for b in flipped[start + 100 : start + 104])

    not_torch_zip = io.BytesIO()
    with zipfile.ZipFile(not_torch_zip, "w") as archive:
        archive.writestr("readme.txt", "a zip that is no checkpoint")

    def other_weights(payload):
        # the config says fpn_channels=16, the weights are those of a 32-channel FPN
        from napari_semiconv.core.model.builder import build_model

        torch.manual_seed(1)
        payload["state_dict"] = build_model(tiny_config(fpn_channels=32)).state_dict()

    contents: dict[str, tuple[bytes, str, bool]] = {
        "pickle-open.pt": (pickle.dumps(creates), refused, True),
        "pickle-shell-proto2.pt": (pickle.dumps(shell, protocol=2), refused, True),
        "torch-zip-payload.pt": (_torch_bytes({"state_dict": creates}), refused, True),
        "checkpoint-with-payload.pt": (
            _torch_bytes({"format": "napari-semiconv-checkpoint", "card": shell}),
            refused,
            True,
        ),
        "legacy-torch-payload.pt": (
            _torch_bytes({"x": creates}, _use_new_zipfile_serialization=False),
            refused,
            True,
        ),
        "truncated-half.pt": (good_bytes[: len(good_bytes) // 2], corrupt, True),
        "truncated-100-bytes.pt": (good_bytes[:100], corrupt, True),
        "bit-rot.pt": (bytes(flipped), r"corrupt file", True),
        "empty.pt": (b"", r"file is empty", True),
        "notes.pt": (b"these are my notes, not a model\n", r"text file", True),
        "config.pt": (json.dumps({"format": "napari-semiconv-checkpoint"}).encode(), "text", True),
        "random-bytes.pt": (
            np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
            r"not a PyTorch checkpoint",
            True,
        ),
        "other-zip.pt": (not_torch_zip.getvalue(), corrupt, True),
        "bare-state-dict.pt": (
            _torch_bytes({"conv.weight": torch.zeros(4, 1, 3, 3)}),
            r"not a napari-semiconv checkpoint",
            True,
        ),
        "future-format.pt": (
            _modified(good, lambda p: p.update(format_version=99)),
            r"newer than this napari-semiconv reads",
            True,
        ),
        "unknown-config-key.pt": (
            _modified(good, lambda p: p["config"].update(hyperdrive=True)),
            r"invalid model config",
            True,
        ),
        "other-architecture.pt": (
            _modified(good, other_weights),
            r"another architecture",
            False,
        ),
        "other-backbone.pt": (
            _modified(good, lambda p: p["config"].update(backbone="resnet50")),
            r"another architecture",
            False,
        ),
    }
    files = {}
    for name, (data, reason, at_load) in contents.items():
        path = folder / name
        path.write_bytes(data)
        files[name] = Hostile(path, reason, at_load)
    assert tuple(files) == HOSTILE_NAMES
    return files


def fake_bundled_dir(folder: Path, model: Path, name: str = "worms-test", sha: str | None = None):
    """A bundled-models folder holding a copy of ``model`` and a registry.json for it.

    ``sha`` is the sha256 the registry records (default: a wrong one, all zeros).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.pt").write_bytes(model.read_bytes())
    entry = {"file": f"{name}.pt", "sha256": sha or "0" * 64}
    (folder / "registry.json").write_text(json.dumps({name: entry}))
    return folder / f"{name}.pt"


# ----------------------------------------------------------------------------- stand-in network


class _Transform:
    """What ``inference.native_scale`` patches: an object with a settable ``resize``."""


class ComponentDetector(torch.nn.Module):
    """A perfect detector for separated blobs: each 8-connected foreground component of a tile
    is one worm (score 0.9 minus a rank-dependent step), Φ = 0.

    It stands in for the network where resnet18 would take minutes on two CPU cores (a
    3000 x 3000 image); the real ``segment_steps`` still tiles, collects, merges and stitches.
    """

    def __init__(self, input_mode: str = "binary") -> None:
        super().__init__()
        self.config = ModelConfig(input_mode=input_mode)
        self.transform = _Transform()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # so the device can be read
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        outputs = []
        for image in images:
            plane = image[0].numpy() > 0.5
            labels, n = ndimage.label(plane, structure=np.ones((3, 3)))
            boxes = ndimage.find_objects(labels)
            masks = np.zeros((n, 1, *plane.shape), dtype=np.float32)
            box_list = []
            for k, sl in enumerate(boxes):
                masks[k, 0][sl] = labels[sl] == k + 1
                box_list.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
            outputs.append(
                {
                    "boxes": torch.tensor(box_list, dtype=torch.float32).reshape(-1, 4),
                    "labels": torch.ones(n, dtype=torch.int64),
                    "scores": torch.linspace(0.9, 0.6, n) if n > 1 else torch.full((n,), 0.9),
                    "masks": torch.from_numpy(masks),
                    "displacement": torch.zeros((2, *plane.shape)),
                }
            )
        return outputs
