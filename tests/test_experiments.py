"""The paper's demonstrations: coloring dilemma (sec. 3.6), dot grid (sec. 4.1), their CLI."""

import json

import numpy as np
import pytest

from napari_semiconv.cli.main import main
from napari_semiconv.core.experiments import (
    adjusted_rand_index,
    coloring_dilemma,
    dots_experiment,
)
from napari_semiconv.core.synthetic.dots import dot_grid

# --------------------------------------------------------------------------- ARI


def test_ari_hand_computed():
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 9, 9]) == 1.0  # same partition, renamed
    # contingency [[2,0,0],[0,1,1]]: index 1, Σa 2, Σb 1, E = 1/3, max 3/2 -> 4/7
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(4 / 7)
    # crossing partitions: index 0, E = 2/3, max 2 -> -1/2
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="size"):
        adjusted_rand_index([0, 1], [0, 1, 2])


# --------------------------------------------------------------------------- dot grid (Fig. 3a)


def test_dot_grid_identical_dots_on_a_regular_grid():
    image, masks = dot_grid(rows=3, cols=4, spacing=10, radius=3.0)
    assert image.dtype == np.float32 and masks.dtype == bool
    assert image.shape == (30, 40) and masks.shape == (12, 30, 40)
    assert not (masks.sum(0) > 1).any()  # no overlaps
    assert np.array_equal(image > 0, masks.any(0))
    first = masks[0]
    for n, m in enumerate(masks):  # each dot is the first one translated by the grid step
        i, j = divmod(n, 4)
        assert np.array_equal(np.roll(first, (10 * i, 10 * j), axis=(0, 1)), m)
    again = dot_grid(rows=3, cols=4, spacing=10, radius=3.0)
    assert np.array_equal(again[0], image) and np.array_equal(again[1], masks)


def test_dot_grid_noise_is_seeded_and_bad_args_rejected():
    a, _ = dot_grid(2, 2, 10, 2.0, seed=1, noise=0.1)
    b, _ = dot_grid(2, 2, 10, 2.0, seed=1, noise=0.1)
    c, _ = dot_grid(2, 2, 10, 2.0, seed=2, noise=0.1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(ValueError, match="radius"):
        dot_grid(2, 2, 6, 3.0)
    with pytest.raises(ValueError, match="rows"):
        dot_grid(0, 2)


# --------------------------------------------------------------------------- sec. 3.6


def test_dilemma_invariant_operators_color_all_centres_alike_semiconv_gives_2k():
    r = coloring_dilemma(periods=3)
    centres = np.array(r["centres"])
    assert centres.tolist() == [-6, -4, -2, 0, 2, 4, 6]
    # translation invariant: the same color at every 2k, for both operators
    local = np.array(r["local_at_centres"])
    cnn = np.array(r["cnn_at_centres"])
    assert np.allclose(local, local[0], atol=1e-12)
    assert np.allclose(cnn, cnn[0], atol=1e-9)
    assert np.abs(cnn[0]).max() > 0.1  # a non-trivial color, yet identical everywhere
    assert r["invariant_max_spread_at_centres"] < 1e-9
    # semi-convolutional: the centres get 2k, and every point of region k gets 2k
    assert np.allclose(r["semiconv_at_centres"], centres, atol=1e-12)
    assert np.allclose(r["semiconv"], 2 * r["region"], atol=1e-12)
    assert r["semiconv_max_error"] < 1e-12
    assert r["semiconv_distinct_colors"] == len(centres)
    # points off the centres are moved too: u = 2k + 0.5 -> 2k
    u = r["u"]
    idx = np.flatnonzero(np.isclose(u, 2.5))[0]
    assert r["semiconv"][idx] == pytest.approx(2.0)
    assert r["pv_detects_centres"]


def test_dilemma_cli_json(capsys):
    assert main(["experiment", "dilemma", "--json"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    data = json.loads(last)
    assert data["semiconv_at_centres"] == [float(c) for c in data["centres"]]
    assert data["invariant_max_spread_at_centres"] < 1e-9


# --------------------------------------------------------------------------- sec. 4.1


def test_a_negative_seed_is_refused_before_any_training(capsys):
    # it was refused by numpy's k-means, after the first network had trained, naming no flag
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        dots_experiment(seed=-1, steps=5)
    assert main(["experiment", "dots", "--seed", "-1"]) == 2
    assert "seed must be" in capsys.readouterr().err


def test_dots_experiment_deterministic_by_seed():
    kw = dict(rows=3, cols=3, spacing=10, steps=15, n_init=3)
    a = dots_experiment(seed=1, **kw)
    b = dots_experiment(seed=1, **kw)
    assert a["conv_loss"] == b["conv_loss"] and a["semiconv_loss"] == b["semiconv_loss"]
    assert np.array_equal(a["semiconv_labels"], b["semiconv_labels"])
    assert np.array_equal(a["conv_labels"], b["conv_labels"])


def test_dots_cli_semiconv_separates_identical_dots_conv_does_not(tmp_path, capsys):
    out = tmp_path / "dots"
    assert main(["experiment", "dots", "--json", "--out", str(out), "--seed", "0"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    data = json.loads(last)
    assert data["semiconv_ari"] >= 0.9
    assert data["conv_ari"] <= 0.5
    assert data["n_dots"] == 25
    assert (out / "dots_experiment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "dots_experiment.json").read_text())["semiconv_ari"] == pytest.approx(
        data["semiconv_ari"]
    )
    assert data["figure"] == str(out / "dots_experiment.png")


def test_demo_writes_figure_and_json(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--dots", "--out", str(out), "--steps", "20"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "dots_experiment.png") in printed
    summary = json.loads((out / "dots_experiment.json").read_text())
    assert summary["steps"] == 20 and summary["semiconv_ari"] >= 0.9


def test_cli_bad_steps_is_a_clean_error(capsys):
    assert main(["experiment", "dots", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
