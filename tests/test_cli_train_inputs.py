"""`train` and `demo` refuse, before any work, what they would otherwise misread or ignore:
mistyped --model-option keys and values, --folds with --val-wells, a resumed run's recorded
--no-amp and data source, and --model / --device with `demo --dots`."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest
from toy_worms import stop_after_first_checkpoint, write_bbbc010_like

from napari_semiconv.cli.main import main
from napari_semiconv.core.checkpoint import load_checkpoint

TINY = [
    "--model-option", "fpn_channels=16", "--model-option", "box_head_width=32",
    "--model-option", "mask_head_width=16", "--model-option", "embed_hidden=16",
    "--model-option", "detections_per_img=8",
]  # fmt: skip
# a synthetic-only run of 3 steps that its time budget stops at step 1
SYNTHETIC = [
    "train", "--synthetic", "1.0", "--iterations", "3", "--batch-size", "1", "--crop", "64",
    "--checkpoint-every", "1", "--time-budget", "0.001", "--device", "cpu", *TINY,
]  # fmt: skip


def _quiet(argv: list[str]) -> int:
    """``main(argv)`` with its progress lines swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


def _no_data_read(monkeypatch) -> None:
    """Fail the test if any training data is read."""
    from napari_semiconv.core import training_data

    def refuse(*args, **kwargs):
        raise AssertionError("data were read before the refusal")

    monkeypatch.setattr(training_data, "read_samples", refuse)


# ------------------------------------------------------------------ --model-option (defect 1)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("fpn_chanels=128", "--model-option fpn_chanels: no such model setting; valid keys: "),
        ("fpn_channels=abc", "--model-option fpn_channels=abc: expected an integer"),
        ("semiconv=maybe", "--model-option semiconv=maybe: expected true or false"),
        ("anchor_sizes=8,x", "--model-option anchor_sizes=8,x: expected integers"),
        ("fpn_channels=0", "--model-option: fpn_channels must be a positive integer, got 0"),
    ],
)
def test_a_bad_model_option_names_the_flag(option, message, tmp_path, monkeypatch, capsys):
    _no_data_read(monkeypatch)
    out = tmp_path / "m.pt"
    argv = ["train", "--synthetic", "1.0", "--out", str(out), "--model-option", option]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "newer napari-semiconv" not in err and "int()" not in err, err
    assert not out.exists()


def test_the_valid_keys_named_include_the_one_meant(tmp_path, capsys):
    argv = ["train", "--synthetic", "1.0", "--out", str(tmp_path / "m.pt")]
    assert main([*argv, "--model-option", "fpn_chanels=128"]) == 2
    keys = capsys.readouterr().err.split("valid keys: ")[1].strip().split(", ")
    assert "fpn_channels" in keys and "box_head_width" in keys


def test_model_options_take_their_settings_types():
    from napari_semiconv.cli.train import _parse_options

    options = _parse_options(
        ["fpn_channels=64", "norm=group", "semiconv=false", "init_sigma=1", "anchor_sizes=8,16"]
    )
    assert options == {
        "fpn_channels": 64,
        "norm": "group",
        "semiconv": False,
        "init_sigma": 1.0,
        "anchor_sizes": (8, 16),
    }


def test_a_checkpoints_unknown_keys_still_say_upgrade():
    from napari_semiconv.core.model.config import ModelConfig

    with pytest.raises(ValueError, match="newer napari-semiconv; upgrade it"):
        ModelConfig.from_dict({"fpn_chanels": 128})


# --------------------------------------------------------------- --folds with --val-wells (2)


def test_folds_with_val_wells_is_refused_before_the_data(tmp_path, monkeypatch, capsys):
    _no_data_read(monkeypatch)
    data = write_bbbc010_like(tmp_path / "bbbc", ["A01", "A02", "A03"])
    out = tmp_path / "cv.pt"
    argv = ["train", "--data", str(data), "--folds", "2", "--fold", "0", "--val-wells", "A03",
            "--iterations", "3", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--folds makes its own validation wells" in err and "--val-wells" in err, err
    assert list(tmp_path.glob("cv*")) == []


def test_fold_config_refuses_val_wells(tmp_path):
    from napari_semiconv.core.training import TrainConfig, fold_config

    data = write_bbbc010_like(tmp_path / "bbbc", ["A01", "A02", "A03"])
    config = TrainConfig(data_root=str(data), val_wells=["A03"], out=str(tmp_path / "cv.pt"))
    with pytest.raises(ValueError, match="makes its own validation wells"):
        fold_config(config, 2, 0)
    # without val_wells every well is in one fold's training or validation
    fold = fold_config(TrainConfig(data_root=str(data)), 2, 0)
    names = {s.name[:3] for s in fold.samples + fold.val_samples}
    assert names == {"A01", "A02", "A03"}


# ------------------------------------------------------- --resume: amp and data source (3)


def _stopped(out: Path, *flags: str) -> Path:
    """A synthetic-only run stopped (Ctrl-C) at step 1 of 3, written to ``out``."""
    argv = [a for a in SYNTHETIC if a not in ("--time-budget", "0.001")]
    with stop_after_first_checkpoint():
        assert _quiet([*argv, "--out", str(out), *flags]) == 130
    assert load_checkpoint(out).train_state["step"] == 1
    return out


@pytest.fixture(scope="module")
def stopped_no_amp(tmp_path_factory) -> Path:
    return _stopped(tmp_path_factory.mktemp("no-amp") / "run.pt", "--no-amp")


@pytest.fixture(scope="module")
def stopped_amp(tmp_path_factory) -> Path:
    return _stopped(tmp_path_factory.mktemp("amp") / "run.pt")


@pytest.fixture
def copy_of(tmp_path):
    """A copy of a stopped run's checkpoint, for this test to resume."""

    def copy(path: Path) -> Path:
        shutil.copyfile(path, tmp_path / path.name)
        return tmp_path / path.name

    return copy


def _resume(out: Path) -> list[str]:
    return ["train", "--out", str(out), "--resume", "--device", "cpu"]


def test_resume_keeps_a_recorded_no_amp(stopped_no_amp, copy_of):
    out = copy_of(stopped_no_amp)
    assert load_checkpoint(out).card["recipe"]["amp"] is False
    assert _quiet(_resume(out)) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.train_state["step"] == 3 and ckpt.card["recipe"]["amp"] is False


def test_resume_refuses_no_amp_against_a_run_with_amp(stopped_amp, copy_of, capsys):
    out = copy_of(stopped_amp)
    before = out.read_bytes()
    assert main([*_resume(out), "--no-amp"]) == 2
    err = capsys.readouterr().err
    assert "--no-amp contradicts" in err and "amp True" in err and "drop --no-amp" in err, err
    assert out.read_bytes() == before


@pytest.mark.parametrize(
    "flags",
    [["--data", "{data}"], ["--data", "{data}", "--wells", "A01"], ["--layout", "folders"],
     ["--val-wells", "A02"]],
)  # fmt: skip
def test_resume_refuses_data_for_a_synthetic_only_run(
    stopped_amp, copy_of, tmp_path, flags, monkeypatch, capsys
):
    _no_data_read(monkeypatch)
    data = write_bbbc010_like(tmp_path / "bbbc", ["A01", "A02"])
    out = copy_of(stopped_amp)
    before = out.read_bytes()
    assert main([*_resume(out), *(f.format(data=data) for f in flags)]) == 2
    err = capsys.readouterr().err
    assert "contradicts" in err and "synthetic worms only" in err, err
    assert all(f"{flag} " in err for flag in flags if flag.startswith("--")), err
    assert out.read_bytes() == before


# ----------------------------------------------------------- demo --dots --model/--device (4)


def _dots_stub(monkeypatch) -> list:
    """Replace the dot-grid experiment by a stub that records its calls."""
    from napari_semiconv.cli import demo

    calls = []

    def stub(out, seed, steps):
        calls.append((out, seed, steps))
        return {"n_dots": 25, "conv_ari": 0.0, "semiconv_ari": 1.0, "seconds": 0.0,
                "figure": str(out / "f.png"), "json": str(out / "s.json")}  # fmt: skip

    monkeypatch.setattr(demo, "run_dots", stub)
    return calls


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--model", "worms-binary"], ["--dots trains its own two small networks", "--model"]),
        (["--model", "no-such-model"], ["--model no-such-model is not used"]),
        (["--device", "cuda:7"], ["on the CPU", "--device cuda:7 is not used"]),
        (["--device", "nonsense"], ["--device nonsense is not used"]),
    ],
)
def test_demo_dots_refuses_model_and_device_it_would_ignore(
    flags, words, tmp_path, monkeypatch, capsys
):
    calls = _dots_stub(monkeypatch)
    assert main(["demo", "--dots", "--out", str(tmp_path / "d"), *flags]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert calls == []


@pytest.mark.parametrize("flags", [[], ["--device", "cpu"], ["--device", "auto"]])
def test_demo_dots_runs_with_a_cpu_device(flags, tmp_path, monkeypatch):
    calls = _dots_stub(monkeypatch)
    assert _quiet(["demo", "--dots", "--out", str(tmp_path / "d"), *flags]) == 0
    assert calls == [(tmp_path / "d", 0, 100)]


def test_demo_without_dots_still_defaults_to_the_bundled_model(tmp_path, monkeypatch, capsys):
    from napari_semiconv.core import inference

    loaded = []

    def load(name, device):
        loaded.append((name, device))
        raise ValueError("stopped after loading")

    monkeypatch.setattr(inference, "load_model", load)
    assert main(["demo", "--out", str(tmp_path / "d")]) == 2
    assert loaded == [("worms-brightfield", "auto")]


def test_a_run_whose_time_budget_ended_it_is_not_resumed(tmp_path, monkeypatch, capsys):
    # its schedule was spent, so a resume trained at its final rate (1e-6 for 10 s) and
    # reported "done"
    out = tmp_path / "run.pt"
    assert _quiet([*SYNTHETIC, "--out", str(out)]) == 0  # the budget ends it at step 1 of 3
    before = out.read_bytes()
    _no_data_read(monkeypatch)
    assert main([*_resume(out), "--time-budget", "10"]) == 2
    err = capsys.readouterr().err
    assert "finished its learning-rate schedule" in err and "--base" in err
    assert out.read_bytes() == before


def test_a_label_file_of_another_name_is_reported_as_one_plain_line(tmp_path, capsys):
    # "A02 .tif" beside "A02.tif": the pair was dropped with Python's warning naming
    # core/training_data.py:56 and its source line
    from toy_worms import write_folders_dataset

    (tmp_path / "data").mkdir()
    data = write_folders_dataset(tmp_path / "data", (96, 96), 2, 0, "w")
    (data / "labels" / "w1.tif").rename(data / "labels" / "w1 .tif")
    argv = ["train", "--data", str(data), "--layout", "folders", "--iterations", "1",
            "--batch-size", "1", "--crop", "64", "--device", "cpu", "--no-amp",
            "--out", str(tmp_path / "m.pt"), *TINY]  # fmt: skip
    assert _quiet(argv) == 0
    err = capsys.readouterr().err
    assert "napari-semiconv train: warning: " in err and ".py:" not in err
    assert "no label file of the same name in labels/: w1.tif" in err
    assert "no image of the same name in images/: w1 .tif" in err
