"""The train / evaluate / predict / models commands on a tiny folders dataset of real TIFFs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
import torch
from toy_worms import write_folders_dataset

from napari_semiconv.cli.main import main

TINY = [
    "--model-option", "fpn_channels=32", "--model-option", "box_head_width=64",
    "--model-option", "mask_head_width=16", "--model-option", "embed_hidden=32",
    "--model-option", "detections_per_img=20",
]  # fmt: skip
SUMMARY_KEYS = {
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "avS", "S50", "S60", "S70", "S80", "S90", "n_images",
}  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_folders_dataset(tmp_path_factory.mktemp("data"), (112, 112), 3, 30, "img")


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A model trained by the CLI for two steps, and what the command printed."""
    out = tmp_path_factory.mktemp("run") / "tiny.pt"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(
            ["train", "--data", str(dataset), "--layout", "folders", "--input", "binary",
             "--iterations", "2", "--batch-size", "1", "--crop", "64", "--warmup", "1",
             "--checkpoint-every", "1", "--device", "cpu", "--out", str(out), *TINY]
        )  # fmt: skip
    assert code == 0
    return out, buffer.getvalue()


def test_train_prints_progress_and_writes_the_checkpoint(trained):
    out, printed = trained
    lines = printed.splitlines()
    assert any(line.startswith("[1/2] loss=") for line in lines)
    assert any(line.startswith("[2/2] loss=") and "img/s" in line for line in lines)
    assert f"[2/2] saved {out}" in lines
    assert out.is_file()


def test_train_refuses_bad_arguments(dataset, tmp_path, capsys):
    code = main(["train", "--data", str(dataset), "--layout", "folders", "--out",
                 str(tmp_path / "x.pt"), "--model-option", "nonsense"])  # fmt: skip
    assert code == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_evaluate_json_summary(trained, dataset, capsys):
    out, _ = trained
    code = main(["evaluate", "--model", str(out), "--data", str(dataset), "--layout", "folders",
                 "--device", "cpu", "--json"])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert SUMMARY_KEYS <= set(summary)
    assert summary["n_images"] == 3
    assert 0.0 <= summary["AP"] <= 1.0
    # the old post-processing of touching worms stays reachable for comparisons
    assert main(["evaluate", "--model", str(out), "--data", str(dataset), "--layout", "folders",
                 "--device", "cpu", "--json", "--no-divide"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_images"] == 3


def test_evaluate_rejects_a_mismatched_input_mode(trained, dataset, capsys):
    out, _ = trained
    code = main(["evaluate", "--model", str(out), "--data", str(dataset), "--layout", "folders",
                 "--input", "brightfield", "--device", "cpu"])  # fmt: skip
    assert code == 2
    assert "input mode" in capsys.readouterr().err


def test_predict_writes_four_files_and_replays_bit_exactly(trained, dataset, tmp_path, capsys):
    out, _ = trained
    images = [str(dataset / "images" / f"img{i}.tif") for i in (0, 1)]
    first = tmp_path / "first"
    code = main(["predict", *images, "--model", str(out), "--out", str(first), "--device", "cpu",
                 "--score-threshold", "0.0", "--mask-threshold", "0.1", "--tile-size", "64",
                 "--overlap", "16"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    for stem in ("img0", "img1"):
        for suffix in ("_labels.tif", "_instances.tif", "_measurements.csv", "_run.json"):
            assert (first / f"{stem}{suffix}").is_file()
    record = json.loads((first / "img0_run.json").read_text())
    assert record["settings"]["score_threshold"] == 0.0 and record["settings"]["tile_size"] == 64
    assert record["model"]["path"] == str(out.resolve())
    labels = tifffile.imread(first / "img0_labels.tif")
    assert labels.shape == (112, 112) and labels.max() > 0

    # the same run again, from its record only: bit-identical labels
    again = tmp_path / "again"
    code = main(["predict", images[0], "--from-run", str(first / "img0_run.json"),
                 "--out", str(again), "--device", "cpu"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    np.testing.assert_array_equal(tifffile.imread(again / "img0_labels.tif"), labels)
    np.testing.assert_array_equal(
        tifffile.imread(again / "img0_instances.tif"), tifffile.imread(first / "img0_instances.tif")
    )
    assert json.loads((again / "img0_run.json").read_text())["settings"] == record["settings"]

    # outputs are never overwritten
    code = main(["predict", images[0], "--model", str(out), "--out", str(first),
                 "--device", "cpu"])  # fmt: skip
    assert code == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_predict_from_run_refuses_a_changed_model(trained, dataset, tmp_path, capsys):
    out, _ = trained
    image = str(dataset / "images" / "img2.tif")
    assert main(["predict", image, "--model", str(out), "--out", str(tmp_path / "a"),
                 "--device", "cpu"]) == 0  # fmt: skip
    run = json.loads((tmp_path / "a" / "img2_run.json").read_text())
    run["model"]["sha256"] = "0" * 64
    (tmp_path / "edited.json").write_text(json.dumps(run))
    code = main(["predict", image, "--from-run", str(tmp_path / "edited.json"),
                 "--out", str(tmp_path / "b"), "--device", "cpu"])  # fmt: skip
    assert code == 2
    assert "not the one the run used" in capsys.readouterr().err


def test_a_replayed_bundled_model_run_names_the_model_as_the_run_did(
    dataset, tmp_path, monkeypatch, capsys
):
    # a replay loaded a bundled model by its file, so its record said kind "path" and an
    # absolute file name: that record could not be replayed on another install
    from reliability_kit import save_tiny_model

    from napari_semiconv.core import model_store
    from napari_semiconv.core.checkpoint import sha256_file

    bundled = tmp_path / "bundled"
    bundled.mkdir()
    sha = sha256_file(save_tiny_model(bundled / "tiny-worms.pt"))
    entry = {"file": "tiny-worms.pt", "sha256": sha}
    (bundled / "registry.json").write_text(json.dumps({"tiny-worms": entry}))
    monkeypatch.setattr(model_store, "BUNDLED_DIR", bundled)
    image = str(dataset / "images" / "img0.tif")

    def replay(record: dict, out: str) -> int:
        (tmp_path / f"{out}.json").write_text(json.dumps(record))
        return main(["predict", image, "--from-run", str(tmp_path / f"{out}.json"),
                     "--out", str(tmp_path / out), "--device", "cpu"])  # fmt: skip

    def named(out: str) -> dict:
        model = json.loads((tmp_path / out / "img0_run.json").read_text())["model"]
        return {key: model[key] for key in ("name", "kind", "sha256")}

    assert main(["predict", image, "--model", "tiny-worms", "--out", str(tmp_path / "first"),
                 "--device", "cpu"]) == 0  # fmt: skip
    original = json.loads((tmp_path / "first" / "img0_run.json").read_text())
    assert named("first") == {"name": "tiny-worms", "kind": "bundled", "sha256": sha}
    assert replay(original, "again") == 0, capsys.readouterr().err
    assert named("again") == named("first")
    # the replay's record replays on another install, where the bundled file lies elsewhere
    moved = json.loads((tmp_path / "again" / "img0_run.json").read_text())
    moved["model"]["path"] = str(tmp_path / "elsewhere" / "tiny-worms.pt")
    assert replay(moved, "moved") == 0, capsys.readouterr().err
    assert named("moved") == named("first")
    # a record an earlier replay wrote, naming the bundled file by its path, now gone: the
    # bundled model with its sha256 is that file
    legacy = json.loads(json.dumps(moved))
    legacy["model"].update(name=moved["model"]["path"], kind="path")
    assert replay(legacy, "legacy") == 0, capsys.readouterr().err
    assert named("legacy") == named("first")
    # a bundled model of that name with other weights is not the run's model: refused
    moved["model"]["sha256"] = "0" * 64
    capsys.readouterr()
    assert replay(moved, "other") == 2
    assert "not the one the run used" in capsys.readouterr().err


def test_predict_replays_an_older_record_as_it_was_made(trained, dataset, tmp_path, capsys):
    # a record written before mask-overlap suppression existed has no max_overlap: the replay
    # must not add the suppression nor the binary foreground clipping that run did not have
    out, _ = trained
    image = str(dataset / "images" / "img2.tif")
    assert main(["predict", image, "--model", str(out), "--out", str(tmp_path / "a"),
                 "--device", "cpu", "--max-overlap", "0.2", "--no-foreground"]) == 0  # fmt: skip
    run = json.loads((tmp_path / "a" / "img2_run.json").read_text())
    assert run["settings"]["max_overlap"] == 0.2 and run["settings"]["use_foreground"] is False
    assert run["settings"]["divide_touching"] is True
    del run["settings"]["max_overlap"], run["settings"]["use_foreground"]
    del run["settings"]["divide_touching"]  # nor the sharing out of touching worms
    (tmp_path / "old.json").write_text(json.dumps(run))
    assert main(["predict", image, "--from-run", str(tmp_path / "old.json"),
                 "--out", str(tmp_path / "b"), "--device", "cpu"]) == 0  # fmt: skip
    replayed = json.loads((tmp_path / "b" / "img2_run.json").read_text())["settings"]
    assert replayed["max_overlap"] == 1.0 and replayed["use_foreground"] is False
    assert replayed["divide_touching"] is False


def test_predict_with_views_records_and_replays_them(trained, dataset, tmp_path, capsys):
    out, _ = trained
    image = str(dataset / "images" / "img1.tif")
    common = ["--model", str(out), "--device", "cpu", "--score-threshold", "0.0",
              "--mask-threshold", "0.1"]  # fmt: skip
    assert main(["predict", image, *common, "--out", str(tmp_path / "one")]) == 0
    assert main(["predict", image, *common, "--out", str(tmp_path / "four"), "--views", "4"]) == 0
    record = json.loads((tmp_path / "four" / "img1_run.json").read_text())
    assert record["settings"]["views"] == 4
    assert json.loads((tmp_path / "one" / "img1_run.json").read_text())["settings"]["views"] == 1
    four = tifffile.imread(tmp_path / "four" / "img1_labels.tif")
    assert not np.array_equal(four, tifffile.imread(tmp_path / "one" / "img1_labels.tif"))
    assert main(["predict", image, "--from-run", str(tmp_path / "four" / "img1_run.json"),
                 "--out", str(tmp_path / "again"), "--device", "cpu"]) == 0  # fmt: skip
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "again" / "img1_labels.tif"), four)
    # a record from before test-time augmentation replays with one view
    del record["settings"]["views"]
    (tmp_path / "old.json").write_text(json.dumps(record))
    assert main(["predict", image, "--from-run", str(tmp_path / "old.json"),
                 "--out", str(tmp_path / "old"), "--device", "cpu"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "old" / "img1_run.json").read_text())["settings"]["views"] == 1
    with pytest.raises(SystemExit):
        main(["predict", image, *common, "--out", str(tmp_path / "x"), "--views", "3"])
    assert "invalid choice" in capsys.readouterr().err


def test_models_lists_user_models(trained, tmp_path, monkeypatch, capsys):
    out, _ = trained
    monkeypatch.setenv("SEMICONV_MODEL_DIR", str(tmp_path))
    shutil.copy(out, tmp_path / "my-worms.pt")
    assert main(["models"]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path) in printed
    assert "my-worms" in printed and "resnet18" in printed and "binary" in printed
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows if r["kind"] == "user"] == ["my-worms"]


def test_train_foreground_writes_a_cascade_that_segments(trained, dataset, tmp_path, capsys):
    detector, _ = trained
    out = tmp_path / "cascade.pt"
    code = main(["train-foreground", "--data", str(dataset), "--layout", "folders",
                 "--detector", str(detector), "--out", str(out), "--steps", "3", "--crop", "48",
                 "--batch-size", "2", "--width", "4", "--depth", "2",
                 "--device", "cpu"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "[1/3] loss=" in printed
    assert f"wrote {out}" in printed
    from napari_semiconv.core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out)
    assert ckpt.config.input_mode == "brightfield" and ckpt.config.foreground_width == 4
    assert ckpt.card["foreground_training"]["steps"] == 3
    command = ckpt.card["foreground_training"]["command"]
    assert command.startswith("napari-semiconv train-foreground --data")
    # it segments a bright-field image through the CLI's evaluate
    assert main(["evaluate", "--model", str(out), "--data", str(dataset), "--layout", "folders",
                 "--device", "cpu", "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary) == SUMMARY_KEYS
    # nothing is overwritten, and a bright-field detector is refused before any training
    before = out.read_bytes()
    assert main(["train-foreground", "--data", str(dataset), "--layout", "folders",
                 "--detector", str(detector), "--out", str(out), "--steps", "1"]) == 2  # fmt: skip
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    code = main(["train-foreground", "--data", str(dataset), "--layout", "folders",
                 "--detector", str(out), "--out", str(tmp_path / "again.pt"),
                 "--steps", "1"])  # fmt: skip
    assert code == 2 and "binary-input detector" in capsys.readouterr().err
    assert not (tmp_path / "again.pt").exists()


def test_train_foreground_continues_a_cascades_unet(trained, dataset, tmp_path, capsys):
    detector, _ = trained
    first = tmp_path / "first.pt"
    args = ["train-foreground", "--data", str(dataset), "--layout", "folders",
            "--detector", str(detector), "--crop", "48", "--batch-size", "2",
            "--device", "cpu"]  # fmt: skip
    assert main([*args, "--out", str(first), "--steps", "2", "--width", "4", "--depth", "2"]) == 0
    from napari_semiconv.core.checkpoint import load_checkpoint
    from napari_semiconv.core.foreground_training import foreground_of

    start = foreground_of(load_checkpoint(first))
    again = tmp_path / "again.pt"
    # the U-Net keeps the cascade's architecture (not the default --width 8) and its weights
    assert main([*args, "--out", str(again), "--steps", "1", "--lr", "0", "--jitter", "0.5",
                 "--foreground-from", str(first)]) == 0  # fmt: skip
    capsys.readouterr()
    ckpt = load_checkpoint(again)
    assert ckpt.config.foreground_width == 4 and ckpt.config.foreground_depth == 2
    assert ckpt.card["foreground_training"]["start"] == f"the U-Net of {first}"
    assert ckpt.config.foreground_threshold == 0.5  # the first cascade's cut, the default
    assert "intensity jitter 0.5" in ckpt.card["foreground_training"]["recipe"]
    continued = dict(foreground_of(ckpt).named_parameters())
    for name, value in start.named_parameters():  # lr 0: one step changes no weight
        assert torch.equal(continued[name], value), name
    # the cut is the source cascade's unless given; a bad one is refused before any training
    assert main([*args, "--out", str(tmp_path / "cut.pt"), "--steps", "1", "--foreground-from",
                 str(first), "--foreground-threshold", "0.6"]) == 0  # fmt: skip
    capsys.readouterr()
    cut = load_checkpoint(tmp_path / "cut.pt")
    assert cut.config.foreground_threshold == 0.6
    assert cut.card["foreground_training"]["threshold"] == 0.6
    assert main([*args, "--out", str(tmp_path / "cut2.pt"), "--steps", "1",
                 "--foreground-from", str(tmp_path / "cut.pt")]) == 0  # fmt: skip
    capsys.readouterr()
    assert load_checkpoint(tmp_path / "cut2.pt").config.foreground_threshold == 0.6
    code = main([*args, "--out", str(tmp_path / "bad.pt"), "--steps", "1",
                 "--foreground-threshold", "1"])  # fmt: skip
    assert code == 2 and "must be in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "bad.pt").exists()
    # a model without a U-Net cannot be continued: refused before any training
    code = main([*args, "--out", str(tmp_path / "no.pt"), "--steps", "1",
                 "--foreground-from", str(detector)])  # fmt: skip
    assert code == 2 and "no foreground U-Net" in capsys.readouterr().err
    assert not (tmp_path / "no.pt").exists()


def test_a_cascades_foreground_cut_is_a_setting_recorded_and_replayed(tmp_path, capsys):
    import tifffile

    from napari_semiconv.core.inference import load_model
    from napari_semiconv.core.synthetic.worms import synthetic_worms

    image, _ = synthetic_worms(seed=3, shape=(160, 200), render="brightfield")
    path = tmp_path / "well.tif"
    tifffile.imwrite(path, image)
    own = load_model("worms-brightfield", device="cpu").config.foreground_threshold
    common = ["predict", str(path), "--device", "cpu"]
    assert main([*common, "--model", "worms-brightfield", "--out", str(tmp_path / "own")]) == 0
    record = json.loads((tmp_path / "own" / "well_run.json").read_text())
    assert record["settings"]["foreground_threshold"] == own  # recorded as a number
    assert main([*common, "--model", "worms-brightfield", "--out", str(tmp_path / "cut"),
                 "--foreground-threshold", "0.85"]) == 0  # fmt: skip
    record = tmp_path / "cut" / "well_run.json"
    assert json.loads(record.read_text())["settings"]["foreground_threshold"] == 0.85
    fewer = tifffile.imread(tmp_path / "cut" / "well_labels.tif")
    assert np.count_nonzero(fewer) < np.count_nonzero(
        tifffile.imread(tmp_path / "own" / "well_labels.tif")
    )
    # the replay cuts where the run did
    assert main([*common, "--from-run", str(record), "--out", str(tmp_path / "again")]) == 0
    again = tifffile.imread(tmp_path / "again" / "well_labels.tif")
    np.testing.assert_array_equal(again, fewer)
    # ...and a cascade's record replayed with a binary-input model drops the cut it cannot use
    assert main([*common, "--from-run", str(record), "--model", "worms-binary",
                 "--out", str(tmp_path / "binary")]) == 0  # fmt: skip
    replayed = json.loads((tmp_path / "binary" / "well_run.json").read_text())
    assert replayed["settings"]["foreground_threshold"] is None
    capsys.readouterr()
    # a cut for a model without a foreground network, or outside (0, 1): refused, nothing written
    code = main([*common, "--model", "worms-binary", "--out", str(tmp_path / "no"),
                 "--foreground-threshold", "0.6"])  # fmt: skip
    assert code == 2 and "only a bright-field cascade" in capsys.readouterr().err
    code = main([*common, "--model", "worms-brightfield", "--out", str(tmp_path / "bad"),
                 "--foreground-threshold", "1.2"])  # fmt: skip
    assert code == 2 and "must be in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "no").exists() and not (tmp_path / "bad").exists()


def test_demo_segments_the_sample_with_worms_brightfield_and_replays(tmp_path, capsys):
    # the README's main job: the bundled sample through the bundled bright-field model
    import tifffile

    from napari_semiconv.core.inference import load_model

    assert main(["demo", "--out", str(tmp_path / "demo"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    (run,) = (tmp_path / "demo").iterdir()
    for suffix in ("_labels.tif", "_instances.tif", "_measurements.csv", "_run.json",
                   "_overlay.png"):  # fmt: skip
        assert (run / f"sample{suffix}").is_file(), suffix
    assert "replay: napari-semiconv predict" in printed
    labels = tifffile.imread(run / "sample_labels.tif")
    assert labels.max() >= 5  # the synthetic well holds worms, and the model finds them
    record = json.loads((run / "sample_run.json").read_text())
    assert record["model"]["name"] == "worms-brightfield"
    own = load_model("worms-brightfield", device="cpu").config.foreground_threshold
    assert record["settings"]["foreground_threshold"] == own
    # the printed replay gives the same worms
    assert main(["predict", str(run / "sample.tif"), "--from-run", str(run / "sample_run.json"),
                 "--out", str(tmp_path / "replay"), "--device", "cpu"]) == 0  # fmt: skip
    replayed = tifffile.imread(tmp_path / "replay" / "sample_labels.tif")
    np.testing.assert_array_equal(replayed, labels)
