"""Hostile and broken model files through every user-facing way of choosing a model.

``load_model`` (the library, by path and by user-model name), the bundled-model registry
(sha256 check), ``napari-semiconv predict --model`` and ``napari-semiconv models``. Each file is
refused with a message naming the file and the reason; no pickle payload ever runs (each would
create a file in the marker folder). The napari widget's Browse path is in
``test_reliability_gui.py``; ``load_checkpoint`` itself is in ``test_checkpoint.py``.
"""

from __future__ import annotations

import json
import re

import pytest
from reliability_kit import HOSTILE_NAMES, fake_bundled_dir, hostile_model_files, save_tiny_model

import napari_semiconv
from napari_semiconv.cli.main import main
from napari_semiconv.core import model_store
from napari_semiconv.core.checkpoint import CheckpointError, sha256_file
from napari_semiconv.core.training import TrainConfig, train

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    good = save_tiny_model(root / "good.pt")
    markers = root / "markers"
    files = hostile_model_files(root / "files", good, markers)
    image = root / "plate.tif"
    import numpy as np
    import tifffile

    tifffile.imwrite(image, np.zeros((32, 32), np.uint8))
    return {"good": good, "files": files, "markers": markers, "image": image, "root": root}


@pytest.fixture(autouse=True)
def _no_payload_ever_runs(kit):
    yield
    assert list(kit["markers"].iterdir()) == [], "a pickle payload ran while loading a model"


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    folder = tmp_path / "user-models"
    folder.mkdir()
    monkeypatch.setenv("SEMICONV_MODEL_DIR", str(folder))
    return folder


def _refusal_names_file_and_reason(message: str, hostile) -> None:
    assert str(hostile.path.name) in message, f"the message does not name the file: {message}"
    assert re.search(hostile.reason, message), f"the reason is missing: {message}"


def test_the_payloads_are_live(tmp_path):
    """Sanity check of the marker mechanism: an ordinary unpickler does create the file, so
    "no marker file" below really means "the payload never ran"."""
    import pickle

    from reliability_kit import _CreatesFile

    marker = tmp_path / "created"
    handle = pickle.loads(pickle.dumps(_CreatesFile(marker)))
    handle.close()
    assert marker.exists()


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_load_model_by_path_refuses(kit, name):
    hostile = kit["files"][name]
    with pytest.raises(CheckpointError) as info:
        napari_semiconv.load_model(hostile.path, device="cpu")
    _refusal_names_file_and_reason(str(info.value), hostile)
    # a CheckpointError is a ValueError: callers catching bad input catch it too
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_predict_model_flag_refuses_and_writes_nothing(kit, name, tmp_path, capsys):
    hostile = kit["files"][name]
    out = tmp_path / "out"
    code = main(["predict", str(kit["image"]), "--model", str(hostile.path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("napari-semiconv predict: error:") and "Traceback" not in err
    _refusal_names_file_and_reason(err, hostile)
    assert not out.exists() or list(out.iterdir()) == []


def test_user_models_folder_with_hostile_files(kit, user_dir, capsys):
    """Hostile files in the user's models folder: listed as unreadable, refused by name."""
    for name in HOSTILE_NAMES:
        (user_dir / name).write_bytes(kit["files"][name].path.read_bytes())
    (user_dir / "good.pt").write_bytes(kit["good"].read_bytes())
    rows = {row["name"]: row for row in model_store.list_models()}
    assert rows["good"].get("error") is None
    for name in HOSTILE_NAMES:
        stem = name[: -len(".pt")]
        hostile = kit["files"][name]
        if hostile.at_load:  # the listing reads each card: broken files say why
            assert re.search(hostile.reason, rows[stem]["error"]), rows[stem]
        with pytest.raises(CheckpointError) as info:
            napari_semiconv.load_model(stem, device="cpu")
        message = str(info.value)
        assert str(user_dir / name) in message and re.search(hostile.reason, message)
    # `napari-semiconv models` lists them all without a traceback
    assert main(["models"]) == 0
    printed = capsys.readouterr().out
    assert "good" in printed
    assert printed.count("(unreadable:") == sum(h.at_load for h in kit["files"].values())


def test_bundled_model_with_wrong_sha256_is_refused(kit, tmp_path, monkeypatch, user_dir, capsys):
    bundled = tmp_path / "bundled"
    copy = fake_bundled_dir(bundled, kit["good"], name="worms-test")  # registry: sha256 0000…
    monkeypatch.setattr(model_store, "BUNDLED_DIR", bundled)
    with pytest.raises(CheckpointError) as info:
        napari_semiconv.load_model("worms-test", device="cpu")
    message = str(info.value)
    assert str(copy) in message and "sha256 mismatch" in message and "again" in message

    out = tmp_path / "out"
    code = main(["predict", str(kit["image"]), "--model", "worms-test", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "sha256 mismatch" in err and copy.name in err
    assert not out.exists() or list(out.iterdir()) == []
    # training from it, or putting a foreground network in front of it, is refused the same way
    model_out = tmp_path / "ft.pt"
    for command in (
        ["train", "--synthetic", "1.0", "--base", "worms-test", "--iterations", "1"],
        ["train-foreground", "--data", str(tmp_path), "--detector", "worms-test"],
    ):
        code = main([*command, "--out", str(model_out), "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 2 and "sha256 mismatch" in err and copy.name in err, (command, err)
        assert not model_out.exists()
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        config = TrainConfig(base="worms-test", synthetic_fraction=1.0, iterations=1, crop=64)
        next(iter(train(config)))

    # the same file with its true sha256 in the registry loads: the refusal was the hash alone
    registry = {"worms-test": {"file": copy.name, "sha256": sha256_file(copy)}}
    (bundled / "registry.json").write_text(json.dumps(registry))
    model = napari_semiconv.load_model("worms-test", device="cpu")
    assert model.source["kind"] == "bundled"


def test_bundled_pickle_with_matching_sha256_is_still_refused(kit, tmp_path, monkeypatch):
    """A tampered package whose registry matches the hostile file: the hash passes, the
    weights-only loader still refuses to run the payload."""
    bundled = tmp_path / "bundled"
    hostile = kit["files"]["pickle-shell-proto2.pt"].path
    copy = fake_bundled_dir(bundled, hostile, name="evil", sha=sha256_file(hostile))
    monkeypatch.setattr(model_store, "BUNDLED_DIR", bundled)
    with pytest.raises(CheckpointError, match="refused") as info:
        napari_semiconv.load_model("evil", device="cpu")
    assert str(copy) in str(info.value)


def test_broken_bundled_registry_and_missing_files(kit, tmp_path, monkeypatch, user_dir):
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    monkeypatch.setattr(model_store, "BUNDLED_DIR", bundled)
    registry = bundled / "registry.json"
    registry.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON.*reinstall") as info:
        napari_semiconv.load_model("anything", device="cpu")
    assert str(registry) in str(info.value)
    registry.write_text(json.dumps(["a", "list"]))
    with pytest.raises(ValueError, match="reinstall"):
        model_store.list_models()
    registry.write_text(json.dumps({"gone": {"file": "gone.pt", "sha256": "0" * 64}}))
    with pytest.raises(FileNotFoundError, match="'gone' is not installed.*reinstall"):
        napari_semiconv.load_model("gone", device="cpu")


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda root: root / "no-such-model.pt", "no model"),
        (lambda root: root, "no model"),  # a folder, not a file
        (lambda root: root / "dangling.pt", "no model"),  # a symlink to nothing
    ],
    ids=["missing", "folder", "dangling-symlink"],
)
def test_missing_paths_are_named(tmp_path, user_dir, make, words):
    (tmp_path / "dangling.pt").symlink_to(tmp_path / "nowhere.pt")
    target = make(tmp_path)
    with pytest.raises(FileNotFoundError, match=words) as info:
        napari_semiconv.load_model(target, device="cpu")
    assert str(target) in str(info.value)
    assert "napari-semiconv models" in str(info.value)  # says where to look


def test_wrong_argument_types_are_type_errors():
    for bad in (None, 3, "", "   "):
        with pytest.raises(TypeError, match="non-empty string"):
            napari_semiconv.load_model(bad, device="cpu")


def test_a_user_model_whose_name_loads_another_is_listed_by_its_path(
    kit, user_dir, tmp_path, monkeypatch, capsys
):
    # named like a bundled model, or ending in .pt, or beside a file of its name in the working
    # folder: listed (and offered in the widget) by a name that loaded something else or nothing
    for name in ("worms-binary", "v1.pt", "clash"):
        save_tiny_model(user_dir / f"{name}.pt")
    save_tiny_model(user_dir / "plain.pt")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clash").write_text("notes")
    rows = {(r["name"], r["kind"]): r for r in model_store.list_models()}
    assert rows[("plain", "user")]["ref"] == "plain"
    assert rows[("worms-binary", "bundled")]["ref"] == "worms-binary"
    for name in ("worms-binary", "v1.pt", "clash"):
        ref = rows[(name, "user")]["ref"]
        assert ref == str(user_dir / f"{name}.pt")
        assert model_store.resolve_model_path(ref)[0] == user_dir / f"{name}.pt"
    assert main(["models"]) == 0
    printed = capsys.readouterr().out
    assert f"use --model {user_dir / 'v1.pt.pt'}" in printed
