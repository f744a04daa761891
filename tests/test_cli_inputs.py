"""The CLI's handling of what users give it: resumed runs keep their recorded settings, outputs
are checked before any work, flags are named in their errors, and Ctrl-C ends in one line."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from reliability_kit import save_tiny_model
from toy_worms import (
    stop_after_first_checkpoint,
    toy_worms,
    write_bbbc010_like,
    write_folders_dataset,
)

from napari_semiconv.cli.main import main
from napari_semiconv.core.checkpoint import load_checkpoint
from napari_semiconv.core.export import output_paths

TINY = [
    "--model-option", "fpn_channels=16", "--model-option", "box_head_width=32",
    "--model-option", "mask_head_width=16", "--model-option", "embed_hidden=16",
    "--model-option", "detections_per_img=8",
]  # fmt: skip


def _quiet(argv: list[str]) -> int:
    """``main(argv)`` with its progress lines swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


# --------------------------------------------------------------------------- train --resume


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_folders_dataset(tmp_path_factory.mktemp("data"), (80, 80), 2, 50, "w")


@pytest.fixture(scope="module")
def stopped(dataset, tmp_path_factory):
    """A bright-field run with a non-default recipe, stopped (Ctrl-C) at step 1 of 3."""
    out = tmp_path_factory.mktemp("run") / "bf.pt"
    with stop_after_first_checkpoint():  # as by Ctrl-C
        code = _quiet(
            ["train", "--data", str(dataset), "--layout", "folders", "--input", "brightfield",
             "--iterations", "3", "--lr", "0.005", "--seed", "3", "--schedule", "cosine",
             "--batch-size", "1", "--crop", "64", "--warmup", "1", "--checkpoint-every", "1",
             "--device", "cpu", "--out", str(out), *TINY]
        )  # fmt: skip
    assert code == 130
    assert load_checkpoint(out).train_state["step"] == 1
    return out


@pytest.fixture
def halfway(stopped, tmp_path):
    """A copy of that stopped run's checkpoint, for this test to resume."""
    out = tmp_path / stopped.name
    shutil.copyfile(stopped, out)
    return out


def _resume_args(dataset: Path, out: Path) -> list[str]:
    return ["train", "--data", str(dataset), "--layout", "folders", "--out", str(out),
            "--resume", "--device", "cpu"]  # fmt: skip


def test_resume_takes_the_input_mode_and_recipe_from_the_checkpoint(
    halfway, dataset, monkeypatch, capsys
):
    from napari_semiconv.core import training_data

    modes = []
    real = training_data.read_samples

    def spy(root, layout, input_mode, wells=None):
        modes.append(input_mode)
        return real(root, layout, input_mode, wells)

    monkeypatch.setattr(training_data, "read_samples", spy)
    assert main(_resume_args(dataset, halfway)) == 0
    printed = capsys.readouterr().out
    assert modes == ["brightfield"]  # the data are loaded for the model being trained
    assert "[3/3] saved" in printed  # the recorded 3 iterations, not the default 1000
    ckpt = load_checkpoint(halfway)
    assert ckpt.config.input_mode == "brightfield" and ckpt.train_state["step"] == 3
    recipe = ckpt.card["recipe"]
    assert (recipe["lr"], recipe["seed"], recipe["schedule"]) == (0.005, 3, "cosine")


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--input", "binary"], ["--input binary", "'brightfield'"]),
        (["--iterations", "5"], ["--iterations 5", "iterations 3"]),
        (["--lr", "0.01"], ["--lr 0.01", "lr 0.005"]),
        (["--seed", "0"], ["--seed 0", "seed 3"]),
        (["--schedule", "step"], ["--schedule step", "schedule cosine"]),
        (["--base", "worms-binary"], ["--base worms-binary", "base none"]),
        (["--model-option", "fpn_channels=32"], ["fpn_channels=32", "fpn_channels 16"]),
    ],
)
def test_resume_refuses_a_flag_that_contradicts_the_checkpoint(
    halfway, dataset, flags, words, capsys
):
    before = halfway.read_bytes()
    assert main([*_resume_args(dataset, halfway), *flags]) == 2
    err = capsys.readouterr().err
    assert "contradicts" in err and all(w in err for w in words), err
    assert halfway.read_bytes() == before


def test_resume_accepts_flags_that_repeat_the_checkpoint(halfway, dataset):
    same = ["--input", "brightfield", "--iterations", "3", "--lr", "0.005", "--seed", "3",
            "--schedule", "cosine", "--batch-size", "1", "--crop", "64", *TINY]  # fmt: skip
    assert _quiet([*_resume_args(dataset, halfway), *same]) == 0
    assert load_checkpoint(halfway).train_state["step"] == 3


def test_resuming_a_finished_run_is_refused(halfway, dataset, capsys):
    assert _quiet(_resume_args(dataset, halfway)) == 0  # finishes it: step 3 of 3
    assert main([*_resume_args(dataset, halfway), "--iterations", "3"]) == 2
    assert "finished its 3 iterations" in capsys.readouterr().err


def test_a_new_run_over_an_existing_checkpoint_names_the_flag(halfway, dataset, capsys):
    args = ["train", "--data", str(dataset), "--layout", "folders", "--out", str(halfway)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "resume=True" not in err


# ------------------------------------------------- outputs checked before the work (items 2, 3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A randomly initialised tiny binary-input model: segments a small image in a blink."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def _images(folder: Path, *stems: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, stem in enumerate(stems):
        image, _ = toy_worms((64, 64), seed=i)
        tifffile.imwrite(folder / f"{stem}.tif", (image * 255).astype(np.uint8))
        paths.append(str(folder / f"{stem}.tif"))
    return paths


def _no_segmenting(monkeypatch) -> None:
    """Fail the test if any image is segmented."""
    from napari_semiconv.core import inference

    def refuse(*args, **kwargs):
        raise AssertionError("an image was segmented before the refusal")

    monkeypatch.setattr(inference, "segment", refuse)


def test_predict_refuses_a_batch_with_an_existing_output_before_any_work(
    tiny, tmp_path, monkeypatch, capsys
):
    images = _images(tmp_path / "in", "a", "b")
    out = tmp_path / "out"
    out.mkdir()
    taken = output_paths(out, "b")["measurements"]
    taken.write_text("an earlier result")
    _no_segmenting(monkeypatch)
    assert main(["predict", *images, "--model", str(tiny), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite" in err and str(taken) in err and "--out" in err
    assert sorted(p.name for p in out.iterdir()) == [taken.name]  # nothing of a.tif either


def test_predict_refuses_an_out_that_is_a_file_before_any_work(tiny, tmp_path, monkeypatch, capsys):
    images = _images(tmp_path / "in", "a")
    out = tmp_path / "out.txt"
    out.write_text("not a folder")
    _no_segmenting(monkeypatch)
    assert main(["predict", *images, "--model", str(tiny), "--out", str(out)]) == 2
    assert f"--out {out} is a file" in capsys.readouterr().err


def test_predict_says_a_folder_given_as_an_image_is_a_folder(tiny, tmp_path, capsys):
    folder = tmp_path / "in"
    _images(folder, "a")
    assert main(["predict", str(folder), "--model", str(tiny), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "does not exist" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--score-threshold", "2"], "--score-threshold must be in [0, 1], got 2.0"),
        (["--mask-threshold", "nan"], "--mask-threshold must be in [0, 1]"),
        (["--max-overlap", "-0.5"], "--max-overlap must be in [0, 1]"),
        (["--overlap", "-5"], "--overlap must be 0 or more pixels, got -5"),
        (["--tile-size", "8"], "--tile-size must be at least 32 pixels, got 8"),
        (["--rescale", "20"], "--rescale must be between 0.1 and 10"),
        (
            ["--tile-size", "64", "--overlap", "32"],
            "--overlap must be under half the tile size (--tile-size 64), got 32",
        ),
    ],
)
def test_predict_names_the_flag_of_a_bad_value_before_any_image(
    tiny, tmp_path, monkeypatch, flags, message, capsys
):
    images = _images(tmp_path / "in", "bf")
    _no_segmenting(monkeypatch)
    out = tmp_path / "out"
    assert main(["predict", *images, "--model", str(tiny), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "bf.tif" not in err, err
    assert not out.exists()


def test_a_small_tile_size_alone_takes_a_smaller_overlap_as_the_widget_does(tiny, tmp_path, capsys):
    # --tile-size 100 failed on the image with "overlap must be in [0, 50), got 64"
    image = np.zeros((160, 200), np.uint8)
    image[40:48, 20:180] = 255
    tifffile.imwrite(tmp_path / "wide.tif", image)
    argv = ["predict", str(tmp_path / "wide.tif"), "--model", str(tiny), "--tile-size", "100"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / "wide_run.json").read_text())
    assert record["settings"]["tile_size"] == 100 and record["settings"]["overlap"] == 49
    folder = tmp_path / "data"
    folder.mkdir()
    write_folders_dataset(folder, (160, 200), 1, 0, "w")
    evaluate = ["evaluate", "--model", str(tiny), "--data", str(folder), "--layout", "folders"]
    assert main([*evaluate, "--tile-size", "100"]) == 0
    assert main([*evaluate, "--tile-size", "100", "--overlap", "50"]) == 2
    # the same words as predict's (core.tiling.check_tiling)
    assert "--overlap must be under half the tile size (--tile-size 100), got 50" in (
        capsys.readouterr().err
    )
    assert main([*evaluate, "--overlap", "-1"]) == 2
    assert "--overlap must be 0 or more pixels, got -1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ('{"model": "worms-binary"}', "its 'model' is a JSON str, not an object"),
        ('{"model": {"name": "worms-binary"}, "settings": [1, 2]}', "its 'settings' is a JSON"),
    ],
)
def test_a_malformed_run_record_is_named_not_a_traceback(tmp_path, capsys, record, message):
    images = _images(tmp_path / "in", "a")
    (tmp_path / "r.json").write_text(record)
    argv = ["predict", *images, "--from-run", str(tmp_path / "r.json"), "--out", str(tmp_path)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    argv[3] = str(tmp_path / "missing.json")
    assert main(argv) == 2
    assert "missing.json: no such run record" in capsys.readouterr().err


def test_predict_names_a_bad_setting_of_a_run_record(tiny, tmp_path, capsys):
    images = _images(tmp_path / "in", "a")
    assert main(["predict", *images, "--model", str(tiny), "--out", str(tmp_path / "o1")]) == 0
    record = tmp_path / "o1" / "a_run.json"
    data = json.loads(record.read_text())
    data["settings"]["overlap"] = -3
    record.write_text(json.dumps(data))
    argv = ["predict", *images, "--from-run", str(record), "--out", str(tmp_path / "o2")]
    assert main(argv) == 2
    assert "the run record's overlap must be 0 or more" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["tune-thresholds", "--model", "worms-binary"],
        ["train-foreground", "--detector", "worms-binary"],
    ],
)
def test_a_checkpoint_out_in_a_missing_folder_is_refused_before_the_data(command, tmp_path, capsys):
    out = tmp_path / "missing" / "m.pt"
    argv = [*command, "--data", str(tmp_path / "no-data"), "--layout", "folders", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"the folder {out.parent} does not exist" in err and "no-data" not in err, err


# ------------------------------------------------------------------ wording of the core (item 4)


def test_core_messages_name_no_python_only_option(tmp_path):
    from reliability_kit import tiny_config

    from napari_semiconv.core.export import write_run_outputs
    from napari_semiconv.core.training import TrainConfig, train

    masks = np.zeros((1, 20, 20), bool)
    masks[0, 5:10, 5:10] = True
    write_run_outputs(tmp_path, "a", masks=masks, scores=None)
    with pytest.raises(FileExistsError) as exported:
        write_run_outputs(tmp_path, "a", masks=masks, scores=None)
    assert "overwrite=True" not in str(exported.value)
    assert "choose another output folder or name, or remove them" in str(exported.value)

    out = tmp_path / "run.pt"
    out.write_bytes(b"an earlier run")
    config = TrainConfig(model=tiny_config(), synthetic_fraction=1.0, out=str(out), device="cpu")
    with pytest.raises(FileExistsError) as trained:
        next(train(config))
    assert "resume=True" not in str(trained.value) and "choose another output name" in str(
        trained.value
    )


# ------------------------------------------------------------- a folder hides no model (item 5)


def test_a_folder_named_like_a_user_model_does_not_hide_it(tmp_path, monkeypatch):
    from napari_semiconv.core.model_store import resolve_model_path

    models = tmp_path / "models"
    models.mkdir()
    save_tiny_model(models / "mine.pt")
    monkeypatch.setenv("SEMICONV_MODEL_DIR", str(models))
    (tmp_path / "work" / "mine").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    path, _, kind = resolve_model_path("mine")
    assert (path, kind) == (models / "mine.pt", "user")


# ------------------------------------------------------------------------- help texts (item 6)


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_no_foreground_help_covers_cascades_too(command, capsys):
    text = _help(command, capsys)
    assert "binary-input models and bright-field cascades" in text


def test_demo_help_says_what_out_and_steps_do_without_dots(capsys):
    text = _help("demo", capsys)
    assert "new run-<time> folder" in text
    assert "with --dots: training steps per embedding (default 100); ignored otherwise" in text


# -------------------------------------------------------------------------- Ctrl-C (item 7)


def _main_catching_ctrl_c(argv: list[str]) -> int:
    """``main(argv)``; a KeyboardInterrupt escaping it fails the test, not the whole session."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main() as a traceback")


def test_ctrl_c_ends_in_one_line_saying_what_is_kept_and_the_batch_goes_on(
    tiny, tmp_path, monkeypatch, capsys
):
    from napari_semiconv.core import inference

    real, calls = inference.segment, []

    def interrupted_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "segment", interrupted_at_the_second)
    images = _images(tmp_path / "in", "a", "b")
    out = tmp_path / "out"
    argv = ["predict", *images, "--model", str(tiny), "--out", str(out)]
    assert _main_catching_ctrl_c(argv) == 130
    last = capsys.readouterr().err.splitlines()[-1]  # after the tiny model's warning lines
    # it said "no partial output was left" while a's four files stayed and blocked a re-run
    assert last.startswith("napari-semiconv predict: interrupted; the images done have their")
    assert "--skip-existing" in last
    assert sorted(p.name for p in out.iterdir()) == sorted(output_names("a"))
    monkeypatch.setattr(inference, "segment", real)
    assert main(argv) == 2 and "--skip-existing goes on" in capsys.readouterr().err
    assert main([*argv, "--skip-existing"]) == 0
    printed = capsys.readouterr().out
    assert "a.tif: outputs exist, skipped" in printed and "[2/2]" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(output_names("a") + output_names("b"))


def output_names(stem: str) -> list[str]:
    return [p.name for p in output_paths(Path("."), stem).values()]


@pytest.mark.parametrize(
    ("where", "error", "code"),
    [
        ("segment", KeyboardInterrupt, 130),
        ("write_run_outputs", KeyboardInterrupt, 130),
        ("write_run_outputs", OSError, 2),  # e.g. the disk filled up
    ],
)
def test_an_interrupted_or_failed_demo_leaves_no_run_folder(
    tiny, tmp_path, monkeypatch, where, error, code, capsys
):
    from napari_semiconv.core import export, inference

    def stopped(*args, **kwargs):
        raise error

    monkeypatch.setattr(inference if where == "segment" else export, where, stopped)
    out = tmp_path / "demo"
    argv = ["demo", "--model", str(tiny), "--device", "cpu", "--out", str(out)]
    assert _main_catching_ctrl_c(argv) == code
    assert not out.exists() or list(out.iterdir()) == []


def test_demo_refuses_an_out_that_is_a_file_before_the_work(tmp_path, monkeypatch, capsys):
    from napari_semiconv.core import inference

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(inference, "load_model", refuse)
    out = tmp_path / "out.txt"
    out.write_text("not a folder")
    assert main(["demo", "--out", str(out)]) == 2
    assert f"--out {out} is a file" in capsys.readouterr().err


def test_out_naming_a_folder_is_named_as_such_with_or_without_resume(tmp_path, capsys):
    # was: "exists; add --resume", then with --resume "cannot resume: ... does not exist"
    folder = tmp_path / "runs"
    folder.mkdir()
    for extra in ([], ["--resume"]):
        code = _quiet(["train", "--synthetic", "1.0", "--out", str(folder), *extra])
        err = capsys.readouterr().err
        assert code == 2 and "is a folder" in err and "worms.pt" in err, err
    assert list(folder.iterdir()) == []


def test_resume_takes_the_data_and_wells_from_the_checkpoint(tmp_path, capsys):
    # --resume used the command line's data: without --wells / --val-wells the held-out well
    # A03 went into training, and the card was rewritten to say so.
    data = write_bbbc010_like(tmp_path / "bbbc", ["A01", "A02", "A03"])
    out = tmp_path / "run.pt"
    with stop_after_first_checkpoint():  # as by Ctrl-C
        code = _quiet(
            ["train", "--data", str(data), "--wells", "A01,A02", "--val-wells", "A03",
             "--iterations", "3", "--batch-size", "1", "--crop", "64", "--checkpoint-every", "1",
             "--device", "cpu", "--out", str(out), *TINY]
        )  # fmt: skip
    assert code == 130 and load_checkpoint(out).train_state["step"] == 1
    resume = ["train", "--out", str(out), "--resume", "--device", "cpu"]
    other = write_bbbc010_like(tmp_path / "other", ["A01", "A02", "A03"])
    for flags, named in (
        (["--wells", "A01,A02,A03"], "--wells"),
        (["--val-wells", "A02"], "--val-wells"),
        (["--data", str(other)], "--data"),
    ):
        assert main([*resume, *flags]) == 2
        err = capsys.readouterr().err
        assert f"{named} " in err and "contradicts" in err, err
    assert load_checkpoint(out).train_state["step"] == 1  # refused before any step
    assert _quiet(resume) == 0
    data_record = load_checkpoint(out).card["data"]
    assert data_record["train_names"] == ["A01", "A02"] and data_record["val_names"] == ["A03"]


def test_predict_rescale_is_recorded_and_replayed(tiny, tmp_path):
    images = _images(tmp_path / "in", "big")
    out = tmp_path / "out"
    args = ["predict", *images, "--model", str(tiny), "--score-threshold", "0"]
    assert _quiet([*args, "--out", str(out), "--rescale", "0.5"]) == 0
    record = json.loads((out / "big_run.json").read_text())
    assert record["settings"]["rescale"] == 0.5
    labels = tifffile.imread(out / "big_labels.tif")
    assert labels.shape == (64, 64)  # the image's own size, not the resized one
    again = tmp_path / "again"
    replay = ["predict", *images, "--from-run", str(out / "big_run.json"), "--out", str(again)]
    assert _quiet(replay) == 0
    assert json.loads((again / "big_run.json").read_text())["settings"]["rescale"] == 0.5
    np.testing.assert_array_equal(tifffile.imread(again / "big_labels.tif"), labels)


def test_predict_names_an_image_whose_worms_are_far_from_the_models(bbbc010_root, tmp_path, capsys):
    # an inverted bright-field well: 42 confident small "worms", said on a line of its own
    image = tifffile.imread(next((bbbc010_root / "images").glob("*_A02_w2_*.tif")))
    tifffile.imwrite(tmp_path / "inverted.tif", image.max() - image)
    tifffile.imwrite(tmp_path / "plain.tif", image)
    args = ["predict", str(tmp_path / "plain.tif"), str(tmp_path / "inverted.tif")]
    assert main([*args, "--model", "worms-brightfield", "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "[2/2]" in captured.out and "inverted.tif" in captured.out
    lines = [line for line in captured.err.splitlines() if "this model learnt" in line]
    assert len(lines) == 1 and lines[0].startswith("  warning: the ")
    assert "may be inverted" in lines[0] and "RuntimeWarning" not in captured.err
