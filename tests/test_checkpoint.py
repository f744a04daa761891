"""Checkpoints: round trips, fp16 bundles, atomic writes, broken and hostile files refused."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import torch

from napari_semiconv.core.checkpoint import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    sha256_file,
    verify_sha256,
)
from napari_semiconv.core.model.builder import build_model
from napari_semiconv.core.model.config import ModelConfig

CARD = {
    "name": "tiny-test",
    "input_mode": "binary",
    "normalisation": "foreground > 0 -> 1",
    "training": {"data": "synthetic", "epochs": 1, "lr": 0.01},
    "metrics": {"AP": 0.1, "AP50": [0.2, 0.3]},
}


def tiny_config(**kw) -> ModelConfig:
    return ModelConfig(**{"min_size": 96, "max_size": 96, "detections_per_img": 5, **kw})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(tiny_config())
    # make BatchNorm statistics non-trivial so the round trip checks them too
    m.train()
    with torch.no_grad():
        m.backbone(torch.rand(2, 1, 64, 64))
    return m.eval()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model, CARD)
    return path


def _expect_refused(path: Path, *reason: str) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(load_checkpoint(path))
    message = str(info.value)
    assert str(path) in message
    assert any(r in message for r in reason), message
    assert isinstance(info.value, ValueError)
    return info.value


def test_round_trip_equal_state_dict_config_and_card(model, saved):
    ckpt = load_checkpoint(saved)
    assert ckpt.config == model.config
    assert ckpt.path == saved
    ours = model.state_dict()
    assert set(ckpt.state_dict) == set(ours)
    for key, value in ours.items():
        assert ckpt.state_dict[key].dtype == value.dtype, key
        assert torch.equal(ckpt.state_dict[key], value), key
    for key, value in CARD.items():
        assert ckpt.card[key] == value
    versions = ckpt.card["versions"]
    assert versions["torch"] == torch.__version__ and "napari_semiconv" in versions
    assert ckpt.train_state is None
    raw = torch.load(saved, weights_only=True, map_location="cpu")
    assert raw["format"] == FORMAT and raw["format_version"] == 1

    loaded = model_from_checkpoint(ckpt)
    assert not loaded.training
    assert loaded.config == model.config and loaded.card["name"] == "tiny-test"
    image = torch.zeros(1, 80, 96)
    image[0, 30:40, 10:90] = 1
    with torch.no_grad():
        a, b = model([image])[0], loaded([image])[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"])
    assert torch.equal(a["displacement"], b["displacement"])


def test_train_state_round_trip(model, tmp_path):
    params = [p for p in model.roi_heads.mask_predictor.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    state = {
        "optimizer": optimizer.state_dict(),
        "step": 7,
        "epoch": 1,
        "best_metric": 0.25,
        "rng": {"torch": torch.get_rng_state()},
    }
    path = save_checkpoint(tmp_path / "resume.pt", model, CARD, train_state=state)
    back = load_checkpoint(path).train_state
    assert back["step"] == 7 and back["best_metric"] == 0.25
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"])
    fresh = torch.optim.AdamW(params, lr=1e-3)
    fresh.load_state_dict(back["optimizer"])
    assert fresh.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]


def test_half_precision_round_trip(model, saved, tmp_path):
    path = save_checkpoint(tmp_path / "half.pt", model, CARD, half=True)
    assert path.stat().st_size < 0.6 * saved.stat().st_size
    raw = torch.load(path, weights_only=True, map_location="cpu")
    assert raw["half"] is True
    assert raw["state_dict"]["roi_heads.mask_head.0.0.weight"].dtype == torch.float16
    ckpt = load_checkpoint(path)
    for key, value in model.state_dict().items():
        back = ckpt.state_dict[key]
        if value.is_floating_point():
            assert back.dtype == torch.float32, key
            assert torch.allclose(back, value, rtol=1e-3, atol=1e-4), key
        else:
            assert torch.equal(back, value), key  # e.g. num_batches_tracked stays int64
    model_from_checkpoint(ckpt)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_hostile_pickles_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # would create the marker file if executed

    bare = tmp_path / "bare_pickle.pt"
    with open(bare, "wb") as fh:
        pickle.dump({"format": FORMAT, "state_dict": Payload()}, fh, protocol=2)
    zipped = tmp_path / "zipped.pt"
    torch.save({"format": FORMAT, "state_dict": {"w": Payload()}}, zipped)
    newer = tmp_path / "protocol5.pt"
    with open(newer, "wb") as fh:
        pickle.dump(Payload(), fh, protocol=5)
    for path in (bare, zipped, newer):
        _expect_refused(path, "refused: contains Python objects that could run code")
    assert not marker.exists()


def test_truncated_empty_text_random_and_missing_files(saved, tmp_path):
    data = saved.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    _expect_refused(truncated, "truncated or corrupt")

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _expect_refused(empty, "empty")

    text = tmp_path / "notes.pt"
    text.write_text("these are my model notes\nnot weights\n")
    _expect_refused(text, "text file")

    noise = tmp_path / "noise.pt"
    rng = random.Random(0)
    noise.write_bytes(b"\x13" + bytes(rng.randrange(256) for _ in range(4096)))
    _expect_refused(noise, "not a PyTorch checkpoint")

    _expect_refused(tmp_path / "missing.pt", "not found")
    _expect_refused(tmp_path, "folder")


def test_dicts_that_are_not_our_format(model, tmp_path):
    bare_state = tmp_path / "state_dict.pt"
    torch.save(model.state_dict(), bare_state)
    _expect_refused(bare_state, "not a napari-semiconv checkpoint")
    a_list = tmp_path / "list.pt"
    torch.save([torch.ones(2)], a_list)
    _expect_refused(a_list, "not a napari-semiconv checkpoint")

    future = tmp_path / "future.pt"
    raw = {"format": FORMAT, "format_version": 99, "config": {}, "state_dict": {}, "card": {}}
    torch.save(raw, future)
    _expect_refused(future, "newer")
    bad_config = tmp_path / "bad_config.pt"
    torch.save({**raw, "format_version": 1, "config": {"backbone": "vgg16"}}, bad_config)
    _expect_refused(bad_config, "invalid model config")


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.manual_seed(0)
    r34 = build_model(tiny_config(backbone="resnet34"))
    path = save_checkpoint(tmp_path / "r34.pt", r34, CARD, half=True)
    raw = torch.load(path, weights_only=True, map_location="cpu")
    raw["config"]["backbone"] = "resnet18"  # a resnet34 state dict under a resnet18 config
    lying = tmp_path / "r34_as_r18.pt"
    torch.save(raw, lying)
    error = _expect_refused(lying, "another architecture")
    assert "unexpected key" in str(error)  # resnet34 has more blocks per stage

    base = build_model(tiny_config(semiconv=False))
    path = save_checkpoint(tmp_path / "baseline.pt", base, CARD)
    raw = torch.load(path, weights_only=True, map_location="cpu")
    raw["config"]["semiconv"] = True
    torch.save(raw, tmp_path / "baseline_as_semiconv.pt")
    error = _expect_refused(tmp_path / "baseline_as_semiconv.pt", "another architecture")
    assert "missing key" in str(error)


def test_sha256(saved, tmp_path):
    digest = sha256_file(saved)
    assert len(digest) == 64
    verify_sha256(saved, digest.upper())
    with pytest.raises(CheckpointError, match="sha256 mismatch") as info:
        verify_sha256(saved, "0" * 64)
    assert str(saved) in str(info.value)


def test_atomic_write_leaves_no_temp_or_partial_file(model, saved, tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "a.pt", model, CARD)
    assert sorted(os.listdir(tmp_path)) == ["a.pt"]
    before = path.read_bytes()

    # a card that cannot be stored is refused before anything is written
    with pytest.raises(TypeError, match="card"):
        save_checkpoint(tmp_path / "b.pt", model, {"path": tmp_path})
    assert sorted(os.listdir(tmp_path)) == ["a.pt"]

    # a write that fails half-way (disk full) leaves neither a temp file nor a partial target,
    # and an existing checkpoint untouched
    def failing_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "c.pt", model, CARD)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, model, CARD)
    assert sorted(os.listdir(tmp_path)) == ["a.pt"]
    assert path.read_bytes() == before
    monkeypatch.undo()
    load_checkpoint(path)
