"""Interrupted work: a training process killed with SIGKILL, exports into a full disk or a bad
folder, and the GPU running out of memory.

Nothing may be lost: the last checkpoint of a killed run loads and resumes; a failed export
leaves neither a partial file nor a changed earlier file; running out of memory falls back to
smaller tiles or the CPU with a warning.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from reliability_kit import save_tiny_model
from toy_worms import toy_worms, write_folders_dataset

import napari_semiconv
from napari_semiconv.cli.main import main
from napari_semiconv.core import atomic
from napari_semiconv.core.checkpoint import load_checkpoint, save_checkpoint
from napari_semiconv.core.export import output_paths, write_run_outputs

TINY = [
    "--model-option", "fpn_channels=16", "--model-option", "box_head_width=32",
    "--model-option", "mask_head_width=16", "--model-option", "embed_hidden=16",
    "--model-option", "detections_per_img=8",
]  # fmt: skip
ITERATIONS = 3


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden temporary files included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------- SIGKILL during training


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_folders_dataset(tmp_path_factory.mktemp("data"), (80, 80), 3, 40, "w")


def _train_args(dataset: Path, out: Path) -> list[str]:
    return [
        "train", "--data", str(dataset), "--layout", "folders", "--input", "binary",
        "--iterations", str(ITERATIONS), "--batch-size", "1", "--crop", "64", "--warmup", "1",
        "--checkpoint-every", "1", "--device", "cpu", "--out", str(out), *TINY,
    ]  # fmt: skip


def test_sigkill_mid_training_keeps_a_loadable_resumable_checkpoint(dataset, tmp_path):
    out = tmp_path / "run" / "worms.pt"
    log = (tmp_path / "train.log").open("w")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_semiconv", *_train_args(dataset, out)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    killed_mid_write = False
    try:
        deadline = time.monotonic() + 120
        while not out.exists():  # the first checkpoint
            assert proc.poll() is None, (tmp_path / "train.log").read_text()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        # now kill it as the next checkpoint is being written, if we catch that moment
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if any(out.parent.glob(f".{out.name}.*.tmp")):
                killed_mid_write = True
                break
            time.sleep(0.0005)
        assert proc.poll() is None, "training ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()

    ckpt = load_checkpoint(out)  # the last complete checkpoint, never a torn one
    step = ckpt.train_state["step"]
    print(f"SIGKILL: last checkpoint at step {step}, killed during a write: {killed_mid_write}")
    assert 1 <= step < ITERATIONS
    leftovers = [p.name for p in out.parent.iterdir() if p != out]
    # SIGKILL cannot be cleaned up after: at most the hidden temporary file of the torn write
    assert all(name.startswith(f".{out.name}.") and name.endswith(".tmp") for name in leftovers)
    assert len(leftovers) <= 1 and (leftovers == [] or killed_mid_write)

    # resuming the killed run completes it
    assert main([*_train_args(dataset, out), "--resume"]) == 0
    final = load_checkpoint(out)
    assert final.train_state["step"] == ITERATIONS
    model = napari_semiconv.load_model(out, device="cpu")
    image, _ = toy_worms((64, 64), seed=9)
    inst = napari_semiconv.segment(model, image)
    assert inst.masks.shape[1:] == (64, 64)


# --------------------------------------------------------------------- failing exports


@pytest.fixture
def result():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 40, 50)) > 0.7
    return masks, np.array([0.9, 0.8, 0.7], np.float32)


def _fail_on_call(n_ok: int, name: str):
    """A stand-in for ``os.<name>`` that works ``n_ok`` times, then reports a full disk."""
    real = getattr(os, name)
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    return flaky


def test_export_into_a_file_instead_of_a_folder(tmp_path, result):
    target = tmp_path / "results"
    target.write_text("my notes")
    masks, scores = result
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        write_run_outputs(target, "plate", masks=masks, scores=scores)
    assert target.read_text() == "my notes"
    assert _files(tmp_path) == {"results": b"my notes"}


@pytest.mark.parametrize(
    ("call", "n_ok"),
    [("fsync", 0), ("fsync", 2), ("replace", 0), ("replace", 2), ("replace", 3)],
    ids=["fsync-first", "fsync-third", "replace-first", "replace-third", "replace-last"],
)
def test_export_on_a_full_disk_leaves_nothing_partial(tmp_path, result, monkeypatch, call, n_ok):
    masks, scores = result
    out = tmp_path / "out"
    out.mkdir()
    earlier = write_run_outputs(out, "earlier", masks=masks, scores=scores)  # a previous run
    before = _files(out)
    with monkeypatch.context() as patch:
        patch.setattr(os, call, _fail_on_call(n_ok, call))
        with pytest.raises(OSError) as info:
            write_run_outputs(out, "plate", masks=masks, scores=scores)
    assert info.value.errno == errno.ENOSPC
    assert "could not write" in str(info.value) and "plate_" in str(info.value)
    assert _files(out) == before  # no new file, no temporary file, earlier run untouched
    assert all(p.exists() for p in earlier.values())


def test_overwriting_export_that_fails_leaves_each_file_whole(tmp_path, result, monkeypatch):
    """With overwrite=True a failure midway may leave a mix of old and new files, but every file
    is complete: the old one or the new one, never a torn one."""
    masks, scores = result
    old = write_run_outputs(tmp_path, "plate", masks=masks, scores=scores)
    old_bytes = {k: p.read_bytes() for k, p in old.items()}
    new_masks = masks[:2]
    reference = write_run_outputs(tmp_path / "ref", "plate", masks=new_masks, scores=scores[:2])
    new_bytes = {k: p.read_bytes() for k, p in reference.items()}
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", _fail_on_call(2, "replace"))
        with pytest.raises(OSError):
            write_run_outputs(tmp_path, "plate", masks=new_masks, scores=scores[:2], overwrite=True)
    for key, path in old.items():
        assert path.read_bytes() in (old_bytes[key], new_bytes[key]), key
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_existing_export_is_never_overwritten(tmp_path, result):
    masks, scores = result
    paths = write_run_outputs(tmp_path, "plate", masks=masks, scores=scores)
    before = _files(tmp_path)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_run_outputs(tmp_path, "plate", masks=masks[:1], scores=scores[:1])
    assert _files(tmp_path) == before
    assert set(output_paths(tmp_path, "plate").values()) == set(paths.values())


def test_a_failed_checkpoint_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    good = save_tiny_model(tmp_path / "worms.pt")
    before = good.read_bytes()
    model = napari_semiconv.load_model(good, device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the "newer" weights that fail to be written
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", _fail_on_call(0, "fsync"))
        with pytest.raises(OSError, match="No space left") as info:
            save_checkpoint(good, model, {"name": "newer"})
    assert info.value.errno == errno.ENOSPC and "worms.pt" in str(info.value)
    assert good.read_bytes() == before
    assert _files(tmp_path) == {"worms.pt": before}
    assert load_checkpoint(good).card["name"] == "worms"


def test_atomic_writer_interrupted_by_an_exception_keeps_the_old_file(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_writer(target, "w", overwrite=True) as handle:
            handle.write("half of the new")
            raise KeyboardInterrupt  # Ctrl+C in the middle of writing
    assert target.read_text() == "old\n"
    assert _files(tmp_path) == {"table.csv": b"old\n"}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny.pt")


@pytest.fixture
def image_file(tmp_path):
    image, _ = toy_worms((48, 48), seed=7)
    path = tmp_path / "plate.tif"
    tifffile.imwrite(path, (image * 255).astype(np.uint8))
    return path


def test_predict_into_a_file_fails_cleanly(tmp_path, model_file, image_file, capsys):
    target = tmp_path / "out"
    target.write_text("keep me")
    code = main(["predict", str(image_file), "--model", str(model_file), "--out", str(target)])
    assert code == 2 and "is a file" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_predict_on_a_full_disk_fails_cleanly(
    tmp_path, model_file, image_file, monkeypatch, capsys
):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", _fail_on_call(0, "fsync"))
        code = main(["predict", str(image_file), "--model", str(model_file), "--out", str(out)])
    assert code == 2 and "No space left" in capsys.readouterr().err
    assert not out.exists() or _files(out) == {}


# --------------------------------------------------------------------- out of memory


@pytest.fixture(scope="module")
def model(model_file):
    return napari_semiconv.load_model(model_file, device="cpu")


def _flaky_forward(model, failures: int | None):
    """``model.forward`` raising torch.OutOfMemoryError on its first ``failures`` calls (all
    calls when None), as CUDA does when a tile does not fit."""
    real = model.forward
    calls = {"n": 0, "sizes": []}

    def forward(images, *args, **kwargs):
        calls["n"] += 1
        calls["sizes"].append(tuple(images[0].shape[-2:]))
        if failures is None or calls["n"] <= failures:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(images, *args, **kwargs)

    return forward, calls


def test_out_of_memory_falls_back_with_a_warning(model, monkeypatch):
    image = np.zeros((96, 96), np.uint8)
    image[20:26, 10:80] = 1
    image[50:90, 40:46] = 1
    expected = napari_semiconv.segment(model, image, score_threshold=0.0)
    forward, calls = _flaky_forward(model, failures=1)
    monkeypatch.setattr(model, "forward", forward)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inst = napari_semiconv.segment(model, image, score_threshold=0.0)
    assert any("memory" in str(w.message).lower() for w in caught)
    assert calls["n"] >= 2
    assert inst.masks.shape == (len(inst), 96, 96)
    # the retry runs smaller tiles (or the same tile on the CPU): a result either way
    assert len(calls["sizes"]) >= 2
    if calls["sizes"][1] == calls["sizes"][0]:
        np.testing.assert_array_equal(inst.masks, expected.masks)


def test_persistent_out_of_memory_says_what_to_do(model, monkeypatch):
    image = np.zeros((96, 96), np.uint8)
    image[20:26, 10:80] = 1
    forward, calls = _flaky_forward(model, failures=None)
    monkeypatch.setattr(model, "forward", forward)
    with pytest.raises((RuntimeError, ValueError), match="(?i)tile") as info:
        napari_semiconv.segment(model, image, score_threshold=0.0)
    assert calls["n"] >= 2 and "memory" in str(info.value).lower()
